// Package handlers holds the router's handlers and the registry that routes
// name them from.
package handlers

import (
	"context"
	"log/slog"
	"sort"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Deps are what handlers are built from. The app fills them in once.
type Deps struct {
	// Notifier delivers notifications.
	Notifier Notifier
	// Ledger records notifications that went out.
	Ledger Ledger
	// Now returns the current time.
	Now func() time.Time
	// Logger is the daemon's logger.
	Logger *slog.Logger
	// Skipped counts notifications not sent again because the ledger
	// says they went out before.
	Skipped func(ctx context.Context, template string)
}

// Spec describes a handler that a route can name.
type Spec struct {
	// New builds the handler func.
	New func(Deps) message.HandlerFunc
	// Publishes says the handler produces events, so its route needs a
	// publish_topic.
	Publishes bool
}

// Registry returns every handler, by the name routes use in the YAML.
// Adding a handler is one line here and a route in the YAML.
func Registry() map[string]Spec {
	return map[string]Spec{
		"notification": {New: func(d Deps) message.HandlerFunc {
			return Notification{Notifier: d.Notifier, Ledger: d.Ledger, Now: d.Now, Logger: d.Logger, Skipped: d.Skipped}.Handle
		}, Publishes: true},
	}
}

// Names returns the registry's handler names, sorted.
func Names(r map[string]Spec) []string {
	names := make([]string, 0, len(r))
	for name := range r {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}
