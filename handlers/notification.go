package handlers

import (
	"context"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/record"
)

// Notifier delivers a notification through one channel.
type Notifier interface {
	// Channel names the channel, such as "log" or "email".
	Channel() string
	// Send delivers m. An error wrapped with Permanent is not retried.
	Send(ctx context.Context, m notify.Message) error
}

// WelcomeTemplate names the notification sent to a new user.
const WelcomeTemplate = "welcome"

// notificationSentNamespace seeds the UUIDs of notification-sent events, so
// that a redelivered user-registered event yields the same UUID and
// consumers can drop the duplicate.
var notificationSentNamespace = uuid.MustParse("6c4a2f0e-8a53-4c1b-9d0c-1f7f3f0b7a21")

// Notification welcomes users: it turns a user-registered event into a
// welcome notification and a notification-sent event.
type Notification struct {
	// Notifier delivers the notification.
	Notifier Notifier
	// Now returns the current time.
	Now func() time.Time
}

// Handle is the Watermill handler func.
func (h Notification) Handle(msg *message.Message) ([]*message.Message, error) {
	ev, err := events.DecodeUserRegistered(msg.Payload)
	if err != nil {
		return nil, Permanent(err)
	}
	sent, err := h.welcome(msg.Context(), ev, msg.UUID)
	if err != nil {
		return nil, err
	}
	payload, err := sent.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode notification-sent: %w", err)
	}
	out := message.NewMessage(uuid.NewSHA1(notificationSentNamespace, []byte(msg.UUID)).String(), payload)
	out.SetContext(record.WithKey(context.Background(), ev.UserID.String()))
	return []*message.Message{out}, nil
}

func (h Notification) welcome(ctx context.Context, ev events.UserRegistered, eventID string) (events.NotificationSent, error) {
	err := h.Notifier.Send(ctx, notify.Message{
		Template: WelcomeTemplate,
		UserID:   ev.UserID,
		Email:    ev.Email,
		EventID:  eventID,
	})
	if err != nil {
		return events.NotificationSent{}, fmt.Errorf("send welcome notification to user %s: %w", ev.UserID, err)
	}
	return events.NotificationSent{
		UserID:        ev.UserID,
		Email:         ev.Email,
		Channel:       h.Notifier.Channel(),
		Template:      WelcomeTemplate,
		SentAt:        h.Now().UTC(),
		SourceEventID: eventID,
	}, nil
}
