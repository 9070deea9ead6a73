package app_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/app/cli"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

type cliResult struct {
	code           int
	stdout, stderr string
}

func runMain(t *testing.T, stdin string, vars map[string]string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	code := cli.Main(ctx, args, cli.Env{
		Stdin: strings.NewReader(stdin), Stdout: &stdout, Stderr: &stderr,
		Getenv: func(k string) string { return vars[k] },
	})
	return cliResult{code: code, stdout: stdout.String(), stderr: stderr.String()}
}

const cliConfig = `
kafka:
  brokers: [127.0.0.1:1]
routes:
  - handler: notification
    subscribe_topic: user-registered
    consumer_group: notification-service
    publish_topic: notification-sent
`

func TestRunRejectsBadConfigBeforeConnecting(t *testing.T) {
	tests := []struct {
		name, yaml, want string
	}{
		{"unknown key", cliConfig + "extra: true\n", "line 9: extra: unknown key"},
		{"unknown handler", strings.Replace(cliConfig, "handler: notification", "handler: sms", 1), `routes[0].handler: unknown handler "sms"; known: audit, log, notification, webhook`},
		{"bad duration", cliConfig + "retry:\n  max_interval: soon\n", `retry.max_interval: "soon" is not a duration`},
		{"missing topic", strings.Replace(cliConfig, "subscribe_topic: user-registered", "", 1), "routes[0].subscribe_topic: is missing"},
		{"publishing handler without publish topic", strings.Replace(cliConfig, "publish_topic: notification-sent", "", 1), `routes[0].publish_topic: is missing; handler "notification" publishes events`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "eventrouter.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			res := runMain(t, "", nil, "run", "--config", path)
			if res.code != cli.ExitUsage {
				t.Errorf("run with %s exited %d; want %d", tt.name, res.code, cli.ExitUsage)
			}
			if strings.Count(strings.TrimSpace(res.stderr), "\n") != 0 || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("run with %s printed %q; want one line containing %q", tt.name, res.stderr, tt.want)
			}
		})
	}
}

func TestRunMissingConfigFile(t *testing.T) {
	res := runMain(t, "", nil, "run", "--config", filepath.Join(t.TempDir(), "absent.yaml"))
	if res.code != cli.ExitUsage || !strings.Contains(res.stderr, "absent.yaml") {
		t.Errorf("run with a missing file = %d %q; want %d and the file named", res.code, res.stderr, cli.ExitUsage)
	}
}

func TestRunDeadBrokerFailsClearly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	if err := os.WriteFile(path, []byte(strings.Replace(cliConfig, "brokers: [127.0.0.1:1]", "brokers: [127.0.0.1:1]\n  dial_timeout: 1s", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	res := runMain(t, "", nil, "run", "--config", path)
	if res.code != cli.ExitError || !strings.Contains(res.stderr, "connect to kafka at 127.0.0.1:1") {
		t.Errorf("run against a dead broker = %d %q; want %d and the broker named", res.code, res.stderr, cli.ExitError)
	}
}

func TestUnknownCommand(t *testing.T) {
	if res := runMain(t, "", nil, "serve"); res.code != cli.ExitUsage || !strings.Contains(res.stderr, `unknown command "serve"`) {
		t.Errorf("Main(serve) = %d %q; want %d and the command named", res.code, res.stderr, cli.ExitUsage)
	}
}

var publishLine = regexp.MustCompile(`^topic=(\S+) partition=(\d+) offset=(\d+) key=(\S*)$`)

func TestPublishCommand(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		topic := kafkatest.Topic("user-registered")
		brokers := strings.Join(k.Brokers, ",")

		one := runMain(t, "", nil, "publish", "--brokers", brokers, "--topic", topic, `{"user_id": 123, "email": "test@example.com"}`)
		if one.code != 0 {
			t.Fatalf("publish EVENT exited %d: %s", one.code, one.stderr)
		}
		if m := publishLine.FindStringSubmatch(strings.TrimSpace(one.stdout)); m == nil || m[1] != topic || m[3] != "0" || m[4] != "123" {
			t.Errorf("publish EVENT printed %q; want topic=%s partition=0 offset=0 key=123", one.stdout, topic)
		}

		stdin := `{"user_id": "a", "email": "a@example.com"}

{"user_id": 2, "email": "b@example.com"}
not json
`
		many := runMain(t, stdin, map[string]string{"EVENTROUTER_KAFKA_BROKERS": brokers}, "publish", "--topic", topic)
		if many.code != 0 {
			t.Fatalf("publish from stdin exited %d: %s", many.code, many.stderr)
		}
		lines := strings.Split(strings.TrimSpace(many.stdout), "\n")
		if len(lines) != 3 {
			t.Fatalf("publish from stdin printed %q; want 3 lines, one per event", many.stdout)
		}
		got := kafkatest.Consume(t, k.Brokers, topic, 4, consumeTimeout)
		if len(got) != 4 {
			t.Fatalf("topic holds %d records; want 4", len(got))
		}
		wantKeys := []string{"123", "a", "2", ""}
		for i, rec := range got {
			if string(rec.Key) != wantKeys[i] {
				t.Errorf("record %d key = %q; want %q", i, rec.Key, wantKeys[i])
			}
			if len(rec.Headers) != 0 {
				t.Errorf("record %d has headers %v; want none, as a plain producer sends", i, rec.Headers)
			}
		}
	})
}

func TestPublishDeadBroker(t *testing.T) {
	res := runMain(t, "", nil, "publish", "--brokers", "127.0.0.1:1", `{"user_id": 1, "email": "a@b.co"}`)
	if res.code != cli.ExitError || !strings.Contains(res.stderr, "127.0.0.1:1") {
		t.Errorf("publish to a dead broker = %d %q; want %d and the broker named", res.code, res.stderr, cli.ExitError)
	}
}

// Every command explains itself: its description, flags, the environment
// variables it reads and its exit codes, on stdout through help.
func TestEveryCommandHasHelp(t *testing.T) {
	for _, cmd := range []string{"run", "publish", "replay", "rewind", "config", "ledger"} {
		t.Run(cmd, func(t *testing.T) {
			res := runMain(t, "", nil, "help", cmd)
			for _, want := range []string{"Usage: eventrouter " + cmd, "Environment:", "Exit codes:", "-"} {
				if res.code != cli.ExitOK || !strings.Contains(res.stdout, want) {
					t.Errorf("help %s = %d %q; want 0 and %q on stdout", cmd, res.code, res.stdout, want)
				}
			}
			if flags := runMain(t, "", nil, cmd, "--help"); cmd != "config" && cmd != "ledger" && flags.stderr != res.stdout {
				t.Errorf("%s --help printed %q; want what help %s prints", cmd, flags.stderr, cmd)
			}
		})
	}
	if res := runMain(t, "", nil, "version"); res.code != cli.ExitOK || !strings.Contains(res.stdout, runtime.Version()) {
		t.Errorf("version = %d %q; want 0 and the Go version", res.code, res.stdout)
	}
	if res := runMain(t, "", nil, "help", "nope"); res.code != cli.ExitUsage || !strings.Contains(res.stderr, `unknown command "nope"`) {
		t.Errorf("help nope = %d %q; want %d and the unknown command named", res.code, res.stderr, cli.ExitUsage)
	}
}
