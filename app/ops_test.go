package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/app/cli"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

const opsToken = "s3cret-token"

const opsYAML = `ops:
  enabled: true
  listen: 127.0.0.1:0
  token_env: TEST_OPS_TOKEN
`

func opsOptions(o app.Options) app.Options {
	o.Getenv = func(k string) string {
		if k == "TEST_OPS_TOKEN" {
			return opsToken
		}
		return ""
	}
	return o
}

// startOpsDaemon starts a daemon with the ops server and returns its base
// URL.
func startOpsDaemon(t *testing.T, brokers []string, r route, o app.Options) (running, string) {
	t.Helper()
	d := startDaemon(t, testConfig(t, brokers, r, opsYAML), opsOptions(o))
	return d, "http://" + d.OpsAddr()
}

func get(t *testing.T, url string, token bool) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token {
		req.Header.Set("Authorization", "Bearer "+opsToken)
	}
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// metric returns the value of the sample whose line starts with series.
func metric(body, series string) (float64, bool) {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimPrefix(line, series)), 64)
			return v, err == nil
		}
	}
	return 0, false
}

func TestOpsEndpoints(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		entered, release := make(chan struct{}), make(chan struct{})
		notifier := &recorder{before: func(call int) error {
			if call == 2 {
				close(entered)
				<-release
			}
			return nil
		}}
		d, base := startOpsDaemon(t, k.Brokers, r, app.Options{Notifier: notifier})

		if code, _ := get(t, base+"/healthz", false); code != http.StatusOK {
			t.Errorf("GET /healthz = %d; want 200 without a token", code)
		}
		for _, path := range []string{"/readyz", "/metrics"} {
			if code, _ := get(t, base+path, false); code != http.StatusUnauthorized {
				t.Errorf("GET %s without the token = %d; want 401", path, code)
			}
		}
		waitFor(t, consumeTimeout, "readiness", func() bool {
			code, _ := get(t, base+"/readyz", true)
			return code == http.StatusOK
		})
		_, body := get(t, base+"/readyz", true)
		var rd readyAnswer
		if err := json.Unmarshal([]byte(body), &rd); err != nil || !rd.Ready || rd.Checks["kafka"] != "ok" || rd.Checks["route welcome"] != "ok" {
			t.Errorf("GET /readyz = %s; want ready with kafka and route welcome ok", body)
		}
		// Nothing was published yet: the topics the route writes to do
		// not exist, which is no reason not to be ready. (The input topic
		// may not exist either, until the consumer's metadata request has
		// had the broker create it.)
		if got := rd.Degraded["kafka"]; !strings.HasPrefix(got, "topics not created yet: ") ||
			!strings.Contains(got, r.poison) || !strings.Contains(got, r.out) {
			t.Errorf("GET /readyz degraded kafka = %q; want the topics not created yet, %s and %s among them", got, r.poison, r.out)
		}

		kafkatest.Produce(t, k.Brokers, r.in, event(1, "a@example.com"), kafkatest.Record{Value: []byte("junk")})
		waitFor(t, consumeTimeout, "the metrics", func() bool {
			_, body := get(t, base+"/metrics", true)
			h, _ := metric(body, `eventrouter_messages_handled_total{route="welcome"}`)
			p, _ := metric(body, `eventrouter_messages_poisoned_total{route="welcome"}`)
			// Watermill's metric is taken outside the attempt, a moment later.
			w, _ := metric(body, `eventrouter_watermill_handler_execution_time_seconds_count{handler_name="welcome",success="true"}`)
			return h == 1 && p == 1 && w == 1
		})
		_, body = get(t, base+"/metrics", true)
		for _, series := range []string{
			`eventrouter_notifications_sent_total{channel="test",route="welcome",template="welcome"}`,
			`eventrouter_handler_duration_seconds_count{route="welcome"}`,
			`eventrouter_consumer_lag_messages{partition="0",route="welcome",topic="` + r.in + `"}`,
			`eventrouter_route_paused{route="welcome"}`,
			`eventrouter_notifications_skipped_total{route="welcome",template="welcome"}`,
		} {
			if _, ok := metric(body, series); !ok {
				t.Errorf("/metrics lacks %s", series)
			}
		}
		// The poisoned record is not a success.
		for success, want := range map[string]float64{"true": 1, "false": 1} {
			series := `eventrouter_watermill_handler_execution_time_seconds_count{handler_name="welcome",success="` + success + `"}`
			if got, _ := metric(body, series); got != want {
				t.Errorf("%s = %v; want %v", series, got, want)
			}
		}
		// Label values name routes and topics, never Go types.
		if m := regexp.MustCompile(`="[a-z]+\.[A-Z][A-Za-z]+"`).FindString(body); m != "" || strings.Contains(body, `="*`) {
			t.Errorf("/metrics has a label naming a Go type: %s", m)
		}

		// A third event blocks in the handler; readiness turns 503 as soon
		// as the stop begins, while that event is still being handled.
		kafkatest.Produce(t, k.Brokers, r.in, event(2, "b@example.com"))
		<-entered
		stopped := make(chan error, 1)
		go func() { stopped <- d.stop() }()
		waitFor(t, 10*time.Second, "readiness to turn 503 on shutdown", func() bool {
			code, body := get(t, base+"/readyz", true)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "shutting down")
		})
		close(release)
		if err := <-stopped; err != nil {
			t.Fatalf("stop: %v", err)
		}
		if strings.Contains(d.logs.String(), opsToken) {
			t.Error("the ops token appears in the log")
		}
	})
}

