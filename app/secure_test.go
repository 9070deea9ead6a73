package app_test

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/app/cli"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// passwordEnv holds the SASL password in the secured-cluster tests.
const passwordEnv = "TEST_KAFKA_PASSWORD"

// secureConfig writes a configuration that reaches the real broker at addr
// with the kafka keys in kafkaKeys, and returns its path.
func secureConfig(t *testing.T, addr, kafkaKeys string, r route) string {
	t.Helper()
	raw := fmt.Sprintf(`kafka:
  brokers: [%s]
%s
ledger:
  path: %s
router:
  shutdown_timeout: 20s
retry:
  max_retries: 1
  initial_interval: 10ms
  max_interval: 50ms
log:
  level: debug
ops:
  enabled: true
  listen: 127.0.0.1:0
%s`, addr, kafkaKeys, filepath.Join(t.TempDir(), "ledger.db"), r.yaml())
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// saslKeys are the kafka keys of SASL_SSL with mechanism, as user.
func saslKeys(s kafkatest.Secure, mechanism, user string) string {
	return fmt.Sprintf(`  tls:
    enabled: true
    ca_file: %s
  sasl:
    mechanism: %s
    username: %s
    password_env: %s`, s.CAFile, mechanism, user, passwordEnv)
}

// mutualTLSKeys are the kafka keys of SSL with a client certificate.
func mutualTLSKeys(s kafkatest.Secure) string {
	return fmt.Sprintf(`  tls:
    enabled: true
    ca_file: %s
    cert_file: %s
    key_file: %s`, s.CAFile, s.CertFile, s.KeyFile)
}

// secrets are the strings no output may hold: the password and each line
// of the client's private key.
func secrets(t *testing.T, s kafkatest.Secure) []string {
	t.Helper()
	key, err := os.ReadFile(s.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	out := []string{s.Password}
	for _, line := range strings.Split(string(key), "\n") {
		if len(line) >= 32 && !strings.HasPrefix(line, "-----") {
			out = append(out, line)
		}
	}
	return out
}

func assertNoSecret(t *testing.T, what, output string, secrets []string) {
	t.Helper()
	for _, s := range secrets {
		if strings.Contains(output, s) {
			t.Errorf("%s holds a secret (%.6s…)", what, s)
		}
	}
}

var opsAddr = regexp.MustCompile(`msg="ops server listening" addr=(\S+)`)

// exitCode waits up to timeout for p to exit by itself and returns its
// exit code.
func exitCode(t *testing.T, p *process, timeout time.Duration) int {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return exit.ExitCode()
		}
		if err != nil {
			t.Fatalf("eventrouter run: %v", err)
		}
		return 0
	case <-time.After(timeout):
		t.Fatalf("eventrouter run still running after %s; want it to exit\n%s", timeout, p.logs)
		return 0
	}
}

// stopCode stops p with SIGTERM and returns its exit code.
func stopCode(t *testing.T, p *process) int {
	t.Helper()
	p.signal(syscall.SIGTERM)
	return exitCode(t, p, 60*time.Second)
}

