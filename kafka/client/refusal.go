package client

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/IBM/sarama"
)

// RefusalError is a broker's refusal of the daemon's connection for a
// reason that trying again cannot fix: credentials, certificates, or a
// listener that speaks another protocol. It is one line, naming the broker
// and the setting to change, and holds no secret.
type RefusalError struct {
	addr string
	msg  string
}

func (e *RefusalError) Error() string { return "kafka " + e.addr + ": " + e.msg }

// refusalTimeout bounds each step of the check, and refusalBudget the
// whole of it, so that a refusal is reported in seconds whatever the
// clients' own timeouts, and a broker that accepts connections but never
// answers delays the start by at most the budget.
const (
	refusalTimeout = 5 * time.Second
	refusalBudget  = 12 * time.Second
)

// Refusal connects to every bootstrap broker at once as the clients do,
// TLS and SASL included, and asks each for metadata. It returns nil as
// soon as one answers, or when none refused for a reason it can name
// within the budget or before ctx ends (the clients then report what they
// find, as they always have); otherwise the refusal of the first broker of
// the list that refused.
func (a Settings) Refusal(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, refusalBudget)
	defer cancel()
	type result struct {
		i       int
		ok      bool
		refusal *RefusalError
	}
	// Buffered: a check still under way when this returns ends within
	// its own timeouts and is dropped.
	results := make(chan result, len(a.brokers))
	for i, addr := range a.brokers {
		go func() {
			err := a.tryBroker(addr)
			r := result{i: i, ok: err == nil}
			if err != nil {
				r.refusal = a.diagnose(addr, err)
			}
			results <- r
		}()
	}
	refusals := make([]*RefusalError, len(a.brokers))
	first := func() error {
		for _, r := range refusals {
			if r != nil {
				return r
			}
		}
		return nil
	}
	for range a.brokers {
		select {
		case r := <-results:
			if r.ok {
				return nil
			}
			refusals[r.i] = r.refusal
		case <-ctx.Done():
			return first()
		}
	}
	return first()
}

// tryBroker opens one connection to addr, authenticates and asks for the
// metadata of no topic: a listener that wants SASL closes the connection
// only at the first request after the handshake.
func (a Settings) tryBroker(addr string) error {
	c := a.Config()
	c.ClientID = a.cfg.ClientID + "-check"
	c.Net.DialTimeout = min(c.Net.DialTimeout, refusalTimeout)
	c.Net.ReadTimeout = refusalTimeout
	c.Net.WriteTimeout = refusalTimeout
	b := sarama.NewBroker(addr)
	if err := b.Open(c); err != nil {
		return err
	}
	defer b.Close()
	if _, err := b.Connected(); err != nil {
		return err
	}
	_, err := b.GetMetadata(sarama.NewMetadataRequest(c.Version, []string{}))
	return err
}