func TestReadinessFollowsTheBroker(t *testing.T) {
	check := func(t *testing.T, brokers []string, stopBroker, startBroker func()) {
		_, base := startOpsDaemon(t, brokers, newRoute(), app.Options{Notifier: &recorder{}})
		waitFor(t, consumeTimeout, "ready", func() bool { c, _ := get(t, base+"/readyz", true); return c == http.StatusOK })
		stopBroker()
		waitFor(t, consumeTimeout, "not ready while the broker is down", func() bool {
			c, body := get(t, base+"/readyz", true)
			return c == http.StatusServiceUnavailable && strings.Contains(body, "broker does not answer")
		})
		startBroker()
		waitFor(t, 2*time.Minute, "ready again", func() bool { c, _ := get(t, base+"/readyz", true); return c == http.StatusOK })
	}
	t.Run("embedded", func(t *testing.T) {
		b := kafkatest.NewRestartable(t)
		check(t, []string{b.Addr()}, b.Stop, b.Start)
	})
	t.Run("kafka", func(t *testing.T) {
		brokers, stop, start := realBrokerControl(t)
		check(t, brokers, stop, start)
	})
}

func TestLagMetricFollowsTheHandler(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		release := make(chan struct{})
		notifier := &recorder{before: func(int) error { <-release; return nil }}
		_, base := startOpsDaemon(t, k.Brokers, r, app.Options{Notifier: notifier})
		for i := range 10 {
			kafkatest.Produce(t, k.Brokers, r.in, event(i, userEmail(i)))
		}
		series := `eventrouter_consumer_lag_messages{partition="0",route="welcome",topic="` + r.in + `"}`
		lag := func() float64 {
			_, body := get(t, base+"/metrics", true)
			v, _ := metric(body, series)
			return v
		}
		waitFor(t, consumeTimeout, "lag 10 while the handler is blocked", func() bool { return lag() == 10 })
		close(release)
		waitFor(t, consumeTimeout, "lag 0 after the handler resumed", func() bool { return lag() == 0 })
	})
}

