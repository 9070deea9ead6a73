package config_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/config"
)

const valid = `
kafka:
  brokers: [broker-1:9092]
routes:
  - handler: notification
    subscribe_topic: user-registered
    consumer_group: notification-service
    publish_topic: notification-sent
`

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func TestParseValid(t *testing.T) {
	cfg, err := config.Parse([]byte(valid), env(nil))
	if err != nil {
		t.Fatalf("Parse(valid) = %v; want no error", err)
	}
	r := cfg.Routes[0]
	if r.Name != "notification" {
		t.Errorf("route name = %q; want the handler name %q", r.Name, "notification")
	}
	if r.PoisonTopic != "user-registered.poison" {
		t.Errorf("poison topic = %q; want %q", r.PoisonTopic, "user-registered.poison")
	}
	if *r.Retry.MaxRetries != 5 || r.Retry.InitialInterval != 100*time.Millisecond {
		t.Errorf("route retry = %+v; want the global defaults", r.Retry)
	}
	if got := cfg.Brokers(); len(got) != 1 || got[0] != "broker-1:9092" {
		t.Errorf("Brokers() = %v; want [broker-1:9092]", got)
	}
}

func TestShippedConfigIsValid(t *testing.T) {
	cfg, err := config.Load(filepath.Join("..", config.DefaultPath), env(nil))
	if err != nil {
		t.Fatalf("Load(shipped eventrouter.yaml) = %v; want no error", err)
	}
	if !cfg.Kafka.Embedded.Enabled || cfg.Brokers()[0] != "127.0.0.1:9092" {
		t.Errorf("shipped config brokers = %v, embedded %v; want the embedded broker on 127.0.0.1:9092", cfg.Brokers(), cfg.Kafka.Embedded.Enabled)
	}
	if cfg.Routes[0].ConsumerGroup != "notification-service" {
		t.Errorf("shipped consumer group = %q; want the seed's notification-service", cfg.Routes[0].ConsumerGroup)
	}
}

// The environment docker-compose.yml gives the daemon switches the shipped
// config to Kafka, Mailpit and the shared ledger.
func TestShippedConfigUnderCompose(t *testing.T) {
	cfg, err := config.Load(filepath.Join("..", config.DefaultPath), env(map[string]string{
		"EVENTROUTER_KAFKA_BROKERS": "kafka:19092", "EVENTROUTER_NOTIFIER": "smtp", "EVENTROUTER_SMTP_HOST": "mailpit",
		"EVENTROUTER_LEDGER": "postgres", "EVENTROUTER_LEDGER_DSN": "postgres://eventrouter:eventrouter@postgres:5432/eventrouter",
	}))
	if err != nil {
		t.Fatalf("Load(shipped eventrouter.yaml) under compose = %v; want no error", err)
	}
	if cfg.Ledger.Kind != "postgres" || cfg.Ledger.Postgres.DSNEnv != "EVENTROUTER_LEDGER_DSN" {
		t.Errorf("ledger = %+v; want kind postgres with dsn_env EVENTROUTER_LEDGER_DSN", cfg.Ledger)
	}
}

