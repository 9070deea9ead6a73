package app_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

// hookReceiver is a webhook receiver that dedupes on Idempotency-Key, as
// the webhook handler's documentation asks receivers to, and can be
// switched to answering 503.
type hookReceiver struct {
	mu       sync.Mutex
	requests int
	keys     map[string]int
	down     bool
}

func (h *hookReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.requests++
	if h.down {
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if h.keys == nil {
		h.keys = map[string]int{}
	}
	h.keys[r.Header.Get("Idempotency-Key")]++
	w.WriteHeader(http.StatusNoContent)
}

func (h *hookReceiver) distinct() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.keys)
}

func (h *hookReceiver) setDown(down bool) {
	h.mu.Lock()
	h.down = down
	h.mu.Unlock()
}

// serveHooks serves rc on a loopback port until the test ends.
func serveHooks(t *testing.T, rc http.Handler) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: rc}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/hooks"
}

// TestThreeHandlersSideBySide runs the notification, webhook and audit
// handlers in one daemon: three routes on one topic, each in its own
// consumer group. The webhook receiver answers 503 for a while, which
// pauses its route alone. Every event gets its email, its webhook and its
// audit row, once each.
func TestThreeHandlersSideBySide(t *testing.T) {
	dsn := pgtest.DSN(t)
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 200
		mail := mailtest.Start(t)
		hooks := &hookReceiver{down: true}
		url := serveHooks(t, hooks)
		r := newRoute()
		table := "audit_" + strings.ReplaceAll(k.Name, "-", "_")
		routes := fmt.Sprintf(`
  - name: webhook
    handler: webhook
    subscribe_topic: %[1]s
    consumer_group: %[1]s-webhook
    poison_topic: %[1]s.webhook-poison
    options:
      url: %[2]s
      timeout: 2s
      headers:
        X-Source: eventrouter-test
  - name: audit
    handler: audit
    subscribe_topic: %[1]s
    consumer_group: %[1]s-audit
    poison_topic: %[1]s.audit-poison
    options:
      dsn_env: AUDIT_DSN
      table: %[3]s
`, r.in, url, table)
		cfg := testConfig(t, k.Brokers, r, strings.TrimPrefix(routes, "\n")+smtpYAML(mail))
		d := startDaemon(t, cfg, app.Options{Getenv: func(k string) string {
			if k == "AUDIT_DSN" {
				return dsn
			}
			return ""
		}})
		produceEvents(t, k.Brokers, r.in, 0, users)

		waitFor(t, 2*time.Minute, "every email and audit row", func() bool {
			n, err := pgtest.Count(dsn, "SELECT count(*) FROM "+table)
			return mail.Total() >= users && err == nil && n >= users
		})
		waitFor(t, time.Minute, "the webhook route paused", func() bool {
			return strings.Contains(d.logs.String(), `route paused: a dependency is unavailable; retrying until it is back" route=webhook`)
		})
		if got := hooks.distinct(); got != 0 {
			t.Fatalf("got %d webhooks accepted while the receiver answered 503; want 0", got)
		}
		hooks.setDown(false)
		waitFor(t, 2*time.Minute, "every webhook", func() bool { return hooks.distinct() >= users })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if got, _ := recipients(mail); len(got) != users || mail.Total() != users {
			t.Errorf("got %d emails to %d users; want %d, one each", mail.Total(), len(got), users)
		}
		if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM "+table); got != users {
			t.Errorf("got %d audit rows; want %d", got, users)
		}
		if got := hooks.distinct(); got != users {
			t.Errorf("got webhooks for %d events; want %d", got, users)
		}
		for _, poison := range []string{r.poison, r.in + ".webhook-poison", r.in + ".audit-poison"} {
			if n := count(t, k.Brokers, poison); n != 0 {
				t.Errorf("got %d records in %s; want none", n, poison)
			}
		}
	})
}

