// Package msglog puts a message's identity (route, topic, partition, offset,
// correlation ID) on every log line written about it. A middleware stores
// the attributes in the message's context with With; a Handler wrapping the
// process's slog handler adds them to each record logged with that context.
package msglog

import (
	"context"
	"log/slog"
)

type attrsKey struct{}

// With returns a context whose log lines carry attrs, after those ctx
// already carries.
func With(ctx context.Context, attrs ...slog.Attr) context.Context {
	prev, _ := ctx.Value(attrsKey{}).([]slog.Attr)
	all := make([]slog.Attr, 0, len(prev)+len(attrs))
	all = append(append(all, prev...), attrs...)
	return context.WithValue(ctx, attrsKey{}, all)
}

// Handler adds the attributes With stored in a record's context.
type Handler struct {
	slog.Handler
}

// Handle adds the context's attributes to r and passes it on.
func (h Handler) Handle(ctx context.Context, r slog.Record) error {
	if attrs, ok := ctx.Value(attrsKey{}).([]slog.Attr); ok {
		r = r.Clone()
		r.AddAttrs(attrs...)
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs keeps the wrapper around the derived handler.
func (h Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return Handler{h.Handler.WithAttrs(attrs)}
}

// WithGroup keeps the wrapper around the derived handler.
func (h Handler) WithGroup(name string) slog.Handler {
	return Handler{h.Handler.WithGroup(name)}
}