func TestRouteRetryOverridesKeyByKey(t *testing.T) {
	type policy struct {
		maxRetries                int
		initial, max, outage, cap time.Duration
		multiplier                float64
	}
	global := policy{5, 100 * time.Millisecond, 10 * time.Second, time.Second, 30 * time.Second, 2}
	tests := []struct {
		name, global, route string
		want                policy
	}{
		{"nothing set", "", "", global},
		{"zero retries", "", "max_retries: 0", policy{0, 100 * time.Millisecond, 10 * time.Second, time.Second, 30 * time.Second, 2}},
		{"zero initial interval is zero, not the global", "", "initial_interval: 0s", policy{5, 0, 10 * time.Second, time.Second, 30 * time.Second, 2}},
		{"keys the route leaves out come from the global policy", "max_retries: 2\n  multiplier: 3", "max_interval: 1s", policy{2, 100 * time.Millisecond, time.Second, time.Second, 30 * time.Second, 3}},
		{"every key", "", "{max_retries: 1, initial_interval: 1ms, max_interval: 2ms, multiplier: 1, outage_interval: 10ms, outage_max_interval: 20ms}",
			policy{1, time.Millisecond, 2 * time.Millisecond, 10 * time.Millisecond, 20 * time.Millisecond, 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := valid
			if tt.route != "" {
				raw += "    retry:\n      " + strings.ReplaceAll(tt.route, "\n  ", "\n      ") + "\n"
			}
			if tt.global != "" {
				raw += "retry:\n  " + tt.global + "\n"
			}
			cfg, err := config.Parse([]byte(raw), env(nil))
			if err != nil {
				t.Fatalf("Parse = %v; want no error", err)
			}
			r := cfg.Routes[0].Retry
			got := policy{*r.MaxRetries, r.InitialInterval, r.MaxInterval, r.OutageInterval, r.OutageMaxInterval, r.Multiplier}
			if got != tt.want {
				t.Errorf("route retry = %+v; want %+v", got, tt.want)
			}
			if r.MaxRetries == cfg.Retry.MaxRetries {
				t.Errorf("route and global policy share one MaxRetries; want a copy each")
			}
		})
	}
}

func TestRouteRetryLeavesGlobalPolicyAlone(t *testing.T) {
	raw := valid + "    retry:\n      max_retries: 1\n" + strings.SplitN(valid, "routes:\n", 2)[1] + "    name: second\n    poison_topic: second.poison\n"
	cfg, err := config.Parse([]byte(raw), env(nil))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if got := []int{*cfg.Retry.MaxRetries, *cfg.Routes[0].Retry.MaxRetries, *cfg.Routes[1].Retry.MaxRetries}; got[0] != 5 || got[1] != 1 || got[2] != 5 {
		t.Errorf("max_retries global, routes[0], routes[1] = %v; want [5 1 5]", got)
	}
}

func TestYAMLAnchorsAndMergeKeys(t *testing.T) {
	raw := valid + "    retry: &fast\n      max_retries: 1\n      initial_interval: 1ms\n" +
		"  - handler: notification\n    name: second\n    subscribe_topic: other\n    consumer_group: g2\n    publish_topic: out\n    retry:\n      <<: *fast\n      max_interval: 5ms\n"
	cfg, err := config.Parse([]byte(raw), env(nil))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	r := cfg.Routes[1].Retry
	if *r.MaxRetries != 1 || r.InitialInterval != time.Millisecond || r.MaxInterval != 5*time.Millisecond || r.Multiplier != 2 {
		t.Errorf("merged route retry = {%d %s %s %g}; want {1 1ms 5ms 2}", *r.MaxRetries, r.InitialInterval, r.MaxInterval, r.Multiplier)
	}
}

func TestBrokersEnvOverridesFileAndEmbedded(t *testing.T) {
	raw := strings.Replace(valid, "  brokers: [broker-1:9092]", "  brokers: [broker-1:9092]\n  embedded:\n    enabled: true", 1)
	cfg, err := config.Parse([]byte(raw), env(map[string]string{config.BrokersEnv: "a:1, b:2"}))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if got := strings.Join(cfg.Brokers(), ","); got != "a:1,b:2" || cfg.Kafka.Embedded.Enabled {
		t.Errorf("Brokers() = %s, embedded = %v; want a:1,b:2 and embedded off", got, cfg.Kafka.Embedded.Enabled)
	}
}

