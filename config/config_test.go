package config_test

import (
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

func TestRouteRetryOverridesKeyByKey(t *testing.T) {
	raw := valid + "    retry:\n      max_retries: 0\n      max_interval: 1s\n"
	cfg, err := config.Parse([]byte(raw), env(nil))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	r := cfg.Routes[0].Retry
	if *r.MaxRetries != 0 || r.MaxInterval != time.Second || r.InitialInterval != 100*time.Millisecond || r.Multiplier != 2 {
		t.Errorf("route retry = {%d %s %s %g}; want {0 100ms 1s 2}", *r.MaxRetries, r.InitialInterval, r.MaxInterval, r.Multiplier)
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
	raw := strings.Replace(valid, "broker-1:9092", "${BROKER}", 1)
	raw = strings.Replace(raw, "notification-service", "${GROUP:-fallback} # ${NOT_SET} in a comment", 1)
	cfg, err := config.Parse([]byte(raw), env(map[string]string{"BROKER": "k:9"}))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if cfg.Brokers()[0] != "k:9" || cfg.Routes[0].ConsumerGroup != "fallback" {
		t.Errorf("got brokers %v, group %q; want [k:9], %q", cfg.Brokers(), cfg.Routes[0].ConsumerGroup, "fallback")
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want string // a part of the one-line error
	}{
		{"unknown top-level key", valid + "bogus: 1\n", "line 9: bogus: unknown key"},
		{"unknown nested key", strings.Replace(valid, "brokers:", "brokerz:", 1), "line 3: kafka.brokerz: unknown key"},
		{"bad duration", valid + "router:\n  shutdown_timeout: 5 minutes\n", "line 10: router.shutdown_timeout: cannot unmarshal"},
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
		{"unset variable", strings.Replace(valid, "broker-1:9092", "${KAFKA_HOST}", 1), "line 3: environment variable KAFKA_HOST is not set"},
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