// The seed's flow, over each way of connecting to a secured cluster: the
// User Service's event published with `eventrouter publish`, the welcome
// notification sent and notification-sent published, and a bad record
// poisoned, with no secret in any output.
func TestSecuredClusterSeedFlow(t *testing.T) {
	plain := kafkatest.Real(t)
	s := kafkatest.SecureListeners(t)
	hidden := secrets(t, s)
	vars := map[string]string{passwordEnv: s.Password}
	bin := buildBinary(t)
	tests := []struct {
		name, addr, keys, security string
	}{
		{"SASL_SSL SCRAM-SHA-512", s.SASLSSL, saslKeys(s, "SCRAM-SHA-512", s.Username), "SASL_SSL/SCRAM-SHA-512"},
		{"SASL_SSL SCRAM-SHA-256", s.SASLSSL, saslKeys(s, "SCRAM-SHA-256", s.Username), "SASL_SSL/SCRAM-SHA-256"},
		{"SASL_SSL PLAIN", s.SASLSSL, saslKeys(s, "PLAIN", s.Username), "SASL_SSL/PLAIN"},
		{"mutual TLS", s.SSL, mutualTLSKeys(s), "SSL"},
		{"SASL_PLAINTEXT PLAIN, allowed", s.SASLPlaintext, fmt.Sprintf("  sasl:\n    mechanism: PLAIN\n    username: %s\n    password_env: %s\n    allow_cleartext_password: true", s.Username, passwordEnv), "SASL_PLAINTEXT/PLAIN"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRoute()
			path := secureConfig(t, tt.addr, tt.keys, r)

			check := runMain(t, "", vars, "config", "check", "--live", path)
			if check.code != cli.ExitOK || !strings.Contains(check.stdout, "reachable (1 broker(s), "+tt.security+")") {
				t.Errorf("config check --live = %d\n%s%s\nwant 0 and the broker reachable over %s", check.code, check.stdout, check.stderr, tt.security)
			}

			d := startProcess(t, bin, path, []string{tt.addr}, passwordEnv+"="+s.Password)
			pub := runMain(t, "not json\n", vars, "publish", "--config", path, "--topic", r.in, `{"user_id": 7, "email": "seven@example.com", "name": "Seven"}`)
			if pub.code != cli.ExitOK {
				t.Fatalf("publish over %s exited %d: %s", tt.name, pub.code, pub.stderr)
			}
			bad := runMain(t, "not json\n", vars, "publish", "--config", path, "--topic", r.in, "--key-field", "")
			if bad.code != cli.ExitOK {
				t.Fatalf("publish of a bad record over %s exited %d: %s", tt.name, bad.code, bad.stderr)
			}
			waitFor(t, consumeTimeout, "notification-sent and the poisoned record", func() bool {
				return count(t, plain, r.out) == 1 && count(t, plain, r.poison) == 1
			})
			waitFor(t, consumeTimeout, "the router to run", func() bool { return strings.Contains(d.logs.String(), `msg="router running"`) })
			if !strings.Contains(d.logs.String(), "security="+tt.security) {
				t.Errorf("daemon log does not say security=%s:\n%s", tt.security, d.logs)
			}
			// The lag collector and the readiness probe are Kafka clients too.
			ops := opsAddr.FindStringSubmatch(d.logs.String())
			if ops == nil {
				t.Fatalf("no ops address in the log:\n%s", d.logs)
			}
			lag := `eventrouter_consumer_lag_messages{partition="0",route="welcome",topic="` + r.in + `"} 0`
			waitFor(t, consumeTimeout, "the lag metric over "+tt.security, func() bool {
				_, body := get(t, "http://"+ops[1]+"/metrics", false)
				return strings.Contains(body, lag)
			})
			if code, ready := get(t, "http://"+ops[1]+"/readyz", false); code != http.StatusOK || !strings.Contains(ready, `"kafka":"ok"`) {
				t.Errorf("/readyz = %d %s; want 200 with kafka ok", code, ready)
			}
			if code := stopCode(t, d); code != cli.ExitOK {
				t.Errorf("eventrouter run exited %d after SIGTERM; want 0\n%s", code, d.logs)
			}
			assertNoSecret(t, "the daemon's log (debug level)", d.logs.String(), hidden)

			// Replay and rewind, with the daemon stopped.
			replay := runMain(t, "", vars, "replay", "--config", path, "--dry-run", r.poison)
			if replay.code != cli.ExitOK || !strings.Contains(replay.stdout, "would replay 1") {
				t.Errorf("replay --dry-run over %s = %d %q %q; want 0 and one record", tt.security, replay.code, replay.stdout, replay.stderr)
			}
			waitFor(t, consumeTimeout, "the group to be empty", func() bool { return groupEmpty(t, plain, r.group) })
			rewind := runMain(t, "", vars, "rewind", "welcome", "--config", path, "--to-earliest", "--yes")
			if rewind.code != cli.ExitOK {
				t.Errorf("rewind over %s = %d %q %q; want 0", tt.security, rewind.code, rewind.stdout, rewind.stderr)
			}
			if got := committed(t, plain, r.group, r.in, 0); got != 0 {
				t.Errorf("after the rewind the group is at %d; want 0", got)
			}
			assertNoSecret(t, "replay and rewind", replay.stdout+replay.stderr+rewind.stdout+rewind.stderr, hidden)
			assertNoSecret(t, "config check --live", check.stdout+check.stderr, hidden)
			assertNoSecret(t, "publish", pub.stdout+pub.stderr+bad.stdout+bad.stderr, hidden)
		})
	}
}

