package config_test

import (
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/config"
)

func TestKafkaSecurity(t *testing.T) {
	scram := "  sasl:\n    mechanism: SCRAM-SHA-512\n    username: router\n    password_env: P\n"
	tls := "  tls:\n    enabled: true\n    ca_file: /etc/ca.pem\n"
	insecure := "  tls:\n    enabled: true\n    insecure_skip_verify: true\n"
	tests := []struct {
		name, keys string
		vars       map[string]string
		want       string // a part of the error; "" for none
	}{
		{"SCRAM over TLS", tls + scram, nil, ""},
		{"SCRAM without TLS", scram, nil, ""},
		{"mutual TLS", tls + "    cert_file: /c.pem\n    key_file: /k.pem\n", nil, ""},
		{"PLAIN over TLS", tls + strings.Replace(scram, "SCRAM-SHA-512", "PLAIN", 1), nil, ""},
		{"PLAIN without TLS", strings.Replace(scram, "SCRAM-SHA-512", "PLAIN", 1), nil,
			"kafka.sasl.mechanism: PLAIN without kafka.tls sends the password in clear"},
		{"PLAIN without TLS, allowed", strings.Replace(scram, "SCRAM-SHA-512", "PLAIN", 1) + "    allow_cleartext_password: true\n", nil, ""},
		{"unknown mechanism", strings.Replace(scram, "SCRAM-SHA-512", "GSSAPI", 1), nil,
			`kafka.sasl.mechanism: unknown mechanism "GSSAPI"; known: SCRAM-SHA-512, SCRAM-SHA-256, PLAIN`},
		{"lower-case mechanism", strings.Replace(scram, "SCRAM-SHA-512", "scram-sha-512", 1), nil, `unknown mechanism "scram-sha-512"`},
		{"no username", strings.Replace(scram, "    username: router\n", "", 1), nil, "kafka.sasl.username: is missing; SASL SCRAM-SHA-512 needs a user"},
		{"no password", strings.Replace(scram, "    password_env: P\n", "", 1), nil, "kafka.sasl.password_env: is missing"},
		{"two passwords", scram + "    password_file: /p\n", nil, "kafka.sasl.password_file: set password_env or password_file, not both"},
		{"username without a mechanism", "  sasl:\n    username: router\n", nil, "kafka.sasl.username: is set but kafka.sasl.mechanism is empty"},
		{"CA without TLS", "  tls:\n    ca_file: /etc/ca.pem\n", nil, "kafka.tls.ca_file: is set but kafka.tls.enabled is false"},
		{"certificate without key", tls + "    cert_file: /c.pem\n", nil, "kafka.tls.key_file: is missing; kafka.tls.cert_file needs its private key"},
		{"key without certificate", tls + "    key_file: /k.pem\n", nil, "kafka.tls.cert_file: is missing"},
		{"insecure_skip_verify", insecure, nil, "kafka.tls.insecure_skip_verify: accepts any broker certificate"},
		{"insecure_skip_verify, allowed", insecure, map[string]string{config.InsecureEnv: "1"}, ""},
		{"insecure_skip_verify, not quite allowed", insecure, map[string]string{config.InsecureEnv: "true"}, "EVENTROUTER_ALLOW_INSECURE=1"},
		{"TLS on the embedded broker", tls + "  embedded:\n    enabled: true\n", nil,
			"kafka.tls.enabled: applies to kafka.brokers, but kafka.embedded.enabled is true"},
		{"SASL on the embedded broker", scram + "  embedded:\n    enabled: true\n", nil, "kafka.sasl.mechanism: applies to kafka.brokers"},
		{"unknown TLS key", "  tls:\n    enabled: true\n    ca: /etc/ca.pem\n", nil, "kafka.tls.ca: unknown key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := strings.Replace(valid, "kafka:\n", "kafka:\n"+tt.keys, 1)
			_, err := config.Parse([]byte(raw), env(tt.vars))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Parse = %v; want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Parse = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestSMTPCleartextPassword(t *testing.T) {
	smtp := valid + "notifier:\n  kind: smtp\n  smtp:\n    host: mail\n    from: a@example.com\n    username: u\n    password_env: P\n"
	tests := []struct{ name, raw, want string }{
		{"starttls", smtp, ""},
		{"none with a username", smtp + "    tls: none\n", "line 16: notifier.smtp.tls: is none with a username, which sends the password in clear"},
		{"none with a username, allowed", smtp + "    tls: none\n    allow_cleartext_password: true\n", ""},
		{"none without a username", strings.Replace(smtp, "    username: u\n    password_env: P\n", "", 1) + "    tls: none\n", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.raw), env(nil))
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Parse = %v; want no error", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Parse = %v; want an error containing %q", err, tt.want)
			}
		})
	}
}
