package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/handlertest"
)

type fakeNotifier struct {
	sent []notify.Message
	err  error
}

func (f *fakeNotifier) Channel() string { return "fake" }

func (f *fakeNotifier) Send(_ context.Context, m notify.Message) error {
	if f.err != nil {
		return f.err
	}
	f.sent = append(f.sent, m)
	return nil
}

var now = time.Date(2026, 11, 25, 8, 0, 0, 0, time.UTC)

func TestNotificationHandle(t *testing.T) {
	n := &fakeNotifier{}
	h := handlers.Notification{Notifier: n, Now: func() time.Time { return now }}
	msg := message.NewMessage("user-registered/0/42", []byte(`{"user_id": 123, "email": "test@example.com"}`))

	out, err := h.Handle(msg)
	if err != nil {
		t.Fatalf("Handle() = %v; want no error", err)
	}
	if len(n.sent) != 1 || n.sent[0].Email != "test@example.com" || n.sent[0].Template != "welcome" || n.sent[0].EventID != msg.UUID {
		t.Fatalf("notifier got %+v; want one welcome to test@example.com for %s", n.sent, msg.UUID)
	}
	if len(out) != 1 {
		t.Fatalf("Handle() produced %d messages; want 1", len(out))
	}
	var got map[string]any
	if err := json.Unmarshal(out[0].Payload, &got); err != nil {
		t.Fatalf("notification-sent payload %s: %v", out[0].Payload, err)
	}
	want := map[string]any{
		"user_id": 123.0, "email": "test@example.com", "channel": "fake", "template": "welcome",
		"sent_at": "2026-11-25T08:00:00Z", "source_event_id": "user-registered/0/42",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("notification-sent[%q] = %v; want %v", k, got[k], v)
		}
	}
	if key, _ := record.Key(out[0].Context()); string(key) != "123" {
		t.Errorf("notification-sent key = %q; want %q", key, "123")
	}

	again, _ := h.Handle(message.NewMessage(msg.UUID, msg.Payload))
	if again[0].UUID != out[0].UUID {
		t.Errorf("redelivered event got UUID %s; want the same %s, so consumers can drop duplicates", again[0].UUID, out[0].UUID)
	}
}

func TestNotificationHandleErrors(t *testing.T) {
	tests := []struct {
		name          string
		payload       string
		notifyErr     error
		wantPermanent bool
	}{
		{"invalid event", `{"user_id": 1}`, nil, true},
		{"not json", `nope`, nil, true},
		{"transient notifier failure", `{"user_id": 1, "email": "a@b.co"}`, errors.New("connection refused"), false},
		{"permanent notifier failure", `{"user_id": 1, "email": "a@b.co"}`, retry.Permanent(errors.New("550 no such user")), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := handlers.Notification{Notifier: &fakeNotifier{err: tt.notifyErr}, Now: time.Now}
			out, err := h.Handle(message.NewMessage("id", []byte(tt.payload)))
			if err == nil || out != nil {
				t.Fatalf("Handle(%q) = %v, %v; want no messages and an error", tt.payload, out, err)
			}
			if got := retry.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("IsPermanent(Handle(%q)) = %v (%v); want %v", tt.payload, got, err, tt.wantPermanent)
			}
		})
	}
}

func openLedger(t *testing.T) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// Item 1 of "once means once": SMTP accepted the email, the ledger write
// failed. The retry must record it, not send it again.
func TestSentButUnrecordedIsNotSentAgain(t *testing.T) {
	l := &brokenLedger{entries: map[string]ledger.Entry{}, failures: 3}
	n := &fakeNotifier{}
	h := handlers.Notification{Notifier: n, Ledger: l, Now: time.Now}
	payload := []byte(`{"user_id": 7, "email": "seven@example.com"}`)
	for attempt := 1; attempt <= 3; attempt++ {
		out, err := h.Handle(message.NewMessage("id", payload))
		if err == nil || out != nil || retry.IsPermanent(err) {
			t.Fatalf("attempt %d = %v, %v; want a retryable error while the ledger cannot write", attempt, out, err)
		}
	}
	out, err := h.Handle(message.NewMessage("id", payload))
	if err != nil || len(out) != 1 {
		t.Fatalf("attempt 4 = %v, %v; want notification-sent once the ledger writes", out, err)
	}
	if len(n.sent) != 1 {
		t.Errorf("notifier sent %d emails over 4 attempts; want 1", len(n.sent))
	}
	if e := l.entries["welcome/7"]; e.Unsaved || e.Address != "seven@example.com" {
		t.Errorf("ledger entry = %+v; want it saved with the address", e)
	}
}

