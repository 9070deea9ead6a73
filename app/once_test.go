package app_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
)

// smtpAt is the notifier section for an SMTP server at host:port.
func smtpAt(host string, port int) string {
	return fmt.Sprintf(`notifier:
  kind: smtp
  smtp:
    host: %s
    port: %d
    tls: none
    from: "Example <welcome@example.com>"
    timeout: 5s
`, host, port)
}

// A mail server that drops the connection after accepting each message
// (its reply to QUIT never comes) made the daemon pause, then send every
// email again. The server has the message once it said 250 to DATA.
func TestDroppedConnectionAfterAcceptSendsOnce(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 50
		server := mailtest.StartMisbehaving(t, mailtest.Behaviour{DropAfterAccept: true})
		r := newRoute()
		d := startDaemon(t, testConfig(t, k.Brokers, r, smtpAt(server.Host(), server.Port())), app.Options{})
		produceEvents(t, k.Brokers, r.in, 0, users)
		waitFor(t, consumeTimeout, "every registration handled", func() bool {
			return committed(t, k.Brokers, r.group, r.in, 0) >= users
		})
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		accepted := server.Accepted()
		to := map[string]bool{}
		for _, a := range accepted {
			to[a.To] = true
		}
		if len(accepted) != users || len(to) != users {
			t.Errorf("server accepted %d emails to %d addresses; want exactly %d, one to each user", len(accepted), len(to), users)
		}
		if n := count(t, k.Brokers, r.out); n != users {
			t.Errorf("notification-sent holds %d records; want %d", n, users)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records; want 0", n)
		}
		if strings.Contains(d.logs.String(), "route paused") {
			t.Errorf("the route paused; want no outage seen: every email was accepted")
		}
	})
}

// A publish of notification-sent that fails because of the record (larger
// than the topic takes) was nacked and redelivered every 100 ms, forever.
// It must be poisoned with the reason, and the email not sent again.
func TestFailedPublishIsPoisonedNotLooped(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		createTopicWithConfig(t, k.Brokers, r.out, map[string]string{"max.message.bytes": "64"})
		notifier := &recorder{}
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier})
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "one@example.com"), event(2, "two@example.com"))

		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, 2, consumeTimeout)
		if len(poisoned) != 2 {
			t.Fatalf("got %d poison records; want both events", len(poisoned))
		}
		for _, p := range poisoned {
			reason, _ := kafkatest.Header(p, middleware.ReasonForPoisonedKey)
			if !strings.Contains(reason, "publish to "+r.out) || !strings.Contains(reason, "too large") {
				t.Errorf("reason_poisoned = %q; want the failed publish to %s, too large", reason, r.out)
			}
		}
		if n := notifier.Calls(); n != 2 {
			t.Errorf("notifier called %d times; want 2, one email per user", n)
		}
	})
}

func createTopicWithConfig(t *testing.T, brokers []string, topic string, entries map[string]string) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.Config())
	if err != nil {
		t.Fatalf("connect admin to %v: %v", brokers, err)
	}
	defer admin.Close()
	cfg := map[string]*string{}
	for k, v := range entries {
		cfg[k] = &v
	}
	if err := admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1, ConfigEntries: cfg}, false); err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
}

// The gaps between retries are the configured ones: Watermill's retry
// middleware made them 200ms, 800ms, 3.2s for 100ms × 2.
func TestRetriesFollowTheConfiguredSchedule(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		cfg := testConfig(t, k.Brokers, r, "")
		rt := &cfg.Routes[0].Retry
		rt.InitialInterval, rt.MaxInterval, rt.Multiplier = 100*time.Millisecond, 10*time.Second, 2
		var mu sync.Mutex
		var at []time.Time
		notifier := &recorder{before: func(call int) error {
			mu.Lock()
			at = append(at, time.Now())
			mu.Unlock()
			if call <= 3 {
				return errors.New("451 try again later")
			}
			return nil
		}}
		startDaemon(t, cfg, app.Options{Notifier: notifier})
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "one@example.com"))
		waitFor(t, consumeTimeout, "the email after three failures", func() bool { return len(notifier.Sent()) == 1 })
		mu.Lock()
		defer mu.Unlock()
		// Jitter varies each wait by up to 20%; a loaded machine may add
		// some, never the next step (Watermill's were 200ms, 800ms, 3.2s).
		for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond} {
			gap := at[i+1].Sub(at[i])
			if lo, hi := want*8/10, want*12/10+300*time.Millisecond; gap < lo || gap > hi {
				t.Errorf("gap before retry %d = %s; want %s ±20%% (%s to %s)", i+1, gap.Round(time.Millisecond), want, lo, hi)
			}
		}
	})
}