// Each way a secured cluster refuses the daemon ends `eventrouter run` in
// seconds with one line saying what is wrong, and `config check --live`
// says the same; no output holds a secret.
func TestSecuredClusterRefusals(t *testing.T) {
	plain := kafkatest.Real(t)
	s := kafkatest.SecureListeners(t)
	hidden := append(secrets(t, s), "not-the-password-0123456789")
	right := map[string]string{passwordEnv: s.Password}
	wrong := map[string]string{passwordEnv: "not-the-password-0123456789"}
	bin := buildBinary(t)
	tlsOnly := func(ca, extra string) string {
		return fmt.Sprintf("  tls:\n    enabled: true\n    ca_file: %s%s", ca, extra)
	}
	tests := []struct {
		name, addr, keys string
		vars             map[string]string
		want             string
	}{
		{"wrong password", s.SASLSSL, saslKeys(s, "SCRAM-SHA-512", s.Username), wrong,
			fmt.Sprintf(`kafka %s: SASL SCRAM-SHA-512 authentication failed for user %q`, s.SASLSSL, s.Username)},
		{"unknown user", s.SASLSSL, saslKeys(s, "SCRAM-SHA-256", "nobody"), right,
			fmt.Sprintf(`kafka %s: SASL SCRAM-SHA-256 authentication failed for user "nobody"`, s.SASLSSL)},
		{"wrong CA", s.SASLSSL, strings.Replace(saslKeys(s, "SCRAM-SHA-512", s.Username), s.CAFile, s.OtherCAFile, 1), right,
			fmt.Sprintf(`kafka %s: TLS: the broker's certificate is signed by "CN=eventrouter test CA,O=eventrouter-test", which kafka.tls.ca_file (%s) does not hold`, s.SASLSSL, s.OtherCAFile)},
		{"wrong host name", s.SASLSSL, strings.Replace(saslKeys(s, "SCRAM-SHA-512", s.Username), "  sasl:", "    server_name: kafka.example.com\n  sasl:", 1), right,
			fmt.Sprintf(`kafka %s: TLS: the broker's certificate is for localhost, 127.0.0.1, not "kafka.example.com"`, s.SASLSSL)},
		{"plaintext against TLS", s.SSL, "", right,
			fmt.Sprintf(`kafka %s: the listener expects TLS; set kafka.tls.enabled: true`, s.SSL)},
		{"TLS against plaintext", plain[0], tlsOnly(s.CAFile, ""), right,
			fmt.Sprintf(`kafka %s: the listener takes plaintext connections, not TLS`, plain[0])},
		{"no SASL against SASL_SSL", s.SASLSSL, tlsOnly(s.CAFile, ""), right,
			fmt.Sprintf(`kafka %s: the listener requires SASL authentication (it offers PLAIN, SCRAM-SHA-256, SCRAM-SHA-512); set kafka.sasl`, s.SASLSSL)},
		{"no client certificate", s.SSL, tlsOnly(s.CAFile, ""), right,
			fmt.Sprintf(`kafka %s: TLS: the listener requires a client certificate (mutual TLS)`, s.SSL)},
		{"mechanism the listener does not offer", s.SASLPlaintext, strings.Replace(saslKeys(s, "SCRAM-SHA-512", s.Username), tlsOnly(s.CAFile, "")+"\n", "", 1), right,
			fmt.Sprintf(`kafka %s: the listener does not offer SASL SCRAM-SHA-512; it offers PLAIN: set kafka.sasl.mechanism to one of them`, s.SASLPlaintext)},
		{"SASL against a listener without it", s.SSL, mutualTLSKeys(s) + fmt.Sprintf("\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: %s\n    password_env: %s", s.Username, passwordEnv), right,
			fmt.Sprintf(`kafka %s: the listener takes no SASL authentication`, s.SSL)},
	}
	// The line run logs is its last, the err of "eventrouter stopped".
	logged := regexp.MustCompile(`msg="eventrouter stopped" err="((?:[^"\\]|\\.)*)"`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := secureConfig(t, tt.addr, tt.keys, newRoute())
			start := time.Now()
			d := startProcess(t, bin, path, []string{tt.addr}, passwordEnv+"="+tt.vars[passwordEnv])
			code := exitCode(t, d, 15*time.Second)
			took := time.Since(start)
			out := d.logs.String()
			if code == cli.ExitOK {
				t.Errorf("eventrouter run exited 0; want non-zero\n%s", out)
			}
			m := logged.FindStringSubmatch(out)
			if m == nil || !strings.HasPrefix(strings.ReplaceAll(m[1], `\"`, `"`), tt.want) {
				t.Errorf("eventrouter run's last error = %q; want it to start %q\nlog:\n%s", m, tt.want, out)
			}
			t.Logf("exited %d in %s: %s", code, took.Round(time.Millisecond), strings.ReplaceAll(m[1], `\"`, `"`))

			check := runMain(t, "", tt.vars, "config", "check", "--live", path)
			lines := strings.Split(strings.TrimSpace(check.stdout), "\n")
			if check.code != cli.ExitError || len(lines) != 2 || !strings.HasPrefix(lines[1], tt.want) {
				t.Errorf("config check --live = %d\n%s\nwant %d and a second line starting %q", check.code, check.stdout, cli.ExitError, tt.want)
			}
			assertNoSecret(t, "the daemon's log (debug level)", out, hidden)
			assertNoSecret(t, "config check --live", check.stdout+check.stderr, hidden)
		})
	}
}

