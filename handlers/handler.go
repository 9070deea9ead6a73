package handlers

import (
	"errors"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
)

// Handler handles the records of one route. The router calls Handle for
// each record, from many goroutines at once (records with different keys
// run concurrently), and Close once, after the last Handle returned.
//
// Handle returns the events to publish on the route's publish_topic, or an
// error: one marked retry.Permanent poisons the record at once, one marked
// retry.Unavailable pauses the route until the dependency answers, and any
// other is retried with backoff, then poisoned.
type Handler interface {
	Handle(msg *message.Message) ([]*message.Message, error)
	// Close releases what the handler holds, such as connection pools.
	Close() error
}

// Func is a Handler that holds nothing to close.
type Func func(msg *message.Message) ([]*message.Message, error)

// Handle calls f.
func (f Func) Handle(msg *message.Message) ([]*message.Message, error) { return f(msg) }

// Close does nothing.
func (Func) Close() error { return nil }

// Route describes the route a handler is built for.
type Route struct {
	// Name is the route's name, the label of its metrics.
	Name string
	// SubscribeTopic is the topic whose records the handler gets.
	SubscribeTopic string
	// ConsumerGroup is the route's Kafka consumer group.
	ConsumerGroup string
	// PublishTopic receives the events Handle returns; empty when the
	// route has none.
	PublishTopic string
}

// Services are what the daemon offers every handler it builds. Take what
// the handler needs in its constructor; nothing is made for a service no
// handler asks for.
type Services interface {
	// Route is the route the handler is built for.
	Route() Route
	// Logger is the daemon's logger, with the route's name. Log no
	// personal data, such as email addresses, above debug level.
	Logger() *slog.Logger
	// Now returns the current time; tests fix it.
	Now() time.Time
	// Metrics registers the handler's own Prometheus collectors; each
	// series gets the route's name as its route label.
	Metrics() prometheus.Registerer
	// Notifier delivers notifications through the configured channel.
	Notifier() Notifier
	// Ledger is the notification ledger (bbolt, or the shared PostgreSQL
	// one). It opens when the daemon runs: call it from Handle only.
	Ledger() Ledger
	// Publish writes msgs to topic through the daemon's Kafka publisher
	// (idempotent, acks=all). Prefer returning events from Handle, which
	// publishes them before the record is acked; Publish is for events
	// that go elsewhere. It works once the daemon runs.
	Publish(topic string, msgs ...*message.Message) error
	// Secret reads a secret from the environment variable env or the file
	// file, whichever the options set; key names the option for messages
	// ("secret" gives "routes[i].options.secret_env"). Neither set gives
	// "", a set one that is empty an error.
	Secret(key, env, file string) (string, error)
}

// Spec describes a handler that a route can name.
type Spec struct {
	// Options returns a pointer to the handler's options struct, holding
	// their defaults. The route's options block is decoded into it
	// strictly (yaml tags name the keys); if it implements Validate()
	// error, returning *config.KeyError values with keys relative to the
	// block, those are reported under routes[i].options with their lines.
	// Nil means the handler takes no options.
	Options func() any
	// New builds the handler for one route from its decoded options (what
	// Options returned; nil without Options). It runs when the daemon is
	// built, `config check` included, so it must not connect to anything:
	// connect on first use. Errors naming an option are *config.KeyError
	// values with keys relative to the block.
	New func(opts any, s Services) (Handler, error)
	// Publishes says that Handle returns events, so that the route needs a
	// publish_topic.
	Publishes bool
}

// WithOptions returns the Spec of a handler whose options are of type O,
// with defaults as their defaults, built by build.
func WithOptions[O any](defaults func() O, build func(opts O, s Services) (Handler, error)) Spec {
	return Spec{
		Options: func() any { o := defaults(); return &o },
		New:     func(opts any, s Services) (Handler, error) { return build(*opts.(*O), s) },
	}
}

// RegisterCounter registers a counter vector with reg, or returns the one
// already registered under the same name and labels.
func RegisterCounter(reg prometheus.Registerer, opts prometheus.CounterOpts, labels ...string) (*prometheus.CounterVec, error) {
	c := prometheus.NewCounterVec(opts, labels)
	if err := reg.Register(c); err != nil {
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) {
			if existing, ok := already.ExistingCollector.(*prometheus.CounterVec); ok {
				return existing, nil
			}
		}
		return nil, err
	}
	return c, nil
}

// Wrapped returns spec with every handler it builds wrapped by wrap, as a
// Watermill middleware wraps a handler func, such as to count or trace its
// calls. Closing the wrapped handler closes the handler inside.
func (s Spec) Wrapped(wrap func(next message.HandlerFunc) message.HandlerFunc) Spec {
	inner := s.New
	s.New = func(opts any, svc Services) (Handler, error) {
		h, err := inner(opts, svc)
		if err != nil {
			return nil, err
		}
		return wrapped{Handler: h, handle: wrap(h.Handle)}, nil
	}
	return s
}

type wrapped struct {
	Handler
	handle message.HandlerFunc
}

func (w wrapped) Handle(msg *message.Message) ([]*message.Message, error) { return w.handle(msg) }