func TestTraceContextReachesNotificationSent(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		spans := tracetest.NewInMemoryExporter()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(spans))
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: &recorder{}, TracerProvider: tp})
		const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
		rec := event(1, "a@example.com")
		rec.Headers = map[string]string{"traceparent": "00-" + traceID + "-00f067aa0ba902b7-01"}
		kafkatest.Produce(t, k.Brokers, r.in, rec)

		got := kafkatest.Consume(t, k.Brokers, r.out, 1, consumeTimeout)
		if len(got) != 1 {
			t.Fatalf("got %d notification-sent; want 1", len(got))
		}
		parent, _ := kafkatest.Header(got[0], "traceparent")
		if !regexp.MustCompile(`^00-` + traceID + `-[0-9a-f]{16}-01$`).MatchString(parent) {
			t.Errorf("notification-sent traceparent = %q; want the producer's trace %s", parent, traceID)
		}
		// notification-sent is published inside the chain, so the handle and
		// process spans end just after a consumer can read it.
		wanted := []string{r.in + " process", "welcome handle", r.out + " publish"}
		names := map[string]bool{}
		waitFor(t, consumeTimeout, "the trace's spans", func() bool {
			names = map[string]bool{}
			for _, s := range spans.GetSpans() {
				if s.SpanContext.TraceID().String() == traceID {
					names[s.Name] = true
				}
			}
			for _, want := range wanted {
				if !names[want] {
					return false
				}
			}
			return true
		})
	})
}

func TestLogLinesCarryTheMessage(t *testing.T) {
	k := kafkatest.Target{Brokers: []string{kafkatest.Embedded(t)}}
	r := newRoute()
	d, _ := startOpsDaemon(t, k.Brokers, r, app.Options{})
	kafkatest.Produce(t, k.Brokers, r.in, event(1, "a@example.com"), kafkatest.Record{Value: []byte("junk")})
	waitFor(t, consumeTimeout, "the log lines", func() bool {
		return strings.Contains(d.logs.String(), "message poisoned")
	})
	for _, msg := range []string{"notification sent", "message poisoned", "handler attempt failed"} {
		line := ""
		for _, l := range strings.Split(d.logs.String(), "\n") {
			if strings.Contains(l, `msg="`+msg+`"`) {
				line = l
				break
			}
		}
		for _, field := range []string{"route=welcome", "topic=" + r.in, "partition=0", "offset=", "correlation_id=" + r.in + "/0/"} {
			if !strings.Contains(line, field) {
				t.Errorf("log line %q; want it to carry %s", line, field)
			}
		}
	}
}