// brokenLedger fails its first writes the way ledger.Ledger does: the
// entry is kept, marked Unsaved.
type brokenLedger struct {
	mu       sync.Mutex
	entries  map[string]ledger.Entry
	failures int
}

func (b *brokenLedger) Claim(_ context.Context, key string) (ledger.Entry, bool, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.entries[key]
	return e, ok, func() {}, nil
}

func (b *brokenLedger) Record(_ context.Context, key string, e ledger.Entry) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	e.Unsaved = b.failures > 0
	b.entries[key] = e
	if b.failures > 0 {
		b.failures--
		return errors.New("no space left on device")
	}
	return nil
}

// Item 3: two handlers of the same user, on two partitions, at once.
func TestConcurrentRegistrationsSendOnce(t *testing.T) {
	l := openLedger(t)
	n := &slowNotifier{}
	h := handlers.Notification{Notifier: n, Ledger: l, Now: time.Now}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := h.Handle(message.NewMessage(fmt.Sprint(i), []byte(`{"user_id": "u1", "email": "u1@example.com"}`)))
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Handle = %v; want nil", err)
		}
	}
	if got := n.count.Load(); got != 1 {
		t.Errorf("8 concurrent registrations of one user sent %d emails; want 1", got)
	}
}

type slowNotifier struct{ count atomic.Int64 }

func (s *slowNotifier) Channel() string { return "slow" }

func (s *slowNotifier) Send(ctx context.Context, _ notify.Message) error {
	s.count.Add(1)
	select {
	case <-time.After(20 * time.Millisecond): // a mail server's round trips
	case <-ctx.Done():
	}
	return nil
}

// Item 3: a repeated registration with a new address announces the address
// the email actually went to.
func TestRepeatedRegistrationAnnouncesTheAddressUsed(t *testing.T) {
	l := openLedger(t)
	n := &fakeNotifier{}
	var skipped atomic.Int64
	h := handlers.Notification{Notifier: n, Ledger: l, Now: time.Now,
		Skipped: func(context.Context, string) { skipped.Add(1) }}
	first, err := h.Handle(message.NewMessage("a", []byte(`{"user_id": 9, "email": "old@example.com"}`)))
	if err != nil {
		t.Fatal(err)
	}
	// Not yet marked published: the repeat announces it again.
	again, err := h.Handle(message.NewMessage("b", []byte(`{"user_id": 9, "email": "new@example.com"}`)))
	if err != nil || len(again) != 1 {
		t.Fatalf("repeat = %v, %v; want one notification-sent", again, err)
	}
	var got events.NotificationSent
	if err := json.Unmarshal(again[0].Payload, &got); err != nil {
		t.Fatal(err)
	}
	if got.Email != "old@example.com" || got.SourceEventID != "a" {
		t.Errorf("repeat announced email %q from event %q; want old@example.com from a", got.Email, got.SourceEventID)
	}
	if again[0].UUID != first[0].UUID {
		t.Errorf("repeat's UUID %s; want the first's %s", again[0].UUID, first[0].UUID)
	}
	// The first record again (a retry after a failed publish, a
	// redelivery) is not a repeated registration: not counted.
	if _, err := h.Handle(message.NewMessage("a", []byte(`{"user_id": 9, "email": "old@example.com"}`))); err != nil {
		t.Fatal(err)
	}
	if len(n.sent) != 1 || skipped.Load() != 1 {
		t.Errorf("sent %d emails, skipped %d; want 1 and 1", len(n.sent), skipped.Load())
	}
}

