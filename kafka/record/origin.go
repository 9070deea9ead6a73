package record

import (
	"context"
	"time"
)

// Origin says where a consumed message was read from, as the broker gave
// it. Unlike a producer's message UUID header, it is trustworthy and
// unique: ID names the record.
type Origin struct {
	Topic     string
	Partition int32
	Offset    int64
	// Key is the record's Kafka key; nil when it has none.
	Key []byte
	// Timestamp is the record's Kafka timestamp.
	Timestamp time.Time
	// Replayed says that the record is handled again after a rewind of its
	// consumer group.
	Replayed bool
}

// ID returns the origin's identity (see ID).
func (o Origin) ID() string { return ID(o.Topic, o.Partition, o.Offset) }

type originContextKey struct{}

// WithOrigin returns a context that says where a consumed message was read
// from. The subscriber sets it on every message it hands out.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originContextKey{}, o)
}

// OriginFrom returns the origin WithOrigin put in ctx.
func OriginFrom(ctx context.Context) (Origin, bool) {
	o, ok := ctx.Value(originContextKey{}).(Origin)
	return o, ok
}

// OriginalKey is the header of a record replayed from a poison topic that
// names, as topic/partition/offset, the record first consumed and poisoned.
// It survives further poisonings and replays, so that the event keeps one
// identity however often it comes back.
const OriginalKey = "original_record"

// ReplayedFromKey is the header of a record replayed from a poison topic
// that names the poison record it came from, as topic/partition/offset.
const ReplayedFromKey = "replayed_from"
