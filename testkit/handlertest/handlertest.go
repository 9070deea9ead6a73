// Package handlertest tests handlers without a broker: it builds a
// handler from its registry entry and YAML options as the daemon does,
// makes messages as the router hands them out (topic, partition, offset,
// key, headers), and runs them through the daemon's middleware (poison
// queue, retry with backoff, the outage breaker, the recoverer), reporting
// what happened.
//
//	h := handlertest.Build(t, handlers.Registry()["webhook"], `url: `+srv.URL, handlertest.NewServices(t))
//	res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 1}`, handlertest.Key("1")))
//	if res.Poisoned { t.Errorf("poisoned: %s", res.Reason) }
package handlertest

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/retry"
)

// Services are handlers.Services for tests. Set the fields before
// building the handler.
type Services struct {
	// Info is what Route returns.
	Info handlers.Route
	// Log is what Logger returns; NewServices logs to the test's output.
	Log *slog.Logger
	// Clock is what Now calls; NewServices fixes it at 2026-01-02 03:04:05 UTC.
	Clock func() time.Time
	// Registry receives the handler's metrics.
	Registry *prometheus.Registry
	// Notify and Notes are what Notifier and Ledger return; nil unless set.
	Notify handlers.Notifier
	Notes  handlers.Ledger
	// Env holds the environment that Secret reads variables from.
	Env map[string]string

	mu        sync.Mutex
	published map[string][]*message.Message
}

// NewServices returns Services for route "test" on topic "events".
func NewServices(t testing.TB) *Services {
	return &Services{
		Info:     handlers.Route{Name: "test", SubscribeTopic: "events", ConsumerGroup: "test"},
		Log:      slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Clock:    func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) },
		Registry: prometheus.NewRegistry(),
		Env:      map[string]string{},
	}
}

var _ handlers.Services = (*Services)(nil)

func (s *Services) Route() handlers.Route          { return s.Info }
func (s *Services) Logger() *slog.Logger           { return s.Log }
func (s *Services) Now() time.Time                 { return s.Clock() }
func (s *Services) Metrics() prometheus.Registerer { return s.Registry }
func (s *Services) Notifier() handlers.Notifier    { return s.Notify }
func (s *Services) Ledger() handlers.Ledger        { return s.Notes }

// Secret reads env from Env, or file from disk.
func (s *Services) Secret(key, env, file string) (string, error) {
	return config.ReadSecret(key, env, file, func(name string) string { return s.Env[name] })
}

// Publish keeps msgs, for Published.
func (s *Services) Publish(topic string, msgs ...*message.Message) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.published == nil {
		s.published = map[string][]*message.Message{}
	}
	s.published[topic] = append(s.published[topic], msgs...)
	return nil
}

// Published returns what the handler published to topic through Publish.
func (s *Services) Published(topic string) []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.published[topic]...)
}

// Build decodes options (the YAML of the route's options block, "" for
// none) as the daemon does and builds the handler; the test fails on a
// problem. The handler is closed when the test ends.
func Build(t testing.TB, spec handlers.Spec, options string, s handlers.Services) handlers.Handler {
	t.Helper()
	h, err := BuildErr(spec, options, s)
	if err != nil {
		t.Fatalf("build handler: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("close handler: %v", err)
		}
	})
	return h
}

// BuildErr is Build that returns the problems, each naming its key as
// routes[0].options.<key> with its line in options, as `config check`
// reports them.
func BuildErr(spec handlers.Spec, options string, s handlers.Services) (handlers.Handler, error) {
	r := config.Route{Name: "test"}
	if strings.TrimSpace(options) != "" {
		var doc yaml.Node
		if err := yaml.Unmarshal([]byte(options), &doc); err != nil {
			return nil, err
		}
		if len(doc.Content) > 0 {
			r.Options = *doc.Content[0]
		}
	}
	var opts any
	switch {
	case spec.Options != nil:
		opts = spec.Options()
		if errs := r.DecodeOptions(0, opts); len(errs) > 0 {
			return nil, errors.Join(errs...)
		}
	case r.HasOptions():
		return nil, errors.New("routes[0].options: the handler takes no options")
	}
	h, err := spec.New(opts, s)
	if err != nil {
		return nil, errors.Join(r.OptionErrors(0, err)...)
	}
	return h, nil
}

// MessageOption changes a message Message makes.
type MessageOption func(m *message.Message, o *record.Origin)

// At sets where the record was read from; Message's default is
// events/0/0.
func At(topic string, partition int32, offset int64) MessageOption {
	return func(_ *message.Message, o *record.Origin) { o.Topic, o.Partition, o.Offset = topic, partition, offset }
}