// Item 11: the producer's UUID header must not decide the identity of the
// events we publish: two users' events that share one must not share the
// notification-sent UUID, or consumers drop one as a duplicate.
func TestProducerUUIDDoesNotDecideIdentity(t *testing.T) {
	h := handlers.Notification{Notifier: &fakeNotifier{}, Ledger: openLedger(t), Now: time.Now}
	a := message.NewMessage("same", []byte(`{"user_id": 1, "email": "a@example.com"}`))
	a.SetContext(record.WithOrigin(context.Background(), record.Origin{Topic: "user-registered", Offset: 10}))
	b := message.NewMessage("same", []byte(`{"user_id": 2, "email": "b@example.com"}`))
	b.SetContext(record.WithOrigin(context.Background(), record.Origin{Topic: "user-registered", Offset: 11}))
	outA, errA := h.Handle(a)
	outB, errB := h.Handle(b)
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if outA[0].UUID == outB[0].UUID {
		t.Errorf("two users' notification-sent share UUID %s; want distinct", outA[0].UUID)
	}
	var got events.NotificationSent
	_ = json.Unmarshal(outA[0].Payload, &got)
	if got.SourceEventID != "user-registered/0/10" {
		t.Errorf("source_event_id = %q; want the record identity user-registered/0/10", got.SourceEventID)
	}
}

func TestRegistryBuildsEveryHandler(t *testing.T) {
	// The least options each handler needs; building connects to nothing.
	options := map[string]string{
		"webhook": "url: http://127.0.0.1:1/hook",
		"audit":   "dsn_env: AUDIT_DSN",
	}
	for _, name := range handlers.Names(handlers.Registry()) {
		t.Run(name, func(t *testing.T) {
			s := handlertest.NewServices(t)
			s.Notify = &fakeNotifier{}
			s.Env["AUDIT_DSN"] = "postgres://audit@127.0.0.1:1/audit"
			if h := handlertest.Build(t, handlers.Registry()[name], options[name], s); h == nil {
				t.Errorf("Registry()[%q].New() = nil; want a handler", name)
			}
		})
	}
}

// scripted is a notifier that fails with errs in order, then delivers.
type scripted struct {
	errs []error
	sent int
}

func (s *scripted) Channel() string { return "scripted" }

func (s *scripted) Send(ctx context.Context, _ notify.Message) error {
	if len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return err
	}
	retry.Reached(ctx, notify.Dependency)
	s.sent++
	return nil
}

func TestNotificationThroughTheChain(t *testing.T) {
	good := `{"user_id": 123, "email": "test@example.com"}`
	down := retry.Unavailable(notify.Dependency, errors.New("connection refused"))
	tests := []struct {
		name, payload string
		errs          []error
		// want
		acked, poisoned           bool
		attempts, retries, pauses int
		sent                      int
		reason                    string
	}{
		{name: "delivered", payload: good, acked: true, attempts: 1, sent: 1},
		{name: "not JSON", payload: `hello`, acked: true, poisoned: true, attempts: 1, reason: "not a JSON object"},
		{name: "no user", payload: `{"email": "test@example.com"}`, acked: true, poisoned: true, attempts: 1, reason: "user_id"},
		{name: "transient then delivered", payload: good, errs: []error{errors.New("451 try later"), errors.New("451 try later")},
			acked: true, attempts: 3, retries: 2, sent: 1},
		{name: "recipient refused", payload: good, errs: []error{retry.Permanent(errors.New("550 no such user"))},
			acked: true, poisoned: true, attempts: 1, reason: "550 no such user"},
		{name: "server down", payload: good, errs: []error{down, down, down}, attempts: 3, pauses: 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := &scripted{errs: tt.errs}
			s := handlertest.NewServices(t)
			s.Notify = n
			h := handlertest.Build(t, handlers.Registry()["notification"], "", s)
			res := handlertest.Run(t, h, handlertest.Message(tt.payload, handlertest.At("user-registered", 0, 9), handlertest.Key("123")))
			if res.Acked != tt.acked || res.Poisoned != tt.poisoned || res.Attempts != tt.attempts ||
				res.Retries != tt.retries || res.Pauses != tt.pauses || n.sent != tt.sent {
				t.Fatalf("got acked %v, poisoned %v, %d attempts, %d retries, %d pauses, %d sent (err %v); want %v, %v, %d, %d, %d, %d",
					res.Acked, res.Poisoned, res.Attempts, res.Retries, res.Pauses, n.sent, res.Err,
					tt.acked, tt.poisoned, tt.attempts, tt.retries, tt.pauses, tt.sent)
			}
			if !strings.Contains(res.Reason, tt.reason) {
				t.Errorf("got reason %q; want %q in it", res.Reason, tt.reason)
			}
			if tt.sent == 1 && len(res.Out) != 1 {
				t.Errorf("got %d notification-sent; want 1", len(res.Out))
			}
		})
	}
}
