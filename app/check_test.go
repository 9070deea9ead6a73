package app_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/app/cli"
)

// writeCheckConfig writes raw to a file of its own and returns the path.
func writeCheckConfig(t *testing.T, name, raw string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigCheckArguments(t *testing.T) {
	good := writeCheckConfig(t, "prod.yaml", cliConfig)
	bad := writeCheckConfig(t, "bad.yaml", cliConfig+"log:\n  level: loud\n")
	tests := []struct {
		name string
		args []string
		code int
		want string // a part of stdout, or of stderr for a usage error
	}{
		{"file as the argument", []string{good}, cli.ExitOK, good + ": ok"},
		{"bad file as the argument", []string{bad}, cli.ExitUsage, bad + ": line 10: log.level: must be"},
		{"file as --config", []string{"--config", good}, cli.ExitOK, good + ": ok"},
		{"both naming one file", []string{"--config", good, good}, cli.ExitOK, good + ": ok"},
		{"flag after the argument", []string{good, "--config", good}, cli.ExitOK, good + ": ok"},
		{"both naming different files", []string{"--config", good, bad}, cli.ExitUsage, "name different files"},
		{"two arguments", []string{good, bad}, cli.ExitUsage, "one configuration file at most, got 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runMain(t, "", nil, append([]string{"config", "check"}, tt.args...)...)
			if res.code != tt.code {
				t.Errorf("config check %v exited %d; want %d\n%s%s", tt.args, res.code, tt.code, res.stdout, res.stderr)
			}
			if !strings.Contains(res.stdout+res.stderr, tt.want) {
				t.Errorf("config check %v printed %q%q; want %q", tt.args, res.stdout, res.stderr, tt.want)
			}
		})
	}
}