// Key sets the record's Kafka key.
func Key(key string) MessageOption {
	return func(_ *message.Message, o *record.Origin) { o.Key = []byte(key) }
}

// Header sets a record header.
func Header(key, value string) MessageOption {
	return func(m *message.Message, _ *record.Origin) { m.Metadata.Set(key, value) }
}

// Replayed marks the record as handled again after a rewind.
func Replayed() MessageOption {
	return func(_ *message.Message, o *record.Origin) { o.Replayed = true }
}

// Message returns a message as the router hands it to a handler: its
// payload, the record it came from (see handlers.RecordOf) and headers.
func Message(payload string, opts ...MessageOption) *message.Message {
	o := record.Origin{Topic: "events", Timestamp: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	m := message.NewMessage(uuid.NewString(), []byte(payload))
	for _, opt := range opts {
		opt(m, &o)
	}
	ctx := record.WithOrigin(context.Background(), o)
	if o.Key != nil {
		ctx = record.WithKey(ctx, string(o.Key))
	}
	m.SetContext(ctx)
	return m
}

// Result is what happened to one message in Run.
type Result struct {
	// Out are the events the handler returned, for the publish topic.
	Out []*message.Message
	// Err is the error of the handler's last attempt; nil if it succeeded.
	Err error
	// Attempts counts the handler's calls; Retries those that followed a
	// transient error; Pauses those that found a dependency down, each of
	// which paused the route.
	Attempts, Retries, Pauses int
	// Poisoned says the record went to the poison topic, with Reason.
	Poisoned bool
	Reason   string
	// Acked says the record is done with: handled or poisoned. A record
	// not acked comes again, as one whose dependency stayed down.
	Acked bool
}

// RunOptions change Run's middleware. The zero value is what Run uses.
type RunOptions struct {
	// MaxRetries is the retry policy's; default 3.
	MaxRetries int
	// MaxPauses ends the run, unacked, after that many outages (the
	// daemon would wait for the dependency for ever); default 3.
	MaxPauses int
}

// Run passes msg through the daemon's middleware, in the daemon's order
// (poison queue, retry, breaker, recoverer), around h, with backoffs of
// milliseconds.
func Run(t testing.TB, h handlers.Handler, msg *message.Message, opt ...RunOptions) Result {
	t.Helper()
	o := RunOptions{MaxRetries: 3, MaxPauses: 3}
	if len(opt) > 0 {
		if opt[0].MaxRetries > 0 {
			o.MaxRetries = opt[0].MaxRetries
		}
		if opt[0].MaxPauses > 0 {
			o.MaxPauses = opt[0].MaxPauses
		}
	}
	var res Result
	sink := &poisonSink{}
	poison, err := middleware.PoisonQueueWithFilter(sink, "events.poison",
		func(err error) bool { return !errors.Is(err, context.Canceled) })
	if err != nil {
		t.Fatalf("poison queue: %v", err)
	}
	policy := retry.Policy{MaxRetries: o.MaxRetries, InitialInterval: time.Millisecond, MaxInterval: 5 * time.Millisecond, Multiplier: 2}
	breaker := &retry.Breaker{MinWait: time.Millisecond, MaxWait: 10 * time.Millisecond}
	ctx, cancel := context.WithCancel(msg.Context())
	defer cancel()
	msg.SetContext(ctx)
	transient := 0
	inner := func(m *message.Message) ([]*message.Message, error) {
		res.Attempts++
		out, err := h.Handle(m)
		res.Err = err
		switch {
		case err == nil, retry.IsPermanent(err):
		case retry.IsUnavailable(err):
			res.Pauses++
			if res.Pauses >= o.MaxPauses {
				cancel()
			}
		default:
			transient++
		}
		return out, err
	}
	out, err := poison(policy.Middleware(breaker.Middleware(middleware.Recoverer(inner))))(msg)
	if res.Err != nil && !retry.IsPermanent(res.Err) && !retry.IsUnavailable(res.Err) && transient > 0 {
		transient--
	}
	res.Retries = transient
	res.Out = out
	if len(sink.msgs) > 0 {
		res.Poisoned = true
		res.Reason = sink.msgs[0].Metadata.Get(middleware.ReasonForPoisonedKey)
	}
	res.Acked = err == nil
	return res
}

type poisonSink struct{ msgs []*message.Message }

func (p *poisonSink) Publish(_ string, msgs ...*message.Message) error {
	p.msgs = append(p.msgs, msgs...)
	return nil
}

func (p *poisonSink) Close() error { return nil }
