package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/record"
	"github.com/eventrouter/eventrouter/retry"
)

// Notifier delivers a notification through one channel.
type Notifier interface {
	// Channel names the channel, such as "log" or "email".
	Channel() string
	// Send delivers m. An error marked retry.Permanent is not retried; one
	// marked retry.Unavailable pauses the route until the channel is back.
	Send(ctx context.Context, m notify.Message) error
}

// Ledger remembers which notifications went out, so that a redelivered or
// repeated event sends none again.
type Ledger interface {
	Lookup(key string) (ledger.Entry, bool, error)
	Record(key string, e ledger.Entry) error
}

// WelcomeTemplate names the notification sent to a new user.
const WelcomeTemplate = "welcome"

// notificationSentNamespace seeds the UUIDs of notification-sent events, so
// that a redelivered user-registered event yields the same UUID and
// consumers can drop the duplicate.
var notificationSentNamespace = uuid.MustParse("6c4a2f0e-8a53-4c1b-9d0c-1f7f3f0b7a21")

// Notification welcomes users: it turns a user-registered event into one
// welcome notification per user and a notification-sent event.
type Notification struct {
	// Notifier delivers the notification.
	Notifier Notifier
	// Ledger records what was sent. Without one, every delivery of an
	// event sends again.
	Ledger Ledger
	// Now returns the current time.
	Now func() time.Time
}

// Handle is the Watermill handler func.
func (h Notification) Handle(msg *message.Message) ([]*message.Message, error) {
	ev, err := events.DecodeUserRegistered(msg.Payload)
	if err != nil {
		return nil, retry.Permanent(err)
	}
	// The email is unique per template and user, so a registration
	// published twice still sends one.
	key := WelcomeTemplate + "/" + ev.UserID.String()
	entry, done, err := h.lookup(key)
	if err != nil {
		return nil, err
	}
	if done && entry.Published {
		return nil, nil
	}
	if !done {
		if entry, err = h.welcome(msg.Context(), key, ev, msg.UUID); err != nil {
			return nil, err
		}
	}
	sent := events.NotificationSent{
		UserID:        ev.UserID,
		Email:         ev.Email,
		Channel:       entry.Channel,
		Template:      WelcomeTemplate,
		SentAt:        entry.SentAt,
		SourceEventID: entry.EventID,
	}
	payload, err := sent.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode notification-sent: %w", err)
	}
	out := message.NewMessage(uuid.NewSHA1(notificationSentNamespace, []byte(entry.EventID)).String(), payload)
	out.SetContext(ledger.WithKey(record.WithKey(context.Background(), ev.UserID.String()), key))
	return []*message.Message{out}, nil
}

func (h Notification) lookup(key string) (ledger.Entry, bool, error) {
	if h.Ledger == nil {
		return ledger.Entry{}, false, nil
	}
	return h.Ledger.Lookup(key)
}

// welcome sends the notification and records it at once, to keep the
// window in which a crash repeats it as small as one disk write.
func (h Notification) welcome(ctx context.Context, key string, ev events.UserRegistered, eventID string) (ledger.Entry, error) {
	err := h.Notifier.Send(ctx, notify.Message{
		Template: WelcomeTemplate,
		UserID:   ev.UserID,
		Email:    ev.Email,
		EventID:  eventID,
		Key:      key,
	})
	if err != nil {
		return ledger.Entry{}, fmt.Errorf("send welcome notification to user %s: %w", ev.UserID, err)
	}
	entry := ledger.Entry{EventID: eventID, Channel: h.Notifier.Channel(), SentAt: h.Now().UTC()}
	if h.Ledger != nil {
		if err := h.Ledger.Record(key, entry); err != nil {
			return ledger.Entry{}, fmt.Errorf("welcome notification to user %s went out but was not recorded: %w", ev.UserID, err)
		}
	}
	return entry, nil
}
