package kafkatest

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// SecureEnv names the variable holding the path of the file that
// `scripts/kafka.sh secure` writes: the real broker's secured listeners and
// the credentials to use them.
const SecureEnv = "EVENTROUTER_TEST_KAFKA_SECURE"

// Secure describes the real broker's secured listeners.
type Secure struct {
	// SASLSSL is the SASL_SSL listener (SCRAM-SHA-256, SCRAM-SHA-512 and
	// PLAIN).
	SASLSSL string
	// SSL is the listener that requires client certificates.
	SSL string
	// SASLPlaintext is the SASL_PLAINTEXT listener, with PLAIN only.
	SASLPlaintext string
	// CAFile is the CA that signed the broker's and the client's
	// certificates; OtherCAFile signed neither.
	CAFile, OtherCAFile string
	// CertFile and KeyFile are a client certificate the SSL listener takes.
	CertFile, KeyFile string
	// Username and Password are a SASL user of every mechanism.
	Username, Password string
}

// SecureListeners returns the real broker's secured listeners, or skips
// the test when none are configured (fails it under CI=true).
func SecureListeners(t *testing.T) Secure {
	t.Helper()
	path := need(t, SecureEnv, "CI runs the secured-cluster tests on the real broker's secured listeners (make test sets it)",
		"run make test, or scripts/kafka.sh secure >FILE and set it to FILE")
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", SecureEnv, err)
	}
	defer f.Close()
	vals := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), "="); ok {
			vals[k] = v
		}
	}
	s := Secure{
		SASLSSL: vals["SASL_SSL"], SSL: vals["SSL"], SASLPlaintext: vals["SASL_PLAINTEXT"], CAFile: vals["CA_FILE"], OtherCAFile: vals["OTHER_CA_FILE"],
		CertFile: vals["CLIENT_CERT_FILE"], KeyFile: vals["CLIENT_KEY_FILE"], Username: vals["USERNAME"], Password: vals["PASSWORD"],
	}
	if s.SASLSSL == "" || s.SSL == "" || s.SASLPlaintext == "" || s.CAFile == "" || s.Password == "" {
		t.Fatalf("%s (%s) lacks SASL_SSL, SSL, SASL_PLAINTEXT, CA_FILE or PASSWORD", SecureEnv, path)
	}
	return s
}
