package app_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

const consumeTimeout = 60 * time.Second

func TestValidEventYieldsOneNotificationSent(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		notifier := &recorder{}
		d := startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier})
		kafkatest.Produce(t, k.Brokers, r.in, event(123, "test@example.com"), event("abc", "abc@example.com"))

		got := kafkatest.Consume(t, k.Brokers, r.out, 2, consumeTimeout)
		if len(got) != 2 {
			t.Fatalf("got %d notification-sent records; want 2", len(got))
		}
		// The two users are handled at once, so their announcements may
		// come in either order: take them in the order of their events.
		slices.SortFunc(got, func(a, b *sarama.ConsumerMessage) int {
			return strings.Compare(sourceOf(t, a), sourceOf(t, b))
		})
		wantUserIDs := []string{`123`, `"abc"`}
		for i, rec := range got {
			var ev map[string]json.RawMessage
			if err := json.Unmarshal(rec.Value, &ev); err != nil {
				t.Fatalf("notification-sent %s: %v", rec.Value, err)
			}
			if string(ev["user_id"]) != wantUserIDs[i] {
				t.Errorf("notification-sent user_id = %s; want %s as it arrived", ev["user_id"], wantUserIDs[i])
			}
			if want := strings.Trim(wantUserIDs[i], `"`); string(rec.Key) != want {
				t.Errorf("notification-sent key = %q; want the user id %q", rec.Key, want)
			}
			if want := fmt.Sprintf(`"%s/0/%d"`, r.in, i); string(ev["source_event_id"]) != want {
				t.Errorf("source_event_id = %s; want %s (topic/partition/offset)", ev["source_event_id"], want)
			}
			for _, field := range []string{"email", "channel", "template", "sent_at"} {
				if len(ev[field]) == 0 {
					t.Errorf("notification-sent %s lacks %q", rec.Value, field)
				}
			}
			if c, _ := kafkatest.Header(rec, middleware.CorrelationIDMetadataKey); c == "" {
				t.Errorf("notification-sent has no %s header", middleware.CorrelationIDMetadataKey)
			}
		}
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := count(t, k.Brokers, r.out); n != 2 {
			t.Errorf("%s holds %d records after stop; want exactly 2", r.out, n)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("%s holds %d records; want 0", r.poison, n)
		}
		if calls := notifier.Calls(); calls != 2 {
			t.Errorf("notifier called %d times; want 2", calls)
		}
	})
}

// sourceOf returns a notification-sent record's source_event_id, with its
// offset padded so that identities sort in offset order.
func sourceOf(t *testing.T, rec *sarama.ConsumerMessage) string {
	t.Helper()
	var ev struct {
		SourceEventID string `json:"source_event_id"`
	}
	if err := json.Unmarshal(rec.Value, &ev); err != nil {
		t.Fatalf("notification-sent %s: %v", rec.Value, err)
	}
	p, o := sourceOffset(t, ev.SourceEventID)
	return fmt.Sprintf("%010d/%020d", p, o)
}

// countingRegistry wraps the notification handler to count its calls.
func countingRegistry(calls *int64counter) map[string]handlers.Spec {
	reg := handlers.Registry()
	reg["notification"] = reg["notification"].Wrapped(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			calls.add(1)
			return h(msg)
		}
	})
	return reg
}

