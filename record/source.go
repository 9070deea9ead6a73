package record

import "context"

type sourceContextKey struct{}

// WithSource returns a context that names the record a message was
// consumed from, as ID gives it. The router sets it from what the broker
// said, so that, unlike a producer's message UUID header, it is
// trustworthy and unique.
func WithSource(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, sourceContextKey{}, id)
}

// Source returns the record identity WithSource put in ctx.
func Source(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(sourceContextKey{}).(string)
	return id, ok
}
