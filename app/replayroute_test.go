package app_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/app/cli"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// A record one route poisoned goes back, on replay, to that route alone:
// another route of the same topic, in its own consumer group, skips it.
func TestReplayReachesOnlyThePoisoningRoute(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		in := kafkatest.Topic("user-registered")
		kafkatest.CreateTopic(t, k.Brokers, in, 1)
		var broken atomic.Bool
		broken.Store(true)
		var mu sync.Mutex
		seen := map[string]int{}
		spec := func(name string) handlers.Spec {
			return handlers.Spec{New: func(any, handlers.Services) (handlers.Handler, error) {
				return handlers.Func(func(msg *message.Message) ([]*message.Message, error) {
					if name == "welcome" && broken.Load() {
						return nil, retry.Permanent(errors.New("template bug"))
					}
					mu.Lock()
					seen[name]++
					mu.Unlock()
					return nil, nil
				}), nil
			}}
		}
		registry := map[string]handlers.Spec{"welcome-handler": spec("welcome"), "audit-handler": spec("audit")}
		raw := fmt.Sprintf(`kafka:
  brokers: [%s]
ledger:
  path: %s
retry:
  max_retries: 0
routes:
  - name: welcome
    handler: welcome-handler
    subscribe_topic: %s
    consumer_group: %s-welcome
    poison_topic: %s.welcome.poison
  - name: audit
    handler: audit-handler
    subscribe_topic: %s
    consumer_group: %s-audit
    poison_topic: %s.audit.poison
`, strings.Join(k.Brokers, ","), filepath.Join(t.TempDir(), "ledger.db"), in, in, in, in, in, in)
		cfg, err := config.Parse([]byte(raw), func(string) string { return "" })
		if err != nil {
			t.Fatal(err)
		}
		startDaemon(t, cfg, app.Options{Notifier: &recorder{}, Registry: registry})
		kafkatest.Produce(t, k.Brokers, in, event(1, userEmail(1)))
		waitFor(t, consumeTimeout, "welcome to poison the record and audit to see it", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen["audit"] == 1 && count(t, k.Brokers, in+".welcome.poison") == 1
		})
		broken.Store(false)

		path := filepath.Join(t.TempDir(), "eventrouter.yaml")
		if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
			t.Fatal(err)
		}
		res := runMain(t, "", nil, "replay", "--config", path, "--dry-run", in+".welcome.poison")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, "(route welcome,") {
			t.Errorf("replay --dry-run = %d %q; want 0 and the route named", res.code, res.stdout)
		}
		if res := runMain(t, "", nil, "replay", "--config", path, in+".welcome.poison"); res.code != cli.ExitOK {
			t.Fatalf("replay = %d %q %q", res.code, res.stdout, res.stderr)
		}
		waitFor(t, consumeTimeout, "welcome to handle the replayed record", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return seen["welcome"] == 1
		})
		// audit commits past the replayed record without handling it.
		waitFor(t, consumeTimeout, "audit to pass the replayed record", func() bool {
			return committed(t, k.Brokers, in+"-audit", in, 0) >= 2
		})
		mu.Lock()
		defer mu.Unlock()
		if seen["audit"] != 1 {
			t.Errorf("audit handled %d records; want 1: the replay was for welcome", seen["audit"])
		}
	})
}
