// Package client makes every Kafka client of the daemon and its commands
// from one set of settings: TLS, SASL (SCRAM, PLAIN) and the consumer and
// producer settings, and tells a broker's refusal of them apart from an
// outage.
package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/xdg-go/scram"
	"github.com/xdg-go/stringprep"

	"github.com/eventrouter/eventrouter/config"
)

// Settings is what every Kafka client of the daemon and its commands is
// made from: the settings, the brokers, and the TLS and SASL credentials,
// read once so that each client proves the same identity.
type Settings struct {
	cfg     config.Kafka
	brokers []string
	// tls is nil for plaintext connections.
	tls *tls.Config
	// password is behind a pointer so that printing a struct that holds
	// the access shows an address, not the password: fmt prints nested
	// fields without their String methods.
	password *secret
}

// secret is a password that formats as a placeholder wherever it is
// printed by itself.
type secret string

func (secret) String() string   { return "[redacted]" }
func (secret) GoString() string { return "[redacted]" }

// Format prints the brokers and the protocol only: fmt prints a struct's
// unexported fields without their methods, so the password would show.
func (a Settings) Format(f fmt.State, _ rune) {
	fmt.Fprintf(f, "kafka %s (%s)", strings.Join(a.brokers, ","), a.Protocol())
}

// New reads the CA, the client certificate and the SASL
// password that cfg names. Its errors name the key and never hold a
// secret.
func New(cfg config.Kafka, brokers []string, getenv func(string) string) (Settings, error) {
	a := Settings{cfg: cfg, brokers: brokers}
	var errs []error
	if cfg.TLS.Enabled {
		t, err := clientTLS(cfg.TLS)
		if err != nil {
			errs = append(errs, err)
		}
		a.tls = t
	}
	if cfg.SASL.Mechanism != "" {
		p, err := config.ReadSecret("kafka.sasl.password", cfg.SASL.PasswordEnv, cfg.SASL.PasswordFile, getenv)
		if err == nil {
			err = saslprep(cfg.SASL, p)
		}
		if err != nil {
			errs = append(errs, err)
		}
		pw := secret(p)
		a.password = &pw
	}
	return a, errors.Join(errs...)
}

// saslprep refuses a SCRAM username or password that SASLprep (RFC 4013)
// rejects, such as one with a control character, at start: the SCRAM
// client would fail at every connection, with the password in its error.
func saslprep(s config.SASL, password string) error {
	if s.Mechanism != config.SASLSCRAMSHA256 && s.Mechanism != config.SASLSCRAMSHA512 {
		return nil
	}
	if _, err := stringprep.SASLprep.Prepare(s.Username); err != nil {
		return &config.KeyError{Key: "kafka.sasl.username", Msg: "holds a character SCRAM does not allow (RFC 4013), such as a control character"}
	}
	key := "kafka.sasl.password_env"
	if s.PasswordFile != "" {
		key = "kafka.sasl.password_file"
	}
	if _, err := stringprep.SASLprep.Prepare(password); err != nil {
		return &config.KeyError{Key: key, Msg: "the password holds a character SCRAM does not allow (RFC 4013), such as a control character"}
	}
	return nil
}

// clientTLS builds the TLS settings of kafka.tls.
func clientTLS(c config.KafkaTLS) (*tls.Config, error) {
	t := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: c.ServerName,
		// Refused by validation unless EVENTROUTER_ALLOW_INSECURE=1.
		InsecureSkipVerify: c.InsecureSkipVerify, //nolint:gosec
	}
	var errs []error
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		pool := x509.NewCertPool()
		switch {
		case err != nil:
			errs = append(errs, &config.KeyError{Key: "kafka.tls.ca_file", Msg: err.Error()})
		case !pool.AppendCertsFromPEM(pem):
			errs = append(errs, &config.KeyError{Key: "kafka.tls.ca_file", Msg: fmt.Sprintf("%s holds no PEM certificate", c.CAFile)})
		}
		t.RootCAs = pool
	}
	if c.CertFile != "" && c.KeyFile != "" {
		// The error names the files and what is wrong, never the key.
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			errs = append(errs, &config.KeyError{Key: "kafka.tls.cert_file", Msg: err.Error()})
		}
		t.Certificates = []tls.Certificate{cert}
	}
	return t, errors.Join(errs...)
}