// diagnose says why addr refused the connection that failed with err, or
// returns nil when err is not a refusal (the broker could not be reached,
// or did not say).
func (a Settings) diagnose(addr string, err error) *RefusalError {
	refuse := func(format string, args ...any) *RefusalError {
		return &RefusalError{addr: addr, msg: fmt.Sprintf(format, args...)}
	}
	var (
		hostErr   x509.HostnameError
		unknownCA x509.UnknownAuthorityError
		invalid   x509.CertificateInvalidError
		opErr     *net.OpError
		recordErr tls.RecordHeaderError
	)
	sasl := a.cfg.SASL
	switch {
	case errors.As(err, &hostErr):
		return refuse("TLS: the broker's certificate is for %s, not %q; set kafka.tls.server_name to one of those names, or connect by one",
			certNames(hostErr.Certificate), hostErr.Host)
	case errors.As(err, &unknownCA):
		return refuse("TLS: the broker's certificate is signed by %s, which %s does not hold; set kafka.tls.ca_file to the CA that signed it",
			issuer(unknownCA.Cert), a.trustStore())
	case errors.As(err, &invalid):
		return refuse("TLS: the broker's certificate is not valid: %s", strings.TrimPrefix(invalid.Error(), "x509: "))
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		// An alert from the broker: in TLS 1.3 one about the client's
		// certificate comes only after the handshake.
		alert := strings.TrimPrefix(opErr.Err.Error(), "tls: ")
		if a.cfg.TLS.CertFile == "" && isCertAlert(alert) {
			return refuse("TLS: the listener requires a client certificate (mutual TLS), and the broker said %q; set kafka.tls.cert_file and kafka.tls.key_file", alert)
		}
		if isCertAlert(alert) {
			return refuse("TLS: the broker refused the client certificate %s (it said %q); it must be signed by a CA the broker trusts", a.cfg.TLS.CertFile, alert)
		}
		return refuse("TLS: the broker ended the handshake: %s", alert)
	case errors.Is(err, sarama.ErrSASLAuthenticationFailed):
		return refuse("SASL %s authentication failed for user %q", sasl.Mechanism, sasl.Username)
	case errors.Is(err, sarama.ErrUnsupportedSASLMechanism):
		offers := "other mechanisms"
		if l, perr := probeListener(addr, a.tls); perr == nil && len(l.mechanisms) > 0 {
			offers = strings.Join(l.mechanisms, ", ")
		}
		return refuse("the listener does not offer SASL %s; it offers %s: set kafka.sasl.mechanism to one of them", sasl.Mechanism, offers)
	case errors.Is(err, sarama.ErrIllegalSASLState):
		return refuse("the listener takes no SASL authentication; remove kafka.sasl, or connect to the broker's SASL listener")
	case unreachable(err):
		return nil
	case errors.As(err, &recordErr) && a.tls != nil:
		return refuse("the listener takes plaintext connections, not TLS; set kafka.tls.enabled: false, or connect to the broker's TLS listener")
	}
	// The connection was closed or answered in another protocol. Ask the
	// listener what it speaks.
	l, perr := probeListener(addr, a.tls)
	switch {
	case perr == nil && l.sasl && sasl.Mechanism == "":
		return refuse("the listener requires SASL authentication (it offers %s); set kafka.sasl", strings.Join(l.mechanisms, ", "))
	case perr == nil && !l.sasl && sasl.Mechanism != "":
		return refuse("the listener takes no SASL authentication; remove kafka.sasl, or connect to the broker's SASL listener")
	case perr == nil:
		return nil
	}
	if a.tls != nil {
		if _, err := probeListener(addr, nil); err == nil {
			return refuse("the listener takes plaintext connections, not TLS; set kafka.tls.enabled: false, or connect to the broker's TLS listener")
		}
		return nil
	}
	// Only to learn whether the listener speaks TLS: nothing secret is sent.
	if tlsListener(addr) {
		return refuse("the listener expects TLS; set kafka.tls.enabled: true (and kafka.tls.ca_file if a private CA signed its certificate)")
	}
	return nil
}

// trustStore names where the client looks for the brokers' CA.
func (a Settings) trustStore() string {
	if f := a.cfg.TLS.CAFile; f != "" {
		return "kafka.tls.ca_file (" + f + ")"
	}
	return "the system's trusted CAs"
}

func isCertAlert(alert string) bool {
	return strings.Contains(alert, "certificate") || strings.Contains(alert, "unknown ca") || strings.Contains(alert, "access denied")
}

// certNames lists the names and addresses a certificate is for.
func certNames(c *x509.Certificate) string {
	if c == nil {
		return "other names"
	}
	names := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		names = append(names, ip.String())
	}
	if len(names) == 0 && c.Subject.CommonName != "" {
		names = append(names, c.Subject.CommonName)
	}
	return strings.Join(names, ", ")
}

// issuer names who signed c.
func issuer(c *x509.Certificate) string {
	if c == nil || c.Issuer.String() == "" {
		return "an unknown authority"
	}
	return fmt.Sprintf("%q", c.Issuer.String())
}

