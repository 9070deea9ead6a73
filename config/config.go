// Package config loads, defaults and validates eventrouter's YAML configuration.
package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"net/mail"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"go.yaml.in/yaml/v3"
)

// BrokersEnv names the environment variable that overrides kafka.brokers and
// turns the embedded broker off.
const BrokersEnv = "EVENTROUTER_KAFKA_BROKERS"

// MinOutageInterval is the shortest retry.outage_interval: the pause
// before a route tries a dependency that is down again.
const MinOutageInterval = 10 * time.Millisecond

// DefaultPath is the file `eventrouter run` reads when no --config is given.
const DefaultPath = "eventrouter.yaml"

// Config is the whole configuration of one eventrouter process.
type Config struct {
	// Kafka says which brokers to use and how to reach them.
	Kafka Kafka `yaml:"kafka"`
	// Router holds settings that apply to the router as a whole.
	Router Router `yaml:"router"`
	// Retry is the retry policy of every route that does not set its own.
	Retry Retry `yaml:"retry"`
	// Notifier chooses how notification handlers deliver notifications.
	Notifier Notifier `yaml:"notifier"`
	// Ledger is where sent notifications are recorded, so that each is
	// sent once.
	Ledger Ledger `yaml:"ledger"`
	// Log chooses the log format and level.
	Log Log `yaml:"log"`
	// Ops serves health, readiness and metrics over HTTP.
	Ops Ops `yaml:"ops"`
	// Tracing exports OpenTelemetry spans.
	Tracing Tracing `yaml:"tracing"`
	// Routes lists what the router consumes, which handler runs, and where
	// results and poisoned records go.
	Routes []Route `yaml:"routes"`
}

// Kafka configures the connection to Kafka.
type Kafka struct {
	// Brokers lists external brokers as host:port. When it is empty the
	// embedded broker must be enabled. EVENTROUTER_KAFKA_BROKERS overrides it.
	Brokers []string `yaml:"brokers"`
	// ClientID is the Kafka client.id the daemon sends to the brokers.
	ClientID string `yaml:"client_id"`
	// Version is the lowest Kafka protocol version the brokers speak, as
	// sarama parses it (for example "3.6.0").
	Version string `yaml:"version"`
	// DialTimeout bounds each connection attempt to a broker.
	DialTimeout time.Duration `yaml:"dial_timeout"`
	// RequestTimeout bounds the wait for a broker's answer to a request
	// (Kafka's request.timeout.ms). A consumer group's join waits at least
	// RebalanceTimeout plus five seconds, as the broker may hold it that
	// long.
	RequestTimeout time.Duration `yaml:"request_timeout"`
	// SessionTimeout is how long a consumer group member may go without a
	// heartbeat before the broker gives its partitions to the others
	// (Kafka's session.timeout.ms): how soon a killed instance's
	// partitions move.
	SessionTimeout time.Duration `yaml:"session_timeout"`
	// HeartbeatInterval is how often a member heartbeats (Kafka's
	// heartbeat.interval.ms); at most a third of SessionTimeout.
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"`
	// RebalanceTimeout is how long a rebalance waits for every member to
	// finish the records it has in flight and rejoin (Kafka's
	// max.poll.interval.ms, as a join's rebalance timeout).
	RebalanceTimeout time.Duration `yaml:"rebalance_timeout"`
	// TLS encrypts the connections to the brokers and checks who they are
	// (security.protocol SSL, or SASL_SSL with SASL).
	TLS KafkaTLS `yaml:"tls"`
	// SASL authenticates the daemon to the brokers.
	SASL SASL `yaml:"sasl"`
	// Embedded runs a Kafka-protocol broker inside the daemon.
	Embedded Embedded `yaml:"embedded"`
}

// KafkaTLS configures TLS to the brokers. It applies to every Kafka client
// the daemon and its commands make.
type KafkaTLS struct {
	// Enabled turns TLS on. The other keys need it.
	Enabled bool `yaml:"enabled"`
	// CAFile is a PEM file of the certificate authorities that may sign
	// the brokers' certificates (Kafka's ssl.ca.location). Empty trusts
	// the system's authorities, as managed services need.
	CAFile string `yaml:"ca_file"`
	// CertFile and KeyFile are the PEM certificate and private key the
	// daemon shows the brokers (mutual TLS). Set both or neither.
	CertFile string `yaml:"cert_file"`
	// KeyFile is the PEM private key of CertFile.
	KeyFile string `yaml:"key_file"`
	// ServerName is the name the brokers' certificates must hold. Empty:
	// the host of each broker's address.
	ServerName string `yaml:"server_name"`
	// InsecureSkipVerify accepts any certificate, so anyone on the path
	// can read and change the traffic. It is refused unless the
	// environment also has EVENTROUTER_ALLOW_INSECURE=1, and warned about
	// at start.
	InsecureSkipVerify bool `yaml:"insecure_skip_verify"`
}