func TestConfigCheck(t *testing.T) {
	tests := []struct {
		name, yaml string
		code       int
		want       []string
	}{
		{"valid", cliConfig, 0, []string{"ok (1 route(s), brokers 127.0.0.1:1)"}},
		{"several problems", strings.Replace(cliConfig, "consumer_group: notification-service", "", 1) + "retry:\n  multiplier: 0.5\nlog:\n  level: loud\n", 2,
			[]string{"line 5: routes[0].consumer_group: is missing", "line 10: retry.multiplier: must be at least 1", "line 12: log.level: must be", "3 problem(s)"}},
		{"unknown key", cliConfig + "routez: []\n", 2, []string{"line 9: routez: unknown key"}},
		{"unknown handler", strings.Replace(cliConfig, "handler: notification", "handler: fax", 1), 2, []string{`line 5: routes[0].handler: unknown handler "fax"; known: audit, log, notification, webhook`}},
		{"missing smtp host", cliConfig + "notifier:\n  kind: smtp\n  smtp:\n    from: a@b.co\n", 2, []string{"line 11: notifier.smtp.host: is missing"}},
		{"bad smtp password env", cliConfig + "notifier:\n  kind: smtp\n  smtp:\n    host: h\n    from: a@b.co\n    username: u\n    password_env: NOPE\n", 2, []string{"line 15: notifier.smtp.password_env: environment variable NOPE is empty"}},
		{"bad tracing", cliConfig + "tracing:\n  exporter: zipkin\n", 2, []string{"line 10: tracing.exporter: must be none or otlp"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			res := runMain(t, "", nil, "config", "check", "--config", path)
			if res.code != tt.code {
				t.Errorf("config check exited %d; want %d\n%s%s", res.code, tt.code, res.stdout, res.stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(res.stdout, w) {
					t.Errorf("config check printed %q; want a line containing %q", res.stdout, w)
				}
			}
		})
	}
}

func TestConfigCheckLive(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		kafkatest.CreateTopic(t, k.Brokers, r.in, 3)
		path := filepath.Join(t.TempDir(), "c.yaml")
		raw := fmt.Sprintf("kafka:\n  brokers: [%s]\nroutes:\n  - handler: notification\n    subscribe_topic: %s\n    consumer_group: g\n    publish_topic: %s\n",
			strings.Join(k.Brokers, ","), r.in, r.out)
		if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
			t.Fatal(err)
		}
		res := runMain(t, "", nil, "config", "check", "--live", "--config", path)
		want := []string{"reachable", "subscribe " + r.in + ": 3 partition(s)", "publish " + r.out + ": missing;"}
		for _, w := range want {
			if res.code != 0 || !strings.Contains(res.stdout, w) {
				t.Errorf("config check --live = %d %q; want 0 and %q", res.code, res.stdout, w)
			}
		}

		dead := strings.Replace(raw, strings.Join(k.Brokers, ","), "127.0.0.1:1", 1)
		if err := os.WriteFile(path, []byte(dead), 0o600); err != nil {
			t.Fatal(err)
		}
		if res := runMain(t, "", nil, "config", "check", "--live", "--config", path); res.code != cli.ExitError || !strings.Contains(res.stdout, "unreachable") {
			t.Errorf("config check --live on a dead broker = %d %q; want %d and unreachable", res.code, res.stdout, cli.ExitError)
		}
	})
}

// config check --live reports the shared ledger's database: reachable and
// its schema state, or unreachable; the DSN, which holds the password, is
// never printed.
func TestConfigCheckLiveLedger(t *testing.T) {
	dsn := pgtest.DSN(t)
	raw := "kafka:\n  embedded:\n    enabled: true\nledger:\n  kind: postgres\n  postgres:\n    dsn_env: LEDGER_DSN\n" +
		"routes:\n  - handler: notification\n    subscribe_topic: in\n    consumer_group: g\n    publish_topic: out\n"
	path := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	dead := "postgres://eventrouter:hunter2@127.0.0.1:1/eventrouter?sslmode=disable&connect_timeout=2"
	tests := []struct {
		name string
		dsn  string
		code int
		want string
	}{
		{"no schema yet", dsn, cli.ExitOK, "ledger postgres: reachable; no schema yet"},
		{"unreachable", dead, cli.ExitError, "ledger postgres: unreachable"},
		{"not a DSN", "postgres://a b:c", cli.ExitUsage, "ledger.postgres.dsn: does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runMain(t, "", map[string]string{"LEDGER_DSN": tt.dsn}, "config", "check", "--live", "--config", path)
			if res.code != tt.code || !strings.Contains(res.stdout, tt.want) {
				t.Errorf("config check --live = %d %q; want %d and %q", res.code, res.stdout, tt.code, tt.want)
			}
			if strings.Contains(res.stdout+res.stderr, "hunter2") || strings.Contains(res.stdout+res.stderr, "eventrouter@") {
				t.Errorf("config check printed the DSN's password: %q", res.stdout+res.stderr)
			}
		})
	}
	// Once a daemon started, the schema is current.
	l, err := ledger.OpenPostgres(context.Background(), ledger.PostgresConfig{DSN: dsn})
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	res := runMain(t, "", map[string]string{"LEDGER_DSN": dsn}, "config", "check", "--live", "--config", path)
	if want := "schema version 1, current"; res.code != cli.ExitOK || !strings.Contains(res.stdout, want) {
		t.Errorf("config check --live = %d %q; want 0 and %q", res.code, res.stdout, want)
	}
}