func TestBadInputIsPoisonedWithoutRetries(t *testing.T) {
	bad := []struct {
		name, value, reason string
		key                 []byte
	}{
		{"not json", `hello`, "not a JSON object", []byte("k1")},
		{"json array", `[{"user_id": 1}]`, "not a JSON object", []byte("k2")},
		{"empty value", ``, "empty value", []byte("k3")},
		{"missing email", `{"user_id": 1}`, "email is missing", []byte("k4")},
		{"invalid email", `{"user_id": 1, "email": "nope"}`, `email is not an address`, []byte("k5")},
		{"missing user id", `{"email": "a@b.co"}`, "user_id is missing", []byte("k6")},
		{"binary garbage", "\x00\xff\xfe\x01\x80", "not UTF-8", nil},
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		notifier := &recorder{}
		calls := &int64counter{}
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier, Registry: countingRegistry(calls)})
		for _, b := range bad {
			kafkatest.Produce(t, k.Brokers, r.in, kafkatest.Record{Key: b.key, Value: []byte(b.value), Headers: map[string]string{"case": b.name}})
		}
		kafkatest.Produce(t, k.Brokers, r.in, event(9, "ok@example.com"))

		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, len(bad), consumeTimeout)
		if len(poisoned) != len(bad) {
			t.Fatalf("got %d poison records; want %d", len(poisoned), len(bad))
		}
		// Records with different keys are handled at once and may be
		// poisoned in any order: take them in the order they came.
		slices.SortFunc(poisoned, func(a, b *sarama.ConsumerMessage) int {
			x, _ := kafkatest.Header(a, app.PoisonedOffsetKey)
			y, _ := kafkatest.Header(b, app.PoisonedOffsetKey)
			i, _ := strconv.Atoi(x)
			j, _ := strconv.Atoi(y)
			return i - j
		})
		for i, rec := range poisoned {
			b := bad[i]
			reason, _ := kafkatest.Header(rec, middleware.ReasonForPoisonedKey)
			if !strings.Contains(reason, b.reason) {
				t.Errorf("%s: reason_poisoned = %q; want it to contain %q", b.name, reason, b.reason)
			}
			if string(rec.Value) != b.value || string(rec.Key) != string(b.key) {
				t.Errorf("%s: poison record = key %q value %q; want the original key %q value %q", b.name, rec.Key, rec.Value, b.key, b.value)
			}
			wantHeaders := map[string]string{
				"case":                           b.name,
				middleware.PoisonedTopicKey:      r.in,
				middleware.PoisonedHandlerKey:    "welcome",
				app.PoisonedPartitionKey:         "0",
				app.PoisonedOffsetKey:            fmt.Sprint(i),
				middleware.PoisonedSubscriberKey: "",
			}
			for key, want := range wantHeaders {
				got, ok := kafkatest.Header(rec, key)
				if !ok || (want != "" && got != want) {
					t.Errorf("%s: header %s = %q (present %v); want %q", b.name, key, got, ok, want)
				}
			}
		}
		if got := kafkatest.Consume(t, k.Brokers, r.out, 1, consumeTimeout); len(got) != 1 {
			t.Fatalf("the good event after the bad ones yielded %d notification-sent; want 1", len(got))
		}
		if got, want := calls.get(), int64(len(bad)+1); got != want {
			t.Errorf("handler ran %d times for %d records; want %d: bad input must not be retried", got, len(bad)+1, want)
		}
	})
}

func TestTransientFailureIsRetried(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		notifier := &recorder{before: func(call int) error {
			if call <= 2 {
				return errors.New("mail server busy")
			}
			return nil
		}}
		d := startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier})
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "a@example.com"))

		if got := kafkatest.Consume(t, k.Brokers, r.out, 1, consumeTimeout); len(got) != 1 {
			t.Fatalf("got %d notification-sent; want 1 after retries", len(got))
		}
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if calls := notifier.Calls(); calls != 3 {
			t.Errorf("notifier called %d times; want 3 (2 failures, then success)", calls)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records; want 0", n)
		}
		if n := count(t, k.Brokers, r.out); n != 1 {
			t.Errorf("notification-sent holds %d records; want 1", n)
		}
	})
}

func TestPanicIsRecoveredRetriedThenPoisoned(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		notifier := &recorder{before: func(int) error { panic("notifier bug") }}
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier})
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "a@example.com"), event(2, "b@example.com"))

		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, 2, consumeTimeout)
		if len(poisoned) != 2 {
			t.Fatalf("got %d poison records; want 2", len(poisoned))
		}
		reason, _ := kafkatest.Header(poisoned[0], middleware.ReasonForPoisonedKey)
		if !strings.Contains(reason, "panic occurred") || !strings.Contains(reason, "notifier bug") {
			t.Errorf("reason_poisoned = %q; want the recovered panic", reason)
		}
		// max_retries is 3: one attempt and three retries per event.
		if calls := notifier.Calls(); calls != 8 {
			t.Errorf("notifier called %d times for 2 events; want 8", calls)
		}
	})
}

