package handlers_test

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/record"
	"github.com/eventrouter/eventrouter/retry"
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

func TestRegistryBuildsEveryHandler(t *testing.T) {
	deps := handlers.Deps{Notifier: &fakeNotifier{}, Now: time.Now}
	for _, name := range handlers.Names(handlers.Registry()) {
		if handlers.Registry()[name].New(deps) == nil {
			t.Errorf("Registry()[%q].New() = nil; want a handler func", name)
		}
	}
}