// A route paused for an outage is not ready; a repeated registration is
// logged and counted; at info level no email address is logged.
func TestPauseSkipAndPrivacyAreVisible(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		var mu sync.Mutex
		down := true
		notifier := &recorder{before: func(int) error {
			mu.Lock()
			defer mu.Unlock()
			if down {
				return retry.Unavailable(notify.Dependency, errors.New("connection refused"))
			}
			return nil
		}}
		d := startDaemonAt(t, testConfig(t, k.Brokers, r, opsYAML), opsOptions(app.Options{Notifier: notifier}), slog.LevelInfo)
		base := "http://" + d.OpsAddr()
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "private.one@example.com"))

		var body string
		waitFor(t, consumeTimeout, "readiness to report the pause", func() bool {
			var code int
			code, body = get(t, base+"/readyz", true)
			return code == http.StatusServiceUnavailable && strings.Contains(body, "paused")
		})
		var rd struct {
			Checks map[string]string `json:"checks"`
		}
		if err := json.Unmarshal([]byte(body), &rd); err != nil || !strings.HasPrefix(rd.Checks["route welcome"], "paused") {
			t.Errorf("GET /readyz = %s; want route welcome paused", body)
		}
		mu.Lock()
		down = false
		mu.Unlock()
		waitFor(t, consumeTimeout, "readiness after the outage", func() bool {
			code, _ := get(t, base+"/readyz", true)
			return code == http.StatusOK
		})

		// The same registration twice more: no email, a log line and a
		// count each.
		waitFor(t, consumeTimeout, "notification-sent", func() bool { return count(t, k.Brokers, r.out) >= 1 })
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "private.one@example.com"), event(1, "private.one@example.com"))
		waitFor(t, consumeTimeout, "two skips counted", func() bool {
			_, body := get(t, base+"/metrics", true)
			v, _ := metric(body, `eventrouter_notifications_skipped_total{route="welcome",template="welcome"}`)
			return v == 2
		})
		if n := len(notifier.Sent()); n != 1 {
			t.Errorf("sent %d emails; want 1", n)
		}
		logs := d.logs.String()
		if !strings.Contains(logs, "welcome notification already sent") || !strings.Contains(logs, "user_id=1") {
			t.Errorf("log lacks the skipped registration of user 1:\n%s", logs)
		}
		// An event with a bad address: poisoned without the address in the
		// reason or the log.
		kafkatest.Produce(t, k.Brokers, r.in, event(2, "private two@example.com"))
		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, 1, consumeTimeout)
		if len(poisoned) != 1 {
			t.Fatalf("got %d poison records; want the bad address's", len(poisoned))
		}
		reason, _ := kafkatest.Header(poisoned[0], middleware.ReasonForPoisonedKey)
		for what, text := range map[string]string{"reason_poisoned": reason, "log": d.logs.String()} {
			if strings.Contains(text, "private") {
				t.Errorf("%s carries an email address at info level: %q", what, text)
			}
		}
	})
}

// flakyPublisher fails every publish to one topic, as sarama does when no
// broker can be reached, while down is set.
type flakyPublisher struct {
	message.Publisher
	topic    string
	mu       sync.Mutex
	down     bool
	failures int
}

func (f *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	f.mu.Lock()
	down := f.down && topic == f.topic
	if down {
		f.failures++
	}
	f.mu.Unlock()
	if down {
		return fmt.Errorf("cannot produce message %s: %w", msgs[0].UUID, sarama.ErrOutOfBrokers)
	}
	return f.Publisher.Publish(topic, msgs...)
}

func (f *flakyPublisher) set(down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down = down
}

func (f *flakyPublisher) failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failures
}

// Kafka unreachable for notification-sent: the route pauses, as for a mail
// server outage. Nothing is poisoned, no email goes out twice, and every
// notification-sent is published once Kafka is back.
func TestKafkaOutageOnPublishPausesTheRoute(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 3
		r := newRoute()
		flaky := &flakyPublisher{topic: r.out, down: true}
		notifier := &recorder{}
		d := startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier,
			WrapPublisher: func(p message.Publisher) message.Publisher { flaky.Publisher = p; return flaky }})
		produceEvents(t, k.Brokers, r.in, 0, users)
		waitFor(t, consumeTimeout, "the route to pause", func() bool { return strings.Contains(d.logs.String(), "route paused") })
		// The pause retries the publish (100ms, then longer), not the
		// message's retries, which would poison it after three.
		waitFor(t, consumeTimeout, "the publish tried five times", func() bool { return flaky.failed() >= 5 })
		// The users are handled at once: each email that went out before
		// its publish failed went out once, and is not sent again.
		if n := notifier.Calls(); n < 1 || n > users {
			t.Errorf("notifier called %d times during the outage; want 1 to %d: each email goes out before its publish fails, once", n, users)
		}
		flaky.set(false)
		waitFor(t, consumeTimeout, "every notification-sent", func() bool { return count(t, k.Brokers, r.out) >= users })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := count(t, k.Brokers, r.out); n != users {
			t.Errorf("notification-sent holds %d records; want %d", n, users)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records after a Kafka outage; want 0", n)
		}
		if n := len(notifier.Sent()); n != users {
			t.Errorf("sent %d emails; want %d, one per user", n, users)
		}
		perUser := map[string]int{}
		for _, m := range notifier.Sent() {
			perUser[m.UserID.String()]++
		}
		if len(perUser) != users {
			t.Errorf("emailed %d distinct users; want %d, each once", len(perUser), users)
		}
		if !strings.Contains(d.logs.String(), "route resumed") {
			t.Error("no 'route resumed' in the log after the outage")
		}
	})
}