// TestAuditSurvivesSIGKILL appends 10,000 events to the audit table
// through `eventrouter run`, killed with SIGKILL twice mid-stream. The
// records after the last commit come again after each restart; the table
// still has exactly one row per event.
func TestAuditSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the daemon twice")
	}
	brokers := kafkatest.Real(t)
	dsn := pgtest.DSN(t)
	bin := buildBinary(t)
	const events = 10000
	topic := kafkatest.Topic("audited")
	kafkatest.CreateTopic(t, brokers, topic, 6)
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	raw := fmt.Sprintf(`
kafka:
  brokers: [unused:9092]
ledger:
  path: ${EVENTROUTER_TEST_LEDGER}
routes:
  - name: audit
    handler: audit
    subscribe_topic: %[1]s
    consumer_group: %[1]s-audit
    options:
      dsn_env: AUDIT_DSN
`, topic)
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	rows := func() int64 { return pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_audit") }
	produceEvents(t, brokers, topic, 0, events)
	p := startProcess(t, bin, path, brokers, "AUDIT_DSN="+dsn)
	for kill := 1; kill <= 2; kill++ {
		target := int64(kill * events / 3)
		waitFor(t, 2*time.Minute, fmt.Sprintf("%d rows", target), func() bool {
			n, err := pgtest.Count(dsn, "SELECT count(*) FROM eventrouter_audit")
			return err == nil && n >= target
		})
		p.signal(9)
		<-p.done
		t.Logf("SIGKILL %d after %d rows", kill, rows())
		p = startProcess(t, bin, path, brokers, "AUDIT_DSN="+dsn)
	}
	waitFor(t, 3*time.Minute, "every row", func() bool { return rows() >= events })
	// Until the group has committed everything, nothing more can come.
	waitFor(t, time.Minute, "the group to commit every record", func() bool {
		var total int64
		for p := range int32(6) {
			total += committed(t, brokers, topic+"-audit", topic, p)
		}
		return total >= events
	})
	if err := p.stop(t); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if got := rows(); got != events {
		t.Errorf("got %d rows; want %d, one per event", got, events)
	}
	if got := pgtest.QueryInt(t, dsn, `SELECT count(DISTINCT (topic, "partition", "offset")) FROM eventrouter_audit`); got != events {
		t.Errorf("got %d distinct records; want %d", got, events)
	}
}

// TestStartFromLatest runs a new route with start_from: latest on a topic
// with history: it handles only what is published after it first started,
// and, once started, nothing published while it is down is skipped.
func TestStartFromLatest(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		const old, fresh, whileDown = 30, 10, 5
		produceEvents(t, k.Brokers, r.in, 0, old)
		cfg := testConfig(t, k.Brokers, r, "")
		cfg.Routes[0].StartFrom = "latest"
		sent := &recorder{}
		d := startDaemon(t, cfg, app.Options{Notifier: sent})
		end := kafkatest.EndOffsets(t, k.Brokers, r.in)
		waitFor(t, time.Minute, "the group to commit the end of every partition", func() bool {
			for p, off := range end {
				// Until the group has joined, the broker does not know it.
				if got, err := committedOffset(k.Brokers, r.group, r.in, p); err != nil || got != off {
					return false
				}
			}
			return true
		})
		produceEvents(t, k.Brokers, r.in, old, old+fresh)
		waitFor(t, time.Minute, "the new events' notifications", func() bool { return len(sent.Sent()) >= fresh })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		produceEvents(t, k.Brokers, r.in, old+fresh, old+fresh+whileDown)
		d = startDaemon(t, cfg, app.Options{Notifier: sent})
		waitFor(t, time.Minute, "the notifications of events published while down", func() bool {
			return len(sent.Sent()) >= fresh+whileDown
		})
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}

		// A partition added once the group has handled records starts at
		// its oldest record: what was written to it before the group
		// claimed it is not skipped.
		const added = 20
		from := old + fresh + whileDown
		addPartition(t, k.Brokers, r.in, int32(len(end))+1)
		produceEvents(t, k.Brokers, r.in, from, from+added)
		if n := kafkatest.EndOffsets(t, k.Brokers, r.in)[int32(len(end))]; n == 0 {
			t.Fatalf("no event landed on the added partition %d", len(end))
		}
		startDaemon(t, cfg, app.Options{Notifier: sent})
		want := fresh + whileDown + added
		waitFor(t, time.Minute, "the notifications of events on the added partition", func() bool { return len(sent.Sent()) >= want })
		waitFor(t, time.Minute, "every notification-sent", func() bool { return count(t, k.Brokers, r.out) >= int64(want) })
		users := map[string]bool{}
		for _, m := range sent.Sent() {
			users[m.UserID.String()] = true
			var id int
			if _, err := fmt.Sscan(m.UserID.String(), &id); err != nil || id < old {
				t.Errorf("got a notification for user %s, published before the route first started", m.UserID)
			}
		}
		if len(users) != want {
			t.Errorf("got notifications for %d users; want %d", len(users), want)
		}
	})
}

// addPartition grows topic to partitions partitions.
func addPartition(t *testing.T, brokers []string, topic string, partitions int32) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.Config())
	if err != nil {
		t.Fatalf("connect admin to %v: %v", brokers, err)
	}
	defer admin.Close()
	if err := admin.CreatePartitions(topic, partitions, nil, false); err != nil {
		t.Fatalf("grow %s to %d partitions: %v", topic, partitions, err)
	}
	waitFor(t, 30*time.Second, "the new partition's leader", func() bool {
		return len(kafkatest.EndOffsets(t, brokers, topic)) == int(partitions)
	})
}