// TestConfigCheckRejectsWhatRunRejects runs both commands on each config:
// run must refuse it before connecting, and check must name the same key.
func TestConfigCheckRejectsWhatRunRejects(t *testing.T) {
	ledger := "ledger:\n  path: " + filepath.Join(t.TempDir(), "ledger.db") + "\n"
	tests := []struct {
		name, yaml string
		want       string
	}{
		{"unset ops token variable", cliConfig + ledger + "ops:\n  enabled: true\n  listen: 127.0.0.1:0\n  token_env: NO_SUCH_TOKEN\n",
			"line 14: ops.token_env: environment variable NO_SUCH_TOKEN is empty"},
		{"unreadable ops token file", cliConfig + ledger + "ops:\n  enabled: true\n  listen: 127.0.0.1:0\n  token_file: " + filepath.Join(t.TempDir(), "absent") + "\n",
			"line 14: ops.token_file: open "},
		{"empty max_retries", cliConfig + ledger + "retry:\n  max_retries:\n", "line 12: retry.max_retries: is empty"},
		{"zero outage interval", cliConfig + ledger + "retry:\n  outage_interval: 0s\n", "line 12: retry.outage_interval: must be at least 10ms"},
		{"zero multiplier", cliConfig + ledger + "retry:\n  multiplier: 0\n", "line 12: retry.multiplier: must be at least 1, got 0"},
		{"shared poison topic", ledger + cliConfig + "  - handler: notification\n    name: audit\n    subscribe_topic: user-registered\n    consumer_group: audit\n    publish_topic: audit-sent\n",
			`routes[1].poison_topic: route "audit" and route "notification" (routes[0]) both use the poison topic "user-registered.poison"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeCheckConfig(t, "c.yaml", tt.yaml)
			check := runMain(t, "", nil, "config", "check", path)
			if check.code != cli.ExitUsage || !strings.Contains(check.stdout, tt.want) {
				t.Errorf("config check = %d %q; want %d and %q", check.code, check.stdout, cli.ExitUsage, tt.want)
			}
			run := runMain(t, "", nil, "run", "--config", path)
			if run.code != cli.ExitUsage {
				t.Errorf("run = %d %q; want %d, refused before connecting", run.code, run.stderr, cli.ExitUsage)
			}
		})
	}
}

func TestConfigCheckReportsEverythingAtOnce(t *testing.T) {
	raw := strings.Replace(cliConfig, "handler: notification", "handler: fax", 1) + `    dial_timeout: 10
ops:
  enabled: true
  token_env: NO_SUCH_TOKEN
log:
  level: loud
notifier:
  kind: smtp
  smtp:
    host: mail.example.com
    from: a@example.com
    username: u
    password_env: NO_SUCH_PASSWORD
`
	path := writeCheckConfig(t, "c.yaml", raw)
	res := runMain(t, "", nil, "config", "check", path)
	want := []string{
		`line 5: routes[0].handler: unknown handler "fax"; known: audit, log, notification, webhook`,
		`line 9: routes[0].dial_timeout: unknown key`,
		`line 12: ops.token_env: environment variable NO_SUCH_TOKEN is empty`,
		`line 14: log.level: must be debug, info, warn or error, got "loud"`,
		`line 21: notifier.smtp.password_env: environment variable NO_SUCH_PASSWORD is empty`,
		"5 problem(s)",
	}
	if res.code != cli.ExitUsage {
		t.Errorf("config check exited %d; want %d", res.code, cli.ExitUsage)
	}
	lines := strings.Split(strings.TrimSpace(res.stdout), "\n")
	if len(lines) != len(want) {
		t.Fatalf("config check printed %d lines:\n%s\nwant %d", len(lines), res.stdout, len(want))
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d of the output = %q; want it to contain %q", i+1, lines[i], w)
		}
	}
}

func TestConfigCheckPlainWords(t *testing.T) {
	raw := strings.Replace(cliConfig, "kafka:\n", "kafka:\n  dial_timeout: 10\n", 1) + "retry:\n  max_retries: many\n"
	path := writeCheckConfig(t, "c.yaml", raw)
	res := runMain(t, "", nil, "config", "check", path)
	for _, w := range []string{
		`line 3: kafka.dial_timeout: "10" is not a duration (such as 10s or 1m30s)`,
		`line 11: retry.max_retries: "many" is not a whole number`,
	} {
		if !strings.Contains(res.stdout, w) {
			t.Errorf("config check printed %q; want %q", res.stdout, w)
		}
	}
	if strings.Contains(res.stdout, "unmarshal") || strings.Contains(res.stdout, "!!") {
		t.Errorf("config check printed %q; want no YAML library words", res.stdout)
	}
}

// TestRouteOptionsRefused gives routes options their handlers refuse: run
// refuses them before connecting, and config check names the same key and
// line.
func TestRouteOptionsRefused(t *testing.T) {
	ledger := "ledger:\n  path: " + filepath.Join(t.TempDir(), "ledger.db") + "\n"
	hook := func(options string) string {
		return ledger + cliConfig + "  - name: hook\n    handler: webhook\n    subscribe_topic: user-registered\n    consumer_group: hook\n    poison_topic: hook.poison\n" + options
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown option", hook("    options:\n      url: http://127.0.0.1:1/\n      retries: 3\n"),
			"line 18: routes[1].options.retries: unknown key; known: url, headers, timeout, max_connections, content_type, template, secret_env, secret_file"},
		{"option of the wrong type", hook("    options:\n      url: http://127.0.0.1:1/\n      timeout: [1s]\n"),
			"line 18: routes[1].options.timeout: must be a duration"},
		{"missing option", hook("    options:\n      timeout: 1s\n"), "line 17: routes[1].options.url: is missing"},
		{"no options at all", hook(""), "routes[1].options.url: is missing"},
		{"invalid option", hook("    options:\n      url: ftp://127.0.0.1/\n"),
			`line 17: routes[1].options.url: must start with http:// or https://, got scheme "ftp"`},
		{"unset secret", hook("    options:\n      url: http://127.0.0.1:1/\n      secret_env: NO_SUCH_SECRET\n"),
			"line 18: routes[1].options.secret_env: environment variable NO_SUCH_SECRET is empty"},
		{"options for a handler without any", strings.Replace(cliConfig, "    publish_topic: notification-sent\n",
			"    publish_topic: notification-sent\n    options:\n      template: welcome\n", 1) + ledger,
			`line 10: routes[0].options: handler "notification" takes no options`},
		{"bad start_from", cliConfig + "    start_from: newest\n" + ledger,
			`line 9: routes[0].start_from: "newest" is not a starting point; want earliest or latest`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeCheckConfig(t, "c.yaml", tt.yaml)
			check := runMain(t, "", nil, "config", "check", path)
			if check.code != cli.ExitUsage || !strings.Contains(check.stdout, tt.want) {
				t.Errorf("config check = %d %q; want %d and %q", check.code, check.stdout, cli.ExitUsage, tt.want)
			}
			run := runMain(t, "", nil, "run", "--config", path)
			if run.code != cli.ExitUsage || !strings.Contains(run.stderr, strings.TrimPrefix(tt.want, "line ")) {
				t.Errorf("run = %d %q; want %d and %q, refused before connecting", run.code, run.stderr, cli.ExitUsage, tt.want)
			}
		})
	}
}