// SASL configures SASL authentication to the brokers.
type SASL struct {
	// Mechanism is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (Kafka's
	// sasl.mechanism). Empty turns SASL off.
	Mechanism string `yaml:"mechanism"`
	// Username is the SASL user (for Confluent Cloud, the API key).
	Username string `yaml:"username"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
	// PasswordFile is a file holding the password (trailing newline
	// ignored), such as a mounted secret.
	PasswordFile string `yaml:"password_file"`
	// AllowCleartextPassword lets PLAIN run without kafka.tls, which sends
	// the password in clear to anyone on the path.
	AllowCleartextPassword bool `yaml:"allow_cleartext_password"`
}

// InsecureEnv names the environment variable that must be "1" for
// kafka.tls.insecure_skip_verify to be accepted.
const InsecureEnv = "EVENTROUTER_ALLOW_INSECURE"

// SASL mechanisms of kafka.sasl.mechanism.
const (
	SASLPlain       = "PLAIN"
	SASLSCRAMSHA256 = "SCRAM-SHA-256"
	SASLSCRAMSHA512 = "SCRAM-SHA-512"
)

// Embedded configures the in-process Kafka-protocol broker.
type Embedded struct {
	// Enabled starts the broker before the router and stops it last.
	Enabled bool `yaml:"enabled"`
	// Listen is the host:port the broker listens on and advertises.
	Listen string `yaml:"listen"`
	// Partitions is the partition count of auto-created topics.
	Partitions int `yaml:"partitions"`
	// DataDir keeps the log and committed offsets across restarts. Empty
	// keeps everything in memory only.
	DataDir string `yaml:"data_dir"`
	// Retention is how long records are kept (Kafka's log.retention.ms).
	Retention time.Duration `yaml:"retention"`
	// RetentionBytes caps each partition's log in bytes (Kafka's
	// log.retention.bytes); -1 means no cap.
	RetentionBytes int64 `yaml:"retention_bytes"`
	// RetentionCheckInterval is how often expired records are removed.
	RetentionCheckInterval time.Duration `yaml:"retention_check_interval"`
}

// Router configures the Watermill router.
type Router struct {
	// ShutdownTimeout bounds how long a stop waits for in-flight messages
	// to finish before it gives up on them (they are then redelivered).
	ShutdownTimeout time.Duration `yaml:"shutdown_timeout"`
}

// Retry is an exponential backoff policy for transient handler errors.
type Retry struct {
	// MaxRetries is how many times a failed message is retried before it
	// goes to the poison topic. Zero sends it there at once.
	MaxRetries *int `yaml:"max_retries"`
	// InitialInterval is the wait before the first retry.
	InitialInterval time.Duration `yaml:"initial_interval"`
	// MaxInterval caps the wait between retries.
	MaxInterval time.Duration `yaml:"max_interval"`
	// Multiplier grows the wait after each retry.
	Multiplier float64 `yaml:"multiplier"`
	// OutageInterval is the first pause of the whole route when a
	// dependency (such as the mail server) is down. Outages use up no
	// retries and poison nothing; the route waits until one attempt
	// gets through.
	OutageInterval time.Duration `yaml:"outage_interval"`
	// OutageMaxInterval caps the pause between attempts during an outage.
	OutageMaxInterval time.Duration `yaml:"outage_max_interval"`
}

// Notifier chooses the notification channel.
type Notifier struct {
	// Kind is the notifier to use: "log" writes one structured log line
	// per notification; "smtp" sends email; "none" drops notifications
	// (for benchmarks and dry runs).
	Kind string `yaml:"kind"`
	// SMTP configures the "smtp" notifier.
	SMTP SMTP `yaml:"smtp"`
	// Templates is a directory whose files replace the built-in templates
	// of the same name (welcome.subject.tmpl, welcome.txt.tmpl,
	// welcome.html.tmpl).
	Templates string `yaml:"templates"`
}

// SMTP says how to reach the mail server.
type SMTP struct {
	// Host is the server's host name or address.
	Host string `yaml:"host"`
	// Port is the server's port.
	Port int `yaml:"port"`
	// TLS is "starttls" (required), "implicit" (TLS from the first byte,
	// as on port 465) or "none".
	TLS string `yaml:"tls"`
	// Username turns authentication on.
	Username string `yaml:"username"`
	// PasswordEnv names the environment variable holding the password.
	PasswordEnv string `yaml:"password_env"`
	// PasswordFile is a file holding the password (trailing newline
	// ignored), such as a mounted secret.
	PasswordFile string `yaml:"password_file"`
	// AllowCleartextPassword lets a username go with tls "none", which
	// sends the password in clear to anyone on the path.
	AllowCleartextPassword bool `yaml:"allow_cleartext_password"`
	// From is the sender, such as "Example <noreply@example.com>".
	From string `yaml:"from"`
	// Timeout bounds one delivery.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConnections bounds the connections open to the server at once.
	// Each delivers one email at a time and is kept open for the next, so
	// that an email does not pay for a new connection, TLS and login.
	MaxConnections int `yaml:"max_connections"`
}

// Ledger configures the side-effect ledger.
type Ledger struct {
	// Kind is "bbolt" (a file per instance, for one instance) or
	// "postgres" (one ledger that every instance shares, for more).
	Kind string `yaml:"kind"`
	// Path is the ledger file of kind bbolt. Each instance needs its own.
	Path string `yaml:"path"`
	// Postgres configures kind postgres.
	Postgres Postgres `yaml:"postgres"`
}

// Postgres configures the shared ledger's database.
type Postgres struct {
	// DSNEnv names the environment variable holding the connection string
	// (a URL or key=value pairs). It holds a password, so it is never in
	// the file, and never logged.
	DSNEnv string `yaml:"dsn_env"`
	// DSNFile is a file holding the connection string (trailing newline
	// ignored), such as a mounted secret.
	DSNFile string `yaml:"dsn_file"`
	// MaxConnections bounds the connections to the database.
	MaxConnections int `yaml:"max_connections"`
	// StatementTimeout bounds each statement, on the server too: a
	// database that stops answering pauses the route instead of holding
	// its records.
	StatementTimeout time.Duration `yaml:"statement_timeout"`
	// Lease is how long a claim stays an instance's after it last renewed
	// it: an instance that dies between claiming and recording holds its
	// users for at most this long before another takes them over.
	Lease time.Duration `yaml:"lease"`
}

// Log configures logging.
type Log struct {
	// Format is "text" or "json".
	Format string `yaml:"format"`
	// Level is "debug", "info", "warn" or "error".
	Level string `yaml:"level"`
}

// Ops configures the HTTP server for operators.
type Ops struct {
	// Enabled starts the server.
	Enabled bool `yaml:"enabled"`
	// Listen is the host:port it listens on; keep it on loopback unless a
	// token is set.
	Listen string `yaml:"listen"`
	// TokenEnv names an environment variable holding a bearer token that
	// every endpoint but /healthz then requires.
	TokenEnv string `yaml:"token_env"`
	// TokenFile is a file holding that token, as an alternative.
	TokenFile string `yaml:"token_file"`
	// Console is the web console at /.
	Console Console `yaml:"console"`
}

// Console configures the operators' web console, served by the ops server.
type Console struct {
	// Enabled serves it at /.
	Enabled bool `yaml:"enabled"`
	// AllowActions lets a console without a token replay poisoned records;
	// with a token, actions need a login and are always allowed.
	AllowActions bool `yaml:"allow_actions"`
	// Hosts are the host names, beside IP addresses and localhost, that
	// the console answers to, such as the name of a proxy in front of it;
	// other names are refused, against DNS rebinding.
	Hosts []string `yaml:"hosts"`
}

// Tracing configures OpenTelemetry.
type Tracing struct {
	// Exporter is "none" or "otlp" (OTLP over HTTP).
	Exporter string `yaml:"exporter"`
	// Endpoint is the OTLP collector's host:port.
	Endpoint string `yaml:"endpoint"`
	// Insecure sends without TLS.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of new traces recorded, 0 to 1; traces
	// that arrive sampled stay sampled.
	SampleRatio float64 `yaml:"sample_ratio"`
	// ServiceName names this process in traces.
	ServiceName string `yaml:"service_name"`
}

// Route connects a subscribe topic to a handler.
type Route struct {
	// Name identifies the route in logs; it defaults to the handler name.
	Name string `yaml:"name"`
	// Handler names a handler from the registry in package handlers.
	Handler string `yaml:"handler"`
	// SubscribeTopic is the topic the route consumes.
	SubscribeTopic string `yaml:"subscribe_topic"`
	// ConsumerGroup is the Kafka consumer group of the route. Instances
	// that share it share the topic's partitions.
	ConsumerGroup string `yaml:"consumer_group"`
	// PublishTopic receives the events the handler produces.
	PublishTopic string `yaml:"publish_topic"`
	// PoisonTopic receives records that failed for good; it defaults to
	// "<subscribe_topic>.poison".
	PoisonTopic string `yaml:"poison_topic"`
	// Retry overrides the global retry policy, key by key.
	Retry Retry `yaml:"retry"`
	// Ordering says which records of a partition the route may handle at
	// once: "key" (the default) runs records concurrently unless they
	// share a Kafka key, and records without a key one after the other;
	// "partition" runs one record per partition at a time; "unordered"
	// runs any record at once.
	Ordering string `yaml:"ordering"`
	// MaxInFlight bounds the records the route handles at once, across its
	// partitions.
	MaxInFlight int `yaml:"max_in_flight"`
	// StartFrom says where a consumer group with no committed offset
	// starts: "earliest" (the default, as the seed's consumer) handles the
	// topic's whole history, "latest" only records published from the
	// group's first start on. A group that has committed resumes where it
	// left off either way.
	StartFrom string `yaml:"start_from"`
	// Options are the handler's own settings, decoded by the handler into
	// its own struct (see DecodeOptions); the config package does not know
	// their keys.
	Options yaml.Node `yaml:"options"`

	// expanded maps each scalar of Options that ${VAR} expansion changed to
	// the reference the file had, so that messages about options never
	// quote a value that came from the environment.
	expanded map[*yaml.Node]string
}

// DefaultRoute returns a route before its YAML is laid over it: retry is
// the global policy it inherits.
func DefaultRoute(retry Retry) Route {
	return Route{Retry: retry.clone(), Ordering: "key", MaxInFlight: 256, StartFrom: "earliest"}
}

// Defaults returns the configuration that every loaded file is laid over.
func Defaults() Config {
	maxRetries := 5
	return Config{
		Kafka: Kafka{
			ClientID:          "eventrouter",
			Version:           "3.6.0",
			DialTimeout:       10 * time.Second,
			RequestTimeout:    30 * time.Second,
			SessionTimeout:    10 * time.Second,
			HeartbeatInterval: 3 * time.Second,
			RebalanceTimeout:  60 * time.Second,
			Embedded: Embedded{
				Listen:                 "127.0.0.1:9092",
				Partitions:             1,
				Retention:              7 * 24 * time.Hour,
				RetentionBytes:         -1,
				RetentionCheckInterval: 5 * time.Minute,
			},
		},
		Router: Router{ShutdownTimeout: 30 * time.Second},
		Retry: Retry{
			MaxRetries:      &maxRetries,
			InitialInterval: 100 * time.Millisecond,
			MaxInterval:     10 * time.Second,
			Multiplier:      2,

			OutageInterval:    time.Second,
			OutageMaxInterval: 30 * time.Second,
		},
		Notifier: Notifier{Kind: "log", SMTP: SMTP{Port: 587, TLS: "starttls", Timeout: 30 * time.Second, MaxConnections: 8}},
		Ledger: Ledger{Kind: "bbolt", Path: "data/ledger.db",
			Postgres: Postgres{MaxConnections: 16, StatementTimeout: 5 * time.Second, Lease: 15 * time.Second}},
		Log:     Log{Format: "text", Level: "info"},
		Ops:     Ops{Listen: "127.0.0.1:9464", Console: Console{Enabled: true}},
		Tracing: Tracing{Exporter: "none", Endpoint: "127.0.0.1:4318", SampleRatio: 1, ServiceName: "eventrouter"},
	}
}

// Load reads the file at path, expands environment variables, decodes it
// strictly over Defaults, applies EVENTROUTER_KAFKA_BROKERS and validates
// the result.
func Load(path string, getenv func(string) string) (Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return Parse(raw, getenv)
}

// Parse is Load for configuration already in memory.
func Parse(raw []byte, getenv func(string) string) (Config, error) {
	cfg, problems := Check(raw, getenv)
	if len(problems) > 0 {
		return Config{}, errors.Join(problems...)
	}
	return cfg, nil
}

// Check is Parse that returns every problem it finds, in one pass, each
// naming its key and, where the file has the key or its parent, the line.
// It also returns the configuration as far as it could be decoded, with
// defaults where values have problems, so that later checks can look at
// the parts that are sound.
func Check(raw []byte, getenv func(string) string) (Config, []error) {
	cfg := Defaults()
	root, errs, ok := readDocument(raw)
	if !ok {
		return cfg, errs
	}
	var lines map[string]int
	if root != nil && !isNull(root) {
		if root.Kind != yaml.MappingNode {
			return cfg, append(errs, &KeyError{Line: root.Line, Msg: "the file must be a mapping of keys such as kafka: and routes:"})
		}
		lines = keyLines(root)
		errs = append(errs, decode(root, &cfg, getenv)...)
	}
	if brokers := getenv(BrokersEnv); strings.TrimSpace(brokers) != "" {
		cfg.Kafka.Brokers = splitList(brokers)
		cfg.Kafka.Embedded.Enabled = false
	}
	cfg.fillRoutes()
	// A value that could not be read keeps its default, which would
	// draw more complaints about the same key: report it once.
	inFile := func(key string) bool { _, ok := lines[key]; return ok }
	errs = Add(errs, cfg.problems(inFile)...)
	if cfg.Kafka.TLS.InsecureSkipVerify && getenv(InsecureEnv) != "1" {
		errs = Add(errs, &KeyError{Key: "kafka.tls.insecure_skip_verify", Msg: "accepts any broker certificate, so anyone on the path can read and change the traffic; " +
			"set kafka.tls.ca_file instead, or " + InsecureEnv + "=1 in the environment to allow it"})
	}
	locate(lines, errs)
	Sort(errs)
	return cfg, errs
}

// decode expands root, checks it against Config and decodes it into cfg,
// and returns the problems it found on the way.
func decode(root *yaml.Node, cfg *Config, getenv func(string) string) []error {
	expanded := map[*yaml.Node]string{}
	var errs []error
	expandNode(root, "", getenv, func(n *yaml.Node, ref string, err error) {
		if err != nil {
			errs = append(errs, err)
			return
		}
		expanded[n] = ref
	})
	c := newChecker(expanded)
	c.node(root, reflect.TypeOf(*cfg), reflect.ValueOf(*cfg), "")
	// A value left unexpanded is reported once, as unexpanded; under an
	// unknown key, only the unknown key is.
	unexpanded := map[string]bool{}
	kept := errs[:0]
	for _, err := range errs {
		k, _ := keyOf(err)
		if !relatedToAny(k, c.unknown) {
			unexpanded[k] = true
			kept = append(kept, err)
		}
	}
	errs = kept
	for _, err := range c.errs {
		if k, _ := keyOf(err); !unexpanded[k] {
			errs = append(errs, err)
		}
	}

	dropRepeats(root)
	if err := root.Decode(cfg); err != nil && len(c.errs) == 0 {
		errs = append(errs, decodeErrors(root, err)...)
	}
	routes := &routesOver{base: cfg.Retry}
	top := struct {
		Routes *routesOver `yaml:"routes"`
	}{routes}
	_ = root.Decode(&top)
	cfg.Routes = routes.routes
	for i := range cfg.Routes {
		cfg.Routes[i].expanded = expanded
	}
	return errs
}

// fillRoutes gives each route the defaults that depend on other keys.
func (c *Config) fillRoutes() {
	for i := range c.Routes {
		r := &c.Routes[i]
		if r.Name == "" {
			r.Name = r.Handler
		}
		if r.PoisonTopic == "" && r.SubscribeTopic != "" {
			r.PoisonTopic = r.SubscribeTopic + ".poison"
		}
	}
}

// Brokers returns the addresses the daemon's clients connect to: the
// external brokers, or the embedded broker's listen address.
func (c Config) Brokers() []string {
	if c.Kafka.Embedded.Enabled {
		return []string{c.Kafka.Embedded.Listen}
	}
	return c.Kafka.Brokers
}

// Validate reports the first problem in c, naming its key.
func (c Config) Validate() error {
	return errors.Join(c.Problems()...)
}

// Problems lists every problem in c, each naming its key. A route's retry
// problem that the global policy has too is reported once, for retry.
func (c Config) Problems() []error {
	return c.problems(nil)
}

// problems is Problems that also reports a route's retry problem that the
// global policy has too when inFile says the route sets that key itself.
func (c Config) problems(inFile func(key string) bool) []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}

	k := c.Kafka
	switch {
	case k.Embedded.Enabled:
		if _, _, err := net.SplitHostPort(k.Embedded.Listen); err != nil {
			add("kafka.embedded.listen", "%q is not host:port", k.Embedded.Listen)
		}
		if k.Embedded.Partitions < 1 {
			add("kafka.embedded.partitions", "must be at least 1, got %d", k.Embedded.Partitions)
		}
		if k.Embedded.Retention <= 0 {
			add("kafka.embedded.retention", "must be positive, got %s", k.Embedded.Retention)
		}
		if k.Embedded.RetentionCheckInterval <= 0 {
			add("kafka.embedded.retention_check_interval", "must be positive, got %s", k.Embedded.RetentionCheckInterval)
		}
	case len(k.Brokers) == 0:
		add("kafka.brokers", "is empty and kafka.embedded.enabled is false; set one or the other, or %s", BrokersEnv)
	}
	for i, b := range k.Brokers {
		if _, _, err := net.SplitHostPort(b); err != nil {
			add(fmt.Sprintf("kafka.brokers[%d]", i), "%q is not host:port", b)
		}
	}
	if v, err := sarama.ParseKafkaVersion(k.Version); err != nil {
		add("kafka.version", "%q is not a Kafka version such as 3.6.0", k.Version)
	} else if !v.IsAtLeast(sarama.V0_11_0_0) {
		// The publisher is idempotent, which needs 0.11.
		add("kafka.version", "must be at least 0.11.0, got %q", k.Version)
	}
	if k.ClientID == "" {
		add("kafka.client_id", "is empty")
	}
	errs = append(errs, k.securityProblems()...)
	if k.DialTimeout <= 0 {
		add("kafka.dial_timeout", "must be positive, got %s", k.DialTimeout)
	}
	if k.RequestTimeout <= 0 {
		add("kafka.request_timeout", "must be positive, got %s", k.RequestTimeout)
	}
	// Apache Kafka's default group.min.session.timeout.ms and
	// group.max.session.timeout.ms: brokers refuse joins outside them.
	if k.SessionTimeout < 6*time.Second || k.SessionTimeout > 30*time.Minute {
		add("kafka.session_timeout", "must be between 6s and 30m, got %s", k.SessionTimeout)
	}
	if k.HeartbeatInterval <= 0 || k.HeartbeatInterval*3 > k.SessionTimeout {
		add("kafka.heartbeat_interval", "must be positive and at most a third of kafka.session_timeout (%s), got %s", k.SessionTimeout, k.HeartbeatInterval)
	}
	if k.RebalanceTimeout < time.Second {
		add("kafka.rebalance_timeout", "must be at least 1s, got %s", k.RebalanceTimeout)
	}
	if c.Router.ShutdownTimeout <= 0 {
		add("router.shutdown_timeout", "must be positive, got %s", c.Router.ShutdownTimeout)
	}
	global := c.Retry.problems("retry")
	errs = append(errs, global...)
	switch c.Notifier.Kind {
	case "log", "none":
	case "smtp":
		errs = append(errs, c.Notifier.SMTP.problems("notifier.smtp")...)
	default:
		add("notifier.kind", "unknown notifier %q; known: log, smtp, none", c.Notifier.Kind)
	}
	errs = append(errs, c.Ledger.problems("ledger")...)
	switch c.Log.Format {
	case "text", "json":
	default:
		add("log.format", "must be text or json, got %q", c.Log.Format)
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "must be debug, info, warn or error, got %q", c.Log.Level)
	}

	if c.Ops.Enabled {
		if _, _, err := net.SplitHostPort(c.Ops.Listen); err != nil {
			add("ops.listen", "%q is not host:port", c.Ops.Listen)
		}
		if c.Ops.TokenEnv != "" && c.Ops.TokenFile != "" {
			add("ops.token_file", "set token_env or token_file, not both")
		}
	}
	switch c.Tracing.Exporter {
	case "none":
	case "otlp":
		if _, _, err := net.SplitHostPort(c.Tracing.Endpoint); err != nil {
			add("tracing.endpoint", "%q is not host:port", c.Tracing.Endpoint)
		}
	default:
		add("tracing.exporter", "must be none or otlp, got %q", c.Tracing.Exporter)
	}
	if !(c.Tracing.SampleRatio >= 0 && c.Tracing.SampleRatio <= 1) {
		add("tracing.sample_ratio", "must be from 0 to 1, got %g", c.Tracing.SampleRatio)
	}

	if len(c.Routes) == 0 {
		add("routes", "is empty; the router needs at least one route")
	}
	names := map[string]int{}
	// Replay sends a poisoned record back to the topic it failed on: a
	// poison topic shared by two routes, or one that a route consumes,
	// would hand records to routes they never failed in.
	poisons := map[string]int{}
	subscribers := map[string]int{}
	for i, r := range c.Routes {
		if _, ok := subscribers[r.SubscribeTopic]; !ok && r.SubscribeTopic != "" {
			subscribers[r.SubscribeTopic] = i
		}
	}
	for i, r := range c.Routes {
		key := fmt.Sprintf("routes[%d]", i)
		if r.Handler == "" {
			add(key+".handler", "is missing")
		}
		if r.SubscribeTopic == "" {
			add(key+".subscribe_topic", "is missing")
		}
		for _, t := range [...]struct{ key, name string }{
			{"subscribe_topic", r.SubscribeTopic}, {"publish_topic", r.PublishTopic}, {"poison_topic", r.PoisonTopic},
		} {
			if t.name != "" && !validTopic(t.name) {
				add(key+"."+t.key, "%q is not a Kafka topic name (at most 249 of a-z, A-Z, 0-9, '.', '_', '-')", t.name)
			}
		}
		if r.ConsumerGroup == "" {
			add(key+".consumer_group", "is missing")
		}
		if r.PoisonTopic != "" && r.PoisonTopic == r.SubscribeTopic {
			add(key+".poison_topic", "must differ from subscribe_topic %q", r.SubscribeTopic)
		}
		if r.PublishTopic != "" && r.PublishTopic == r.SubscribeTopic {
			add(key+".publish_topic", "must differ from subscribe_topic %q", r.SubscribeTopic)
		}
		if r.PoisonTopic != "" && r.PoisonTopic == r.PublishTopic {
			add(key+".poison_topic", "must differ from publish_topic %q", r.PublishTopic)
		}
		if j, ok := poisons[r.PoisonTopic]; ok && r.PoisonTopic != "" {
			add(key+".poison_topic", "route %q and route %q (routes[%d]) both use the poison topic %q%s; set poison_topic on route %q so that each route has its own",
				r.Name, c.Routes[j].Name, j, r.PoisonTopic, defaultPoison(r, c.Routes[j]), r.Name)
		} else if r.PoisonTopic != "" {
			poisons[r.PoisonTopic] = i
		}
		if j, ok := subscribers[r.PoisonTopic]; ok && j != i && r.PoisonTopic != "" {
			add(key+".poison_topic", "%q is the subscribe_topic of route %q (routes[%d]); poisoned records would be handled by that route", r.PoisonTopic, c.Routes[j].Name, j)
		}
		if j, ok := names[r.Name]; ok && r.Name != "" {
			add(key+".name", "%q is already the name of routes[%d]", r.Name, j)
		}
		names[r.Name] = i
		switch r.Ordering {
		case "key", "partition", "unordered":
		default:
			add(key+".ordering", "%q is not an ordering; want key, partition or unordered", r.Ordering)
		}
		switch r.StartFrom {
		case "earliest", "latest":
		default:
			add(key+".start_from", "%q is not a starting point; want earliest or latest", r.StartFrom)
		}
		if r.MaxInFlight < 1 || r.MaxInFlight > maxInFlight {
			add(key+".max_in_flight", "must be between 1 and %d, got %d", maxInFlight, r.MaxInFlight)
		}
		// Routes inherit the global policy: report its problems once.
		for _, p := range r.Retry.problems(key + ".retry") {
			if k, _ := keyOf(p); !inherited(p, global) || inFile != nil && inFile(k) {
				errs = append(errs, p)
			}
		}
	}
	return errs
}

// securityProblems reports the problems of kafka.tls and kafka.sasl.
// kafka.tls.insecure_skip_verify without EVENTROUTER_ALLOW_INSECURE=1 is
// reported by Check, which has the environment.
func (k Kafka) securityProblems() []error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	t, s := k.TLS, k.SASL
	if k.Embedded.Enabled && (t.Enabled || s.Mechanism != "") {
		key := "kafka.tls.enabled"
		if !t.Enabled {
			key = "kafka.sasl.mechanism"
		}
		add(key, "applies to kafka.brokers, but kafka.embedded.enabled is true: the embedded broker takes plaintext connections on its own address only; turn it off, or set %s", BrokersEnv)
	}
	if !t.Enabled {
		for _, f := range [...]struct {
			key string
			set bool
		}{{"ca_file", t.CAFile != ""}, {"cert_file", t.CertFile != ""}, {"key_file", t.KeyFile != ""}, {"server_name", t.ServerName != ""}, {"insecure_skip_verify", t.InsecureSkipVerify}} {
			if f.set {
				add("kafka.tls."+f.key, "is set but kafka.tls.enabled is false, so the connections would be plaintext; set kafka.tls.enabled: true")
			}
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		if t.CertFile == "" {
			add("kafka.tls.cert_file", "is missing; kafka.tls.key_file needs the certificate it is the key of")
		} else {
			add("kafka.tls.key_file", "is missing; kafka.tls.cert_file needs its private key")
		}
	}
	switch s.Mechanism {
	case "":
		for _, f := range [...]struct {
			key string
			set bool
		}{{"username", s.Username != ""}, {"password_env", s.PasswordEnv != ""}, {"password_file", s.PasswordFile != ""}} {
			if f.set {
				add("kafka.sasl."+f.key, "is set but kafka.sasl.mechanism is empty, so SASL is off; set the mechanism: %s, %s or %s", SASLSCRAMSHA512, SASLSCRAMSHA256, SASLPlain)
			}
		}
		return errs
	case SASLPlain:
		if !t.Enabled && !s.AllowCleartextPassword {
			add("kafka.sasl.mechanism", "PLAIN without kafka.tls sends the password in clear; set kafka.tls.enabled: true, use SCRAM-SHA-512, or set kafka.sasl.allow_cleartext_password: true")
		}
	case SASLSCRAMSHA256, SASLSCRAMSHA512:
	default:
		add("kafka.sasl.mechanism", "unknown mechanism %q; known: %s, %s, %s", s.Mechanism, SASLSCRAMSHA512, SASLSCRAMSHA256, SASLPlain)
	}
	if s.Username == "" {
		add("kafka.sasl.username", "is missing; SASL %s needs a user", s.Mechanism)
	}
	switch {
	case s.PasswordEnv == "" && s.PasswordFile == "":
		add("kafka.sasl.password_env", "is missing; set password_env or password_file to where the password is")
	case s.PasswordEnv != "" && s.PasswordFile != "":
		add("kafka.sasl.password_file", "set password_env or password_file, not both")
	}
	return errs
}

// maxInFlight bounds routes[].max_in_flight: each record in flight is a
// goroutine and a record held in memory.
const maxInFlight = 65536

func (r Retry) problems(key string) []error {
	var errs []error
	add := func(sub, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key + "." + sub, Msg: fmt.Sprintf(format, args...)})
	}
	switch {
	case r.MaxRetries == nil:
		add("max_retries", "is not set")
	case *r.MaxRetries < 0:
		add("max_retries", "must not be negative, got %d", *r.MaxRetries)
	}
	if r.InitialInterval < 0 {
		add("initial_interval", "must not be negative, got %s", r.InitialInterval)
	}
	if r.MaxInterval <= 0 {
		add("max_interval", "must be positive, got %s", r.MaxInterval)
	} else if r.InitialInterval > r.MaxInterval {
		add("initial_interval", "%s is above max_interval %s", r.InitialInterval, r.MaxInterval)
	}
	// Below 1 the waits would shrink; 0 is a value, not "unset".
	switch {
	case !(r.Multiplier >= 1):
		add("multiplier", "must be at least 1, got %g", r.Multiplier)
	case math.IsInf(r.Multiplier, 0):
		add("multiplier", "must be a finite number, got %g", r.Multiplier)
	}
	// A shorter pause would retry a down server in a tight loop.
	if r.OutageInterval < MinOutageInterval {
		add("outage_interval", "must be at least %s, got %s", MinOutageInterval, r.OutageInterval)
	}
	if r.OutageMaxInterval < MinOutageInterval {
		add("outage_max_interval", "must be at least %s, got %s", MinOutageInterval, r.OutageMaxInterval)
	} else if r.OutageInterval > r.OutageMaxInterval {
		add("outage_interval", "%s is above outage_max_interval %s", r.OutageInterval, r.OutageMaxInterval)
	}
	return errs
}

func (s SMTP) problems(key string) []error {
	var errs []error
	add := func(sub, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key + "." + sub, Msg: fmt.Sprintf(format, args...)})
	}
	if s.Host == "" {
		add("host", "is missing")
	}
	if s.Port < 1 || s.Port > 65535 {
		add("port", "must be 1 to 65535, got %d", s.Port)
	}
	switch s.TLS {
	case "starttls", "implicit", "none":
	default:
		add("tls", "must be starttls, implicit or none, got %q", s.TLS)
	}
	if _, err := mail.ParseAddress(s.From); err != nil {
		add("from", "%q is not an address", s.From)
	}
	if s.PasswordEnv != "" && s.PasswordFile != "" {
		add("password_file", "set password_env or password_file, not both")
	}
	if (s.PasswordEnv != "" || s.PasswordFile != "") && s.Username == "" {
		add("username", "is missing; a password needs a username")
	}
	if s.TLS == "none" && s.Username != "" && !s.AllowCleartextPassword {
		add("tls", "is none with a username, which sends the password in clear; use starttls or implicit, or set %s.allow_cleartext_password: true", key)
	}
	if s.Timeout <= 0 {
		add("timeout", "must be positive, got %s", s.Timeout)
	}
	if s.MaxConnections < 1 || s.MaxConnections > 1024 {
		add("max_connections", "must be between 1 and 1024, got %d", s.MaxConnections)
	}
	return errs
}

func (l Ledger) problems(key string) []error {
	var errs []error
	add := func(sub, format string, args ...any) {
		errs = append(errs, &KeyError{Key: key + "." + sub, Msg: fmt.Sprintf(format, args...)})
	}
	switch l.Kind {
	case "bbolt":
		if l.Path == "" {
			add("path", "is empty")
		}
	case "postgres":
		p := l.Postgres
		switch {
		case p.DSNEnv == "" && p.DSNFile == "":
			add("postgres.dsn_env", "is missing; set dsn_env or dsn_file to where the connection string is")
		case p.DSNEnv != "" && p.DSNFile != "":
			add("postgres.dsn_file", "set dsn_env or dsn_file, not both")
		}
		if p.MaxConnections < 1 || p.MaxConnections > 1024 {
			add("postgres.max_connections", "must be between 1 and 1024, got %d", p.MaxConnections)
		}
		if p.StatementTimeout < 100*time.Millisecond {
			add("postgres.statement_timeout", "must be at least 100ms, got %s", p.StatementTimeout)
		}
		if p.Lease < 3*time.Second {
			add("postgres.lease", "must be at least 3s (claims are renewed every third of it), got %s", p.Lease)
		} else if p.StatementTimeout > p.Lease/3 {
			// A renewal that takes longer than the time between renewals
			// could let a live owner's claim run out.
			add("postgres.statement_timeout", "must be at most a third of lease (%s), got %s", p.Lease/3, p.StatementTimeout)
		}
	default:
		add("kind", "unknown ledger %q; known: bbolt, postgres", l.Kind)
	}
	return errs
}

// KeyError is a problem with the value of one configuration key.
type KeyError struct {
	// Key is the key's path, such as "routes[0].subscribe_topic"; empty
	// for a problem with the file as a whole.
	Key string
	// Msg says what is wrong with it.
	Msg string
	// Line is where the key, or the nearest parent the file has, is;
	// 0 when unknown.
	Line int
}

func (e *KeyError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.Line > 0 {
		fmt.Fprintf(&b, "line %d: ", e.Line)
	}
	if e.Key != "" {
		b.WriteString(e.Key + ": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// defaultPoison explains a poison topic that two routes share because
// both took the default.
func defaultPoison(a, b Route) string {
	if a.SubscribeTopic == b.SubscribeTopic && a.PoisonTopic == a.SubscribeTopic+".poison" {
		return fmt.Sprintf(", the default for subscribe_topic %q", a.SubscribeTopic)
	}
	return ""
}

func inherited(p error, global []error) bool {
	var ke *KeyError
	if !errors.As(p, &ke) {
		return false
	}
	for _, g := range global {
		var ge *KeyError
		if errors.As(g, &ge) && ge.Msg == ke.Msg && strings.HasSuffix(ke.Key, strings.TrimPrefix(ge.Key, "retry")) {
			return true
		}
	}
	return false
}

// validTopic reports whether Kafka accepts name as a topic name.
func validTopic(name string) bool {
	if len(name) > 249 || name == "." || name == ".." {
		return false
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}