// Config returns the client settings shared by every Kafka client the
// daemon makes. cfg was validated, so its version parses.
func (a Settings) Config() *sarama.Config {
	cfg := a.cfg
	c := sarama.NewConfig()
	c.Version, _ = sarama.ParseKafkaVersion(cfg.Version)
	c.ClientID = cfg.ClientID
	c.Net.DialTimeout = cfg.DialTimeout
	c.Net.ReadTimeout = cfg.RequestTimeout
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	if a.tls != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = a.tls.Clone()
	}
	if m := cfg.SASL.Mechanism; m != "" {
		c.Net.SASL.Enable = true
		c.Net.SASL.Handshake = true
		c.Net.SASL.Mechanism = sarama.SASLMechanism(m)
		c.Net.SASL.User = cfg.SASL.Username
		if a.password != nil {
			c.Net.SASL.Password = string(*a.password)
		}
		switch m {
		case config.SASLSCRAMSHA256:
			c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA256} }
		case config.SASLSCRAMSHA512:
			c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return &scramClient{hash: scram.SHA512} }
		}
	}
	return c
}

// scramClient is sarama's SCRAM conversation, which sarama leaves to the
// application, on xdg-go/scram (what sarama's own examples use).
type scramClient struct {
	hash scram.HashGeneratorFcn
	conv *scram.ClientConversation
}

func (s *scramClient) Begin(user, password, authzID string) error {
	c, err := s.hash.NewClient(user, password, authzID)
	if err != nil {
		// xdg-go/scram's error holds the password; saslprep refused
		// such passwords at start, so this is a fallback.
		return errors.New("scram: the username or password is not valid SASLprep text")
	}
	s.conv = c.NewConversation()
	return nil
}

func (s *scramClient) Step(challenge string) (string, error) { return s.conv.Step(challenge) }

func (s *scramClient) Done() bool { return s.conv.Done() }

// Protocol names the connections as Kafka's security.protocol does, with
// the SASL mechanism: "SASL_SSL/SCRAM-SHA-512", "SSL", "PLAINTEXT".
func (a Settings) Protocol() string {
	p := "PLAINTEXT"
	if a.tls != nil {
		p = "SSL"
	}
	if m := a.cfg.SASL.Mechanism; m != "" {
		p = "SASL_" + p + "/" + m
	}
	return p
}

// Subscriber is Config for a route's consumer group.
func (a Settings) Subscriber() *sarama.Config {
	cfg := a.cfg
	c := a.Config()
	c.Consumer.Return.Errors = true
	// As the seed's consumer does: a new group starts at the oldest record,
	// so events published before the router first started are not lost.
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sticky{}}
	c.Consumer.Group.Session.Timeout = cfg.SessionTimeout
	c.Consumer.Group.Heartbeat.Interval = cfg.HeartbeatInterval
	c.Consumer.Group.Rebalance.Timeout = cfg.RebalanceTimeout
	// The coordinator holds a JoinGroup until every member has rejoined,
	// and a SyncGroup until the leader has sent the assignment, each up to
	// the rebalance timeout. sarama has one read timeout for all requests;
	// were it shorter, members would time out of a slow rebalance, rejoin
	// and restart it, again and again (IBM/sarama#2820). Kafka's Java
	// client likewise waits the rebalance timeout plus 5s for a join.
	c.Net.ReadTimeout = max(cfg.RequestTimeout, cfg.RebalanceTimeout+5*time.Second)
	return c
}

// Publisher is Config for the publisher of produced events and
// poisoned records.
func (a Settings) Publisher() *sarama.Config {
	c := a.Config()
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	// Idempotence keeps a producer retry from writing a record twice.
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 250 * time.Millisecond
	return c
}

// sticky is sarama's sticky strategy with a new instance for each plan.
// The instance keeps the plan in progress in its fields, and a subscriber
// uses one config for the consumer group of each topic it subscribes, so
// two groups planning at once would share them (a data race). The sticky
// assignor reads the previous assignment from the members' user data, so
// a new instance plans the same.
type sticky struct{}

func (sticky) Name() string { return sarama.StickyBalanceStrategyName }

func (sticky) Plan(members map[string]sarama.ConsumerGroupMemberMetadata, topics map[string][]int32) (sarama.BalanceStrategyPlan, error) {
	return sarama.NewBalanceStrategySticky().Plan(members, topics)
}

func (sticky) AssignmentData(memberID string, topics map[string][]int32, generationID int32) ([]byte, error) {
	return sarama.NewBalanceStrategySticky().AssignmentData(memberID, topics, generationID)
}

// Brokers returns the bootstrap addresses.
func (a Settings) Brokers() []string { return a.brokers }

// Kafka returns the kafka section the settings were made from.
func (a Settings) Kafka() config.Kafka { return a.cfg }
