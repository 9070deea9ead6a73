package console

import (
	"context"
	"time"
)

// Source is what the console shows and does; the daemon implements it.
type Source interface {
	// Routes returns every route's state, in the configuration's order.
	Routes() []Route
	// Partitions returns the route's partitions, as the broker has them.
	Partitions(ctx context.Context, route string) ([]Partition, error)
	// Poisoned returns the route's poisoned records that q matches, newest
	// first, and how many records of the poison topic it looked at.
	Poisoned(ctx context.Context, route string, q Query) ([]Poisoned, error)
	// Replay sends the route's poisoned records refs back to the topic
	// they failed on, for the route that poisoned them. It returns how many
	// it sent and, for each it did not, why; it goes on past those.
	Replay(ctx context.Context, route string, refs []Ref) (sent int, skipped []string, err error)
	// Sent returns what the ledger recorded as sent to user, by template.
	Sent(ctx context.Context, user string) ([]Sent, error)
}

// Route is one route's state.
type Route struct {
	Name, Handler, Topic, Group, PoisonTopic string
	// State is running, paused, joining, starting or draining.
	State string
	// Cause says why a paused route is paused.
	Cause string
	// InFlight counts the records handed to the handler and not finished.
	InFlight int64
	// Handled, Retried and Poisoned are the route's counters since start.
	Handled, Retried, Poisoned float64
	// Errors are the route's last failed attempts, newest first.
	Errors []Error
}

// Error is a failed handler attempt.
type Error struct {
	Time          time.Time
	CorrelationID string
	Record        string
	Message       string
}

// Partition is one partition of a route's topic.
type Partition struct {
	Partition int32
	// Committed is the group's committed offset, -1 when none.
	Committed int64
	End       int64
	Lag       int64
	// Uncommitted counts the records taken and not committed, in this
	// instance; Oldest is how long the oldest unfinished one has waited.
	Uncommitted int
	Oldest      time.Duration
	// Owned says this instance holds the partition now.
	Owned bool
}

// Query selects poisoned records.
type Query struct {
	// Reason, when set, keeps the records whose reason contains it.
	Reason string
	// Since, when set, keeps the records poisoned from then on.
	Since time.Time
	// Limit bounds the records returned.
	Limit int
}

// Ref names a record of a poison topic.
type Ref struct {
	Partition int32
	Offset    int64
}

// Poisoned is a record of a poison topic.
type Poisoned struct {
	Ref
	Time time.Time
	Key  string
	// Payload is the payload, as indented JSON when it is JSON, cut to a
	// bound.
	Payload string
	Headers map[string]string
	Reason  string
}

// Sent is a ledger entry: a notification that went out.
type Sent struct {
	Template  string
	EventID   string
	Channel   string
	SentAt    time.Time
	Published bool
}
