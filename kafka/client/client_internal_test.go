package client

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/config"
)

func TestNewKafkaAccessErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	notPEM := write("not.pem", "hello\n")
	const password = "s3cret-password-value"
	tests := []struct {
		name string
		tls  config.KafkaTLS
		sasl config.SASL
		vars map[string]string
		want string
	}{
		{"missing CA file", config.KafkaTLS{Enabled: true, CAFile: filepath.Join(dir, "absent.pem")}, config.SASL{}, nil,
			"config: kafka.tls.ca_file: open " + filepath.Join(dir, "absent.pem") + ": no such file or directory"},
		{"CA file without a certificate", config.KafkaTLS{Enabled: true, CAFile: notPEM}, config.SASL{}, nil,
			"config: kafka.tls.ca_file: " + notPEM + " holds no PEM certificate"},
		{"key pair that is not one", config.KafkaTLS{Enabled: true, CertFile: notPEM, KeyFile: notPEM}, config.SASL{}, nil,
			"config: kafka.tls.cert_file: tls: failed to find any PEM data in certificate input"},
		{"empty password variable", config.KafkaTLS{}, config.SASL{Mechanism: config.SASLSCRAMSHA512, Username: "u", PasswordEnv: "P"}, nil,
			"config: kafka.sasl.password_env: environment variable P is empty"},
		{"password SCRAM cannot send", config.KafkaTLS{}, config.SASL{Mechanism: config.SASLSCRAMSHA256, Username: "u", PasswordEnv: "P"}, map[string]string{"P": "bell\a" + password},
			"config: kafka.sasl.password_env: the password holds a character SCRAM does not allow (RFC 4013), such as a control character"},
		{"empty password file", config.KafkaTLS{}, config.SASL{Mechanism: config.SASLSCRAMSHA512, Username: "u", PasswordFile: write("empty", "\n")}, nil,
			"config: kafka.sasl.password_file: " + filepath.Join(dir, "empty") + " is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := config.Defaults().Kafka
			cfg.TLS, cfg.SASL = tt.tls, tt.sasl
			_, err := New(cfg, []string{"a:1"}, func(k string) string { return tt.vars[k] })
			if err == nil || err.Error() != tt.want {
				t.Errorf("New = %v; want %q", err, tt.want)
			}
		})
	}

	// The password never prints, however the access is formatted.
	cfg := config.Defaults().Kafka
	cfg.SASL = config.SASL{Mechanism: config.SASLSCRAMSHA256, Username: "u", PasswordFile: write("pw", password+"\n")}
	a, err := New(cfg, []string{"a:1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Config().Net.SASL.Password; got != password {
		t.Errorf("sarama password = %q; want the file's, without the newline", got)
	}
	for _, verb := range []string{"%v", "%+v", "%#v", "%s"} {
		if s := fmt.Sprintf(verb, a); strings.Contains(s, password) {
			t.Errorf("Sprintf(%s, access) shows the password: %s", verb, s)
		}
	}
}

func TestProtocol(t *testing.T) {
	tests := []struct {
		tls       bool
		mechanism string
		want      string
	}{
		{false, "", "PLAINTEXT"},
		{true, "", "SSL"},
		{true, "SCRAM-SHA-512", "SASL_SSL/SCRAM-SHA-512"},
		{false, "SCRAM-SHA-256", "SASL_PLAINTEXT/SCRAM-SHA-256"},
	}
	for _, tt := range tests {
		cfg := config.Defaults().Kafka
		cfg.TLS.Enabled = tt.tls
		cfg.SASL = config.SASL{Mechanism: tt.mechanism, Username: "u", PasswordEnv: "P"}
		a, err := New(cfg, nil, func(string) string { return "p" })
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Protocol(); got != tt.want {
			t.Errorf("protocol(tls %v, %q) = %q; want %q", tt.tls, tt.mechanism, got, tt.want)
		}
	}
}