func TestEnvExpansion(t *testing.T) {
	// group returns valid with the consumer group's line replaced.
	group := func(line string) string {
		return strings.Replace(valid, "    consumer_group: notification-service\n", line, 1)
	}
	tests := []struct {
		name, raw string
		vars      map[string]string
		check     func(config.Config) string // what is wrong, or ""
	}{
		{"variable and default", strings.Replace(group("    consumer_group: ${GROUP:-fallback} # ${NOT_SET} in a comment\n"), "[broker-1:9092]", "[\"${BROKER}\"]", 1),
			map[string]string{"BROKER": "k:9"}, func(c config.Config) string {
				return want(c.Brokers()[0]+" "+c.Routes[0].ConsumerGroup, "k:9 fallback")
			}},
		{"a line break in a value adds no key", group("    consumer_group: ${GROUP}\n"), map[string]string{"GROUP": "g\nbogus: 1\n    poison_topic: x"},
			func(c config.Config) string {
				return want(c.Routes[0].ConsumerGroup+"|"+c.Routes[0].PoisonTopic, "g\nbogus: 1\n    poison_topic: x|user-registered.poison")
			}},
		{"a # in a value is kept", group("    consumer_group: ${GROUP} # a comment\n"), map[string]string{"GROUP": "a #b"},
			func(c config.Config) string { return want(c.Routes[0].ConsumerGroup, "a #b") }},
		{"an apostrophe does not hide a comment", group("    consumer_group: group's-${GROUP} # ${NOT_SET} isn't expanded\n"), map[string]string{"GROUP": "x"},
			func(c config.Config) string { return want(c.Routes[0].ConsumerGroup, "group's-x") }},
		{"comment lines are not expanded", "# it's ${NOT_SET}\n" + valid, nil,
			func(c config.Config) string { return want(c.Routes[0].ConsumerGroup, "notification-service") }},
		{"$$ is a dollar", group("    consumer_group: a$$b$c\n"), nil,
			func(c config.Config) string { return want(c.Routes[0].ConsumerGroup, "a$b$c") }},
		{"a quoted value stays text", group("    consumer_group: '${GROUP}'\n"), map[string]string{"GROUP": "123"},
			func(c config.Config) string { return want(c.Routes[0].ConsumerGroup, "123") }},
		{"numbers, durations and booleans from defaults", valid + "notifier:\n  smtp:\n    port: ${PORT:-1025}\n    timeout: ${TIMEOUT:-5s}\nops:\n  enabled: ${OPS:-true}\n", nil,
			func(c config.Config) string {
				return want(fmt.Sprint(c.Notifier.SMTP.Port, c.Notifier.SMTP.Timeout, c.Ops.Enabled), "1025 5s true")
			}},
		{"numbers from the environment", valid + "notifier:\n  smtp:\n    port: ${PORT:-1025}\nretry:\n  multiplier: ${M}\n", map[string]string{"PORT": "2525", "M": "1.5"},
			func(c config.Config) string {
				return want(fmt.Sprint(c.Notifier.SMTP.Port, c.Retry.Multiplier), "2525 1.5")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := config.Parse([]byte(tt.raw), env(tt.vars))
			if err != nil {
				t.Fatalf("Parse = %v; want no error", err)
			}
			if msg := tt.check(cfg); msg != "" {
				t.Error(msg)
			}
		})
	}
}

func want(got, want string) string {
	if got != want {
		return fmt.Sprintf("got %q; want %q", got, want)
	}
	return ""
}

