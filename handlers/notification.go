package handlers

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
)

// Notifier delivers a notification through one channel.
type Notifier interface {
	// Channel names the channel, such as "log" or "email".
	Channel() string
	// Send delivers m. An error marked retry.Permanent is not retried; one
	// marked retry.Unavailable pauses the route until the channel is back.
	// Send returns nil once the channel has accepted m, even if something
	// failed after that, so that m is not sent twice.
	Send(ctx context.Context, m notify.Message) error
}

// Ledger remembers which notifications went out, so that a redelivered or
// repeated event sends none again.
type Ledger interface {
	// Claim takes key until release is called, so that no other handler
	// (of this process or, with a shared ledger, of any instance) sends the
	// same notification meanwhile, and returns what was recorded under key.
	// A ledger it cannot reach is a retry.Unavailable error.
	Claim(ctx context.Context, key string) (e ledger.Entry, found bool, release func(), err error)
	// Record stores e under key; when it fails, e still counts as found
	// for this process.
	Record(ctx context.Context, key string, e ledger.Entry) error
}

// WelcomeTemplate names the notification sent to a new user.
const WelcomeTemplate = "welcome"

// notificationSentNamespace seeds the UUIDs of notification-sent events, so
// that every announcement of one notification has the same UUID and
// consumers can drop the duplicates.
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
	// Logger receives a line for each notification skipped because it was
	// sent before. Nil logs nothing.
	Logger *slog.Logger
	// Skipped, if set, counts those notifications.
	Skipped func(ctx context.Context, template string)
}

// newNotification builds the notification handler of a route, which
// takes no options.
func newNotification(_ any, s Services) (Handler, error) {
	skipped, err := RegisterCounter(s.Metrics(), prometheus.CounterOpts{
		Name: "eventrouter_notifications_skipped_total",
		Help: "Notifications not sent again because the ledger says they went out before (repeated or redelivered events).",
	}, "template")
	if err != nil {
		return nil, fmt.Errorf("notification metrics: %w", err)
	}
	// The series exists from the start, at zero.
	skipped.WithLabelValues(WelcomeTemplate)
	return Notification{
		Notifier: s.Notifier(), Ledger: s.Ledger(), Now: s.Now, Logger: s.Logger(),
		Skipped: func(_ context.Context, template string) { skipped.WithLabelValues(template).Inc() },
	}, nil
}

// Close does nothing: the notifier and the ledger are the daemon's.
func (Notification) Close() error { return nil }

// Handle turns one user-registered event into a welcome notification.
func (h Notification) Handle(msg *message.Message) ([]*message.Message, error) {
	ev, err := events.DecodeUserRegistered(msg.Payload)
	if err != nil {
		return nil, retry.Permanent(err)
	}
	ctx := msg.Context()
	// The email is unique per template and user, so a registration
	// published twice still sends one.
	key := WelcomeTemplate + "/" + ev.UserID.String()
	entry, found, release, err := h.claim(ctx, key)
	var keyErr *ledger.KeyError
	if errors.As(err, &keyErr) {
		return nil, retry.Permanent(fmt.Errorf("user %.64s...: %w", ev.UserID, err))
	}
	if err != nil {
		return nil, err
	}
	defer release()

	switch {
	case !found:
		if entry, err = h.welcome(ctx, key, ev, source(msg)); err != nil {
			return nil, err
		}
	case entry.Unsaved:
		// Sent by an earlier attempt whose ledger write failed: write it
		// now, and do not send again.
		if err := h.Ledger.Record(ctx, key, entry); err != nil {
			return nil, fmt.Errorf("welcome notification to user %s was sent but is still not recorded: %w", ev.UserID, err)
		}
	case entry.Published:
		h.skipped(ctx, msg, ev, entry, "welcome notification already sent and announced; skipped")
		return nil, nil
	default:
		h.skipped(ctx, msg, ev, entry, "welcome notification already sent; announcing it again")
	}

	email := entry.Address
	if email == "" {
		// Entries written before the ledger kept addresses.
		email = ev.Email
	}
	sent := events.NotificationSent{
		UserID:        ev.UserID,
		Email:         email,
		Channel:       entry.Channel,
		Template:      WelcomeTemplate,
		SentAt:        entry.SentAt,
		SourceEventID: entry.EventID,
	}
	payload, err := sent.Encode()
	if err != nil {
		return nil, fmt.Errorf("encode notification-sent: %w", err)
	}
	out := message.NewMessage(uuid.NewSHA1(notificationSentNamespace, []byte(key)).String(), payload)
	out.SetContext(ledger.WithKey(record.WithKey(context.Background(), ev.UserID.String()), key))
	return []*message.Message{out}, nil
}

// source returns the identity of the record msg came from: its topic,
// partition and offset when the router knows them. A producer's UUID header
// is only the fallback: producers can reuse one.
func source(msg *message.Message) string {
	if o, ok := record.OriginFrom(msg.Context()); ok {
		return o.ID()
	}
	return msg.UUID
}

func (h Notification) claim(ctx context.Context, key string) (ledger.Entry, bool, func(), error) {
	if h.Ledger == nil {
		return ledger.Entry{}, false, func() {}, nil
	}
	return h.Ledger.Claim(ctx, key)
}

// skipped reports a notification not sent because the ledger has it. The
// record that sent it, come again (a retry after a failed publish, a
// redelivery), is no repeated registration: it is logged at debug only
// and not counted.
func (h Notification) skipped(ctx context.Context, msg *message.Message, ev events.UserRegistered, e ledger.Entry, text string) {
	level := slog.LevelDebug
	if e.EventID != source(msg) {
		level = slog.LevelInfo
		if h.Skipped != nil {
			h.Skipped(ctx, WelcomeTemplate)
		}
	}
	if h.Logger != nil {
		h.Logger.Log(ctx, level, text, "user_id", ev.UserID.String(), "first_event", e.EventID,
			"sent_at", e.SentAt.Format(time.RFC3339))
	}
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
	entry := ledger.Entry{EventID: eventID, Channel: h.Notifier.Channel(), Address: ev.Email, SentAt: h.Now().UTC()}
	if h.Ledger != nil {
		if err := h.Ledger.Record(ctx, key, entry); err != nil {
			// The ledger keeps the entry in memory: a retry records it and
			// sends nothing.
			return ledger.Entry{}, fmt.Errorf("welcome notification to user %s went out but was not recorded: %w", ev.UserID, err)
		}
	}
	return entry, nil
}