func TestRestartReprocessesNothing(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		cfg := testConfig(t, k.Brokers, r, "")

		first := &recorder{}
		d := startDaemon(t, cfg, app.Options{Notifier: first})
		for i := range 5 {
			kafkatest.Produce(t, k.Brokers, r.in, event(i, fmt.Sprintf("u%d@example.com", i)))
		}
		waitFor(t, consumeTimeout, "5 notifications", func() bool { return first.Calls() == 5 })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}

		second := &recorder{}
		d = startDaemon(t, cfg, app.Options{Notifier: second})
		for i := 5; i < 8; i++ {
			kafkatest.Produce(t, k.Brokers, r.in, event(i, fmt.Sprintf("u%d@example.com", i)))
		}
		waitFor(t, consumeTimeout, "3 more notifications", func() bool { return second.Calls() >= 3 })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if calls := second.Calls(); calls != 3 {
			t.Errorf("after a restart the notifier was called %d times for 3 new events; want 3", calls)
		}
		if n := count(t, k.Brokers, r.out); n != 8 {
			t.Errorf("notification-sent holds %d records for 8 events; want 8", n)
		}
	})
}

func TestStopFinishesInFlightMessages(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		cfg := testConfig(t, k.Brokers, r, "")
		entered := make(chan struct{})
		release := make(chan struct{})
		first := &recorder{before: func(call int) error {
			if call == 1 {
				close(entered)
				<-release
			}
			return nil
		}}
		d := startDaemon(t, cfg, app.Options{Notifier: first})
		// One Kafka key, so that the second waits for the first, as it
		// would in partition mode.
		slow, next := event(1, "slow@example.com"), event(2, "next@example.com")
		next.Key = slow.Key
		kafkatest.Produce(t, k.Brokers, r.in, slow, next)
		select {
		case <-entered:
		case <-time.After(consumeTimeout):
			t.Fatal("the handler never started")
		}

		stopped := make(chan error, 1)
		go func() { stopped <- d.stop() }()
		time.Sleep(300 * time.Millisecond) // the stop is under way while the handler still works
		close(release)
		if err := <-stopped; err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := count(t, k.Brokers, r.out); n != 1 {
			t.Errorf("notification-sent holds %d records after the stop; want 1: the in-flight event finishes, the next is not taken", n)
		}

		second := &recorder{}
		d = startDaemon(t, cfg, app.Options{Notifier: second})
		kafkatest.Produce(t, k.Brokers, r.in, event(3, "third@example.com"))
		waitFor(t, consumeTimeout, "the events after the restart", func() bool { return second.Calls() >= 2 })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		var emails []string
		for _, m := range second.Sent() {
			emails = append(emails, m.Email)
		}
		slices.Sort(emails)
		if strings.Join(emails, ",") != "next@example.com,third@example.com" {
			t.Errorf("after the restart the notifier sent to %v; want [next@example.com third@example.com]: the in-flight event was committed", emails)
		}
	})
}

func TestFailedPoisonPublishIsNotAcked(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		cfg := testConfig(t, k.Brokers, r, "")
		cfg.Router.ShutdownTimeout = 2 * time.Second
		d := startDaemon(t, cfg, app.Options{Notifier: &recorder{}})
		// The broker takes this record, just under its 1,048,588-byte
		// message.max.bytes, but the daemon's producer refuses to write it
		// again with the poison headers: that exceeds 1 MiB.
		kafkatest.Produce(t, k.Brokers, r.in, kafkatest.Record{Value: []byte(strings.Repeat("x", 1_048_300))})
		waitFor(t, consumeTimeout, "a failed poison publish", func() bool {
			return strings.Count(d.logs.String(), "cannot publish message to poison queue") >= 2
		})
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records; want 0", n)
		}
		if off := committed(t, k.Brokers, r.group, r.in, 0); off > 0 {
			t.Errorf("group %s committed offset %d; want nothing committed: a record that could not be poisoned is not acked", r.group, off)
		}
	})
}