func TestParseErrors(t *testing.T) {
	two := valid + "  - handler: notification\n    name: audit\n    subscribe_topic: user-registered\n    consumer_group: audit\n"
	tests := []struct {
		name string
		raw  string
		want string // a part of the one-line error
	}{
		{"unknown top-level key", valid + "bogus: 1\n", "line 9: bogus: unknown key"},
		{"unknown nested key", strings.Replace(valid, "brokers:", "brokerz:", 1), "line 3: kafka.brokerz: unknown key"},
		{"bad duration", valid + "router:\n  shutdown_timeout: 5 minutes\n", `line 10: router.shutdown_timeout: "5 minutes" is not a duration (such as 10s or 1m30s)`},
		{"number for a duration", strings.Replace(valid, "kafka:\n", "kafka:\n  dial_timeout: 10\n", 1), `line 3: kafka.dial_timeout: "10" is not a duration (such as 10s or 1m30s)`},
		{"not a whole number", valid + "notifier:\n  smtp:\n    port: smtp\n", `line 11: notifier.smtp.port: "smtp" is not a whole number`},
		{"fraction for a whole number", valid + "retry:\n  max_retries: 1.5\n", `line 10: retry.max_retries: "1.5" is not a whole number`},
		{"not a number", valid + "retry:\n  multiplier: twice\n", `line 10: retry.multiplier: "twice" is not a number`},
		{"not a boolean", valid + "ops:\n  enabled: maybe\n", `line 10: ops.enabled: "maybe" is not true or false`},
		{"quoted boolean", valid + "ops:\n  enabled: \"true\"\n", `line 10: ops.enabled: "true" is not true or false; remove the quotes`},
		{"not a list", strings.Replace(valid, "[broker-1:9092]", "broker-1:9092", 1), `line 3: kafka.brokers: must be a list, got "broker-1:9092"`},
		{"not a mapping", valid + "log: loud\n", `line 9: log: must be a mapping of keys, got "loud"`},
		{"list for a value", valid + "log:\n  level: [info]\n", `line 10: log.level: must be text, got a list`},
		{"empty list item", strings.Replace(valid, "[broker-1:9092]", "[broker-1:9092, ~]", 1), `line 3: kafka.brokers[1]: is empty`},
		{"key set twice", valid + "log:\n  level: info\n  level: debug\n", `line 11: log.level: is set twice (first on line 10)`},
		{"not a mapping at all", "just text\n", "line 1: the file must be a mapping of keys"},
		{"empty max_retries", valid + "retry:\n  max_retries:\n", "line 10: retry.max_retries: is empty; write a whole number, or remove the key to use the default"},
		{"empty route max_retries", valid + "    retry:\n      max_retries:\n", "line 10: routes[0].retry.max_retries: is empty"},
		{"empty duration", valid + "retry:\n  initial_interval: ~\n", "line 10: retry.initial_interval: is empty; write a duration"},
		{"empty string with a default", strings.Replace(valid, "kafka:\n", "kafka:\n  client_id:\n", 1), `line 3: kafka.client_id: is empty; write a value, or remove the key to use the default "eventrouter"`},
		{"zero multiplier", valid + "retry:\n  multiplier: 0\n", "line 10: retry.multiplier: must be at least 1, got 0"},
		{"zero route multiplier", valid + "    retry:\n      multiplier: 0\n", "line 10: routes[0].retry.multiplier: must be at least 1, got 0"},
		{"zero outage interval", valid + "retry:\n  outage_interval: 0s\n", "line 10: retry.outage_interval: must be at least 10ms, got 0s"},
		{"zero outage max interval", valid + "retry:\n  outage_max_interval: 0s\n", "line 10: retry.outage_max_interval: must be at least 10ms, got 0s"},
		{"zero route outage interval", valid + "    retry:\n      outage_interval: 0s\n", "line 10: routes[0].retry.outage_interval: must be at least 10ms, got 0s"},
		{"zero max interval", valid + "    retry:\n      max_interval: 0s\n", "line 10: routes[0].retry.max_interval: must be positive, got 0s"},
		{"second document", valid + "---\nlog:\n  level: debug\n", "line 9: a second YAML document starts here"},
		{"unquoted variable in a flow list", strings.Replace(valid, "broker-1:9092", "${KAFKA_HOST}", 1), `a ${VAR} inside [ ] or { } must be quoted`},
		{"unset variable in a list", strings.Replace(valid, "broker-1:9092", `"${KAFKA_HOST}"`, 1), "line 3: kafka.brokers[0]: environment variable KAFKA_HOST is not set"},
		{"old kafka version", strings.Replace(valid, "kafka:\n", "kafka:\n  version: 0.10.2.0\n", 1), `line 3: kafka.version: must be at least 0.11.0, got "0.10.2.0"`},
		{"two routes on one topic share the default poison topic", two,
			`line 9: routes[1].poison_topic: route "audit" and route "notification" (routes[0]) both use the poison topic "user-registered.poison", the default for subscribe_topic "user-registered"; set poison_topic on route "audit" so that each route has its own`},
		{"two routes name one poison topic", two + "    poison_topic: user-registered.poison\n", `line 13: routes[1].poison_topic: route "audit" and route "notification" (routes[0]) both use the poison topic "user-registered.poison"`},
		{"poison topic is another route's subscribe topic", strings.Replace(two, "subscribe_topic: user-registered\n    consumer_group: audit", "subscribe_topic: audit-in\n    consumer_group: audit\n    poison_topic: user-registered", 1),
			`routes[1].poison_topic: "user-registered" is the subscribe_topic of route "notification" (routes[0]); poisoned records would be handled by that route`},
		{"poison topic is the publish topic", valid + "    poison_topic: notification-sent\n", `routes[0].poison_topic: must differ from publish_topic "notification-sent"`},
		{"negative duration", valid + "retry:\n  initial_interval: -1s\n", "retry.initial_interval: must not be negative"},
		{"missing subscribe topic", strings.Replace(valid, "subscribe_topic: user-registered", "", 1), "routes[0].subscribe_topic: is missing"},
		{"missing consumer group", strings.Replace(valid, "consumer_group: notification-service", "", 1), "routes[0].consumer_group: is missing"},
		{"bad topic name", strings.Replace(valid, "notification-sent", "sent events!", 1), `routes[0].publish_topic: "sent events!" is not a Kafka topic name`},
		{"no routes", "kafka:\n  brokers: [a:1]\n", "routes: is empty"},
		{"no brokers", strings.Replace(valid, "[broker-1:9092]", "[]", 1), "kafka.brokers: is empty"},
		{"broker without port", strings.Replace(valid, "broker-1:9092", "broker-1", 1), `kafka.brokers[0]: "broker-1" is not host:port`},
		{"bad version", strings.Replace(valid, "kafka:\n", "kafka:\n  version: banana\n", 1), `kafka.version: "banana" is not a Kafka version`},
		{"session timeout below the broker's minimum", strings.Replace(valid, "kafka:\n", "kafka:\n  session_timeout: 2s\n", 1), `kafka.session_timeout: must be between 6s and 30m, got 2s`},
		{"heartbeat too slow for the session", strings.Replace(valid, "kafka:\n", "kafka:\n  heartbeat_interval: 5s\n", 1), `kafka.heartbeat_interval: must be positive and at most a third of kafka.session_timeout (10s), got 5s`},
		{"zero request timeout", strings.Replace(valid, "kafka:\n", "kafka:\n  request_timeout: 0s\n", 1), `kafka.request_timeout: must be positive`},
		{"bad retry multiplier", valid + "retry:\n  multiplier: 0.5\n", "retry.multiplier: must be at least 1"},
		{"unknown notifier", valid + "notifier:\n  kind: pigeon\n", `notifier.kind: unknown notifier "pigeon"`},
		{"bad log level", valid + "log:\n  level: loud\n", "log.level: must be"},
		{"unknown ledger", valid + "ledger:\n  kind: sqlite\n", `ledger.kind: unknown ledger "sqlite"`},
		{"postgres ledger without a DSN", valid + "ledger:\n  kind: postgres\n", "ledger.postgres.dsn_env: is missing"},
		{"postgres ledger with two DSNs", valid + "ledger:\n  kind: postgres\n  postgres:\n    dsn_env: A\n    dsn_file: /b\n", "line 13: ledger.postgres.dsn_file: set dsn_env or dsn_file, not both"},
		{"short lease", valid + "ledger:\n  kind: postgres\n  postgres:\n    dsn_env: A\n    lease: 1s\n", "ledger.postgres.lease: must be at least 3s"},
		{"statement timeout over a third of the lease", valid + "ledger:\n  kind: postgres\n  postgres:\n    dsn_env: A\n    lease: 6s\n", "ledger.postgres.statement_timeout: must be at most a third of lease (2s), got 5s"},
		{"empty bbolt path", valid + "ledger:\n  path: \"\"\n", "ledger.path: is empty"},
		{"unset variable", strings.Replace(valid, "user-registered", "${TOPIC}", 1), "line 6: routes[0].subscribe_topic: environment variable TOPIC is not set"},
		{"not yaml", "kafka: [", "config: "},
		{"duplicate route name", valid + strings.SplitN(valid, "routes:\n", 2)[1], `routes[1].name: "notification" is already the name of routes[0]`},
		{"poison topic is the subscribe topic", valid + "    poison_topic: user-registered\n", "routes[0].poison_topic: must differ"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.Parse([]byte(tt.raw), env(nil))
			if err == nil {
				t.Fatalf("Parse(%q) = nil; want an error containing %q", tt.raw, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Parse(%q) = %q; want it to contain %q", tt.raw, err, tt.want)
			}
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Errorf("Parse error %q; want the prefix %q", err, "config: ")
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := config.Load(filepath.Join(t.TempDir(), "nope.yaml"), os.Getenv)
	if err == nil || !strings.Contains(err.Error(), "nope.yaml") {
		t.Errorf("Load(missing) = %v; want an error naming the file", err)
	}
}

func TestCheckReportsEverythingInOnePass(t *testing.T) {
	raw := `kafka:
  brokers: [broker-1:9092]
  dial_timeout: 10
  bogus: 1
retry:
  max_retries:
  multiplier: 0
log:
  level: loud
routes:
  - handler: notification
    subscribe_topic: user-registered
    consumer_group: ${GROUP}
    publish_topic: notification-sent
  - handler: notification
    name: audit
    subscribe_topic: user-registered
    consumer_group: audit
    retry:
      outage_interval: 0s
`
	_, problems := config.Check([]byte(raw), env(nil))
	want := []string{
		`config: line 3: kafka.dial_timeout: "10" is not a duration (such as 10s or 1m30s)`,
		`config: line 4: kafka.bogus: unknown key; known: brokers, client_id, version, dial_timeout, request_timeout, session_timeout, heartbeat_interval, rebalance_timeout, tls, sasl, embedded`,
		`config: line 6: retry.max_retries: is empty; write a whole number, or remove the key to use the default`,
		`config: line 7: retry.multiplier: must be at least 1, got 0`,
		`config: line 9: log.level: must be debug, info, warn or error, got "loud"`,
		`config: line 13: routes[0].consumer_group: environment variable GROUP is not set (use ${GROUP:-default} for a default)`,
		`config: line 15: routes[1].poison_topic: route "audit" and route "notification" (routes[0]) both use the poison topic "user-registered.poison", the default for subscribe_topic "user-registered"; set poison_topic on route "audit" so that each route has its own`,
		`config: line 20: routes[1].retry.outage_interval: must be at least 10ms, got 0s`,
	}
	var got []string
	for _, p := range problems {
		got = append(got, p.Error())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("Check found\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestAddLeavesOutWhatIsReported(t *testing.T) {
	reported := []error{&config.KeyError{Key: "notifier.smtp.host", Msg: "is missing"}, &config.KeyError{Key: "routes[0]", Msg: "must be a mapping"}}
	tests := []struct {
		key  string
		kept bool
	}{
		{"notifier.smtp", false},
		{"notifier.smtp.host", false},
		{"routes[0].handler", false},
		{"notifier.smtp.port", true},
		{"routes[1].handler", true},
		{"routes[0]x", true},
		{"ops.token_env", true},
	}
	for _, tt := range tests {
		got := config.Add(reported, &config.KeyError{Key: tt.key, Msg: "x"})
		if kept := len(got) == 3; kept != tt.kept {
			t.Errorf("Add(%s) kept it = %v; want %v", tt.key, kept, tt.kept)
		}
	}
}

func TestLocateAndSort(t *testing.T) {
	errs := []error{
		&config.KeyError{Key: "routes[0].handler", Msg: "a"},
		&config.KeyError{Key: "ops.token_env", Msg: "b"},
		&config.KeyError{Key: "kafka.brokers", Msg: "c"},
	}
	config.Locate([]byte(valid), errs)
	config.Sort(errs)
	var got []string
	for _, e := range errs {
		got = append(got, e.Error())
	}
	want := "config: line 3: kafka.brokers: c|config: line 5: routes[0].handler: a|config: ops.token_env: b"
	if strings.Join(got, "|") != want {
		t.Errorf("got %q; want %q", strings.Join(got, "|"), want)
	}
}
