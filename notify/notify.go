// Package notify delivers notifications to users.
package notify

import (
	"context"
	"log/slog"

	"github.com/eventrouter/eventrouter/events"
)

// Message is one notification to one user.
type Message struct {
	// Template names the content, such as "welcome".
	Template string
	// UserID is the user the notification is for.
	UserID events.UserID
	// Email is the address it goes to.
	Email string
	// EventID identifies the event that caused it.
	EventID string
	// Key identifies the notification itself: the same key is the same
	// notification, however often it is sent. Channels that can, pass it on
	// (an email's Message-ID) so that receivers can drop duplicates.
	Key string
}

// Log is a notifier that writes one structured log line per notification
// instead of delivering it. It is the default, for development.
type Log struct {
	// Logger receives the lines.
	Logger *slog.Logger
}

// Channel returns "log".
func (Log) Channel() string { return "log" }

// Send writes the notification as one log line. The address is personal
// data: it is on the line only when the logger is at debug level.
func (l Log) Send(ctx context.Context, m Message) error {
	attrs := []slog.Attr{
		slog.String("channel", "log"),
		slog.String("template", m.Template),
		slog.String("user_id", m.UserID.String()),
		slog.String("event_id", m.EventID),
	}
	if l.Logger.Enabled(ctx, slog.LevelDebug) {
		attrs = append(attrs, slog.String("email", m.Email))
	}
	l.Logger.LogAttrs(ctx, slog.LevelInfo, "notification sent", attrs...)
	return nil
}

// None is a notifier that drops every notification: for benchmarks and
// dry runs.
type None struct{}

// Channel returns "none".
func (None) Channel() string { return "none" }

// Send does nothing.
func (None) Send(context.Context, Message) error { return nil }