// unreachable reports whether err means no connection was made at all.
func unreachable(err error) bool {
	var dnsErr *net.DNSError
	var opErr *net.OpError
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EHOSTUNREACH) || errors.Is(err, syscall.ENETUNREACH) ||
		errors.As(err, &dnsErr) || errors.As(err, &opErr) && opErr.Op == "dial"
}

// listener is what probeListener learned of a Kafka listener.
type listener struct {
	// sasl is whether it authenticates with SASL.
	sasl bool
	// mechanisms are the SASL mechanisms it offers.
	mechanisms []string
}

// probeMechanism is a SASL mechanism no broker offers: a SASL listener
// answers a handshake for it with the mechanisms it does offer.
const probeMechanism = "EVENTROUTER-PROBE"

// probeListener sends addr a SaslHandshake request (over TLS when tlsConf
// is set) for probeMechanism and reads the answer. It fails when the
// listener does not answer in the Kafka protocol.
func probeListener(addr string, tlsConf *tls.Config) (listener, error) {
	conn, err := net.DialTimeout("tcp", addr, refusalTimeout)
	if err != nil {
		return listener{}, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(refusalTimeout))
	if tlsConf != nil {
		c := tlsConf.Clone()
		if c.ServerName == "" {
			c.ServerName, _, _ = net.SplitHostPort(addr)
		}
		tc := tls.Client(conn, c)
		if err := tc.Handshake(); err != nil {
			return listener{}, err
		}
		conn = tc
	}
	// SaslHandshake v1: api key 17, version 1, correlation id 1, client
	// id, then the mechanism.
	var req []byte
	req = binary.BigEndian.AppendUint16(req, 17)
	req = binary.BigEndian.AppendUint16(req, 1)
	req = binary.BigEndian.AppendUint32(req, 1)
	req = appendString(req, "eventrouter-probe")
	req = appendString(req, probeMechanism)
	if _, err := conn.Write(binary.BigEndian.AppendUint32(nil, uint32(len(req)))); err != nil {
		return listener{}, err
	}
	if _, err := conn.Write(req); err != nil {
		return listener{}, err
	}
	r := bufio.NewReader(conn)
	var size, correlation int32
	var code int16
	if err := readBig(r, &size, &correlation, &code); err != nil {
		return listener{}, err
	}
	if size < 10 || size > 1<<16 || correlation != 1 {
		return listener{}, errors.New("not a Kafka answer")
	}
	var count int32
	if err := readBig(r, &count); err != nil {
		return listener{}, err
	}
	var mechanisms []string
	for range min(max(count, 0), 32) {
		var n int16
		if err := readBig(r, &n); err != nil || n < 0 {
			return listener{}, errors.New("not a Kafka answer")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return listener{}, err
		}
		mechanisms = append(mechanisms, string(b))
	}
	slices.Sort(mechanisms)
	switch sarama.KError(code) {
	case sarama.ErrUnsupportedSASLMechanism, sarama.ErrNoError:
		return listener{sasl: true, mechanisms: mechanisms}, nil
	case sarama.ErrIllegalSASLState:
		return listener{}, nil
	}
	return listener{}, fmt.Errorf("SaslHandshake answered %w", sarama.KError(code))
}

// tlsListener reports whether addr completes a TLS handshake, whoever its
// certificate is from.
func tlsListener(addr string) bool {
	d := &net.Dialer{Timeout: refusalTimeout}
	host, _, _ := net.SplitHostPort(addr)
	conn, err := tls.DialWithDialer(d, "tcp", addr, &tls.Config{ServerName: host, InsecureSkipVerify: true}) //nolint:gosec // detection only
	if err != nil {
		return false
	}
	conn.Close()
	return true
}

func appendString(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...)
}

func readBig(r io.Reader, vals ...any) error {
	for _, v := range vals {
		if err := binary.Read(r, binary.BigEndian, v); err != nil {
			return err
		}
	}
	return nil
}