// kafka.tls.insecure_skip_verify is refused unless the environment allows
// it; allowed, it connects whoever signed the certificate, and warns.
func TestInsecureSkipVerify(t *testing.T) {
	kafkatest.Real(t)
	s := kafkatest.SecureListeners(t)
	keys := fmt.Sprintf("  tls:\n    enabled: true\n    insecure_skip_verify: true\n  sasl:\n    mechanism: SCRAM-SHA-512\n    username: %s\n    password_env: %s", s.Username, passwordEnv)
	path := secureConfig(t, s.SASLSSL, keys, newRoute())

	refused := runMain(t, "", map[string]string{passwordEnv: s.Password}, "run", "--config", path)
	want := "kafka.tls.insecure_skip_verify: accepts any broker certificate"
	if refused.code != cli.ExitUsage || !strings.Contains(refused.stderr, want) {
		t.Errorf("run with insecure_skip_verify = %d %q; want %d and %q", refused.code, refused.stderr, cli.ExitUsage, want)
	}

	d := startProcess(t, buildBinary(t), path, []string{s.SASLSSL}, passwordEnv+"="+s.Password, "EVENTROUTER_ALLOW_INSECURE=1")
	waitFor(t, consumeTimeout, "the router to run", func() bool { return strings.Contains(d.logs.String(), `msg="router running"`) })
	if warn := "level=WARN msg=\"kafka.tls.insecure_skip_verify is on"; !strings.Contains(d.logs.String(), warn) {
		t.Errorf("daemon log lacks %q:\n%s", warn, d.logs)
	}
	if code := stopCode(t, d); code != cli.ExitOK {
		t.Errorf("eventrouter run exited %d; want 0\n%s", code, d.logs)
	}
}

// The tool commands say the same one line as run when the brokers refuse.
func TestCommandsRefused(t *testing.T) {
	kafkatest.Real(t)
	s := kafkatest.SecureListeners(t)
	r := newRoute()
	path := secureConfig(t, s.SASLSSL, saslKeys(s, "SCRAM-SHA-512", s.Username), r)
	wrong := map[string]string{passwordEnv: "not-the-password-0123456789"}
	want := fmt.Sprintf(`kafka %s: SASL SCRAM-SHA-512 authentication failed for user %q`, s.SASLSSL, s.Username)
	for _, args := range [][]string{
		{"publish", "--config", path, "--topic", r.in, `{"user_id": 1, "email": "a@example.com"}`},
		{"replay", "--config", path, r.poison},
		{"rewind", "welcome", "--config", path, "--to-earliest", "--yes"},
	} {
		res := runMain(t, "", wrong, args...)
		if res.code != cli.ExitError || !strings.Contains(res.stderr, want) || strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 {
			t.Errorf("%s with a wrong password = %d %q; want %d and one line with %q", args[0], res.code, res.stderr, cli.ExitError, want)
		}
		assertNoSecret(t, args[0], res.stdout+res.stderr, []string{s.Password, "not-the-password-0123456789"})
	}
}
