// Package app is eventrouter's composition root: it wires configuration,
// the Kafka publisher and subscribers, the router, its middleware and the
// handlers. The command line that runs it is package app/cli.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel/trace"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/broker"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/kafka/poison"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
)

// Headers that eventrouter adds to a poisoned record, beside Watermill's
// reason_poisoned, topic_poisoned, handler_poisoned and subscriber_poisoned.
const (
	PoisonedPartitionKey = poison.PartitionKey
	PoisonedOffsetKey    = poison.OffsetKey
)

// ReplayedFromKey is the header a replayed record carries: the poison
// record it came from, as topic/partition/offset.
const ReplayedFromKey = record.ReplayedFromKey

// ReplayForGroupKey is the header that sends a replayed record to the
// route that poisoned it: the consumer group of that route. Other routes
// of the topic skip the record; consumers other than eventrouter can do
// the same.
const ReplayForGroupKey = poison.ForGroupKey

// Options replace parts of what New builds. The zero value builds the
// daemon as configured.
type Options struct {
	// Registry replaces handlers.Registry().
	Registry map[string]handlers.Spec
	// Notifier replaces the configured notifier.
	Notifier handlers.Notifier
	// Now replaces time.Now.
	Now func() time.Time
	// Getenv replaces os.Getenv, for secrets named in the config.
	Getenv func(string) string
	// TracerProvider replaces the one the tracing config builds.
	TracerProvider trace.TracerProvider
	// ConsoleSample replaces how often the console samples the routes'
	// rates (10s), such as to see charts move in a test.
	ConsoleSample time.Duration
	// WrapPublisher, if set, wraps the Kafka publisher of produced events
	// and poisoned records, such as to make it fail in tests.
	WrapPublisher func(message.Publisher) message.Publisher
}

// Daemon is the long-lived event router.
type Daemon struct {
	cfg    config.Config
	logger *slog.Logger
	// handlers are the routes' handlers, by route name, built in New.
	handlers map[string]handlers.Handler
	// ledger and pub are what the handlers' services forward to once Run
	// has opened them.
	ledger  atomic.Pointer[handlers.Ledger]
	pub     atomic.Pointer[message.Publisher]
	getenv  func(string) string
	tracing trace.TracerProvider
	wrapPub func(message.Publisher) message.Publisher
	// consoleSample is Options.ConsoleSample.
	consoleSample time.Duration
	prom          *prometheus.Registry
	metrics       *metrics
	running       chan struct{}
	stopping      atomic.Bool
	// subs are the routes' subscribers, by route name; made in Run before
	// the ops server starts, as readiness and the stop read them.
	subs    map[string]*consume.Subscriber
	opsAddr atomic.Pointer[string]
	probe   sarama.Client
	// kafkaCheck is readiness's look at the Kafka cluster.
	kafkaCheck kafkaChecker
	// breakers pause each route while a dependency is down, by route
	// name; made in Run before the ops server starts.
	breakers map[string]*retry.Breaker
	// opsToken is the bearer token the ops server requires; read in New,
	// so that a missing one fails `config check` as it fails `run`.
	opsToken string
	// notifier is the notifier New built, closed when Run ends; nil when
	// Options gave one.
	notifier handlers.Notifier
	// ledgerDSN is the shared ledger's connection string, read in New; it
	// holds a password and is never logged.
	ledgerDSN string
	// kafka makes the Kafka clients; its credentials are read in New.
	kafka client.Settings
	// shared is the open shared ledger, for readiness; nil with bbolt.
	shared atomic.Pointer[ledger.Postgres]
	// opened is the open ledger of either kind, for the console.
	opened atomic.Pointer[sideLedger]
	// failures keeps each route's last failed attempts, by route name.
	failures map[string]*failures
}

// New checks cfg against the handler registry and builds a daemon. It
// makes no connection.
func New(cfg config.Config, logger *slog.Logger, opts Options) (*Daemon, error) {
	registry := opts.Registry
	if registry == nil {
		registry = handlers.Registry()
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	// Every check runs, so that `config check` reports all problems at
	// once; none needs another to have passed.
	var errs []error
	if err := checkRoutes(cfg.Routes, registry); err != nil {
		errs = append(errs, config.SplitErrors(err)...)
	}
	notifier := opts.Notifier
	var built handlers.Notifier
	if notifier == nil {
		n, err := newNotifier(cfg.Notifier, getenv, logger)
		if err != nil {
			errs = append(errs, err)
		}
		notifier, built = n, n
	}
	var token string
	if cfg.Ops.Enabled {
		var err error
		if token, err = config.ReadSecret("ops.token", cfg.Ops.TokenEnv, cfg.Ops.TokenFile, getenv); err != nil {
			errs = append(errs, err)
		}
	}
	var dsn string
	if cfg.Ledger.Kind == "postgres" {
		var err error
		if dsn, err = ReadLedgerDSN(cfg.Ledger.Postgres, getenv); err != nil {
			errs = append(errs, err)
		}
	}
	access, accessErr := client.New(cfg.Kafka, cfg.Brokers(), getenv)
	if accessErr != nil {
		errs = append(errs, config.SplitErrors(accessErr)...)
	}
	// The Kafka clients refuse these settings only when they connect; with
	// the credentials missing they would say so again, in their words.
	for _, c := range []*sarama.Config{access.Subscriber(), access.Publisher()} {
		if accessErr != nil {
			break
		}
		if err := c.Validate(); err != nil {
			errs = append(errs, &config.KeyError{Key: "kafka", Msg: strings.TrimPrefix(err.Error(), "kafka: ")})
			break
		}
	}
	now := opts.Now
	if now == nil {
		now = time.Now
	}
	prom := prometheus.NewRegistry()
	prom.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(prom)
	d := &Daemon{
		cfg: cfg, logger: logger, getenv: getenv,
		tracing: opts.TracerProvider, wrapPub: opts.WrapPublisher, prom: prom, metrics: m,
		running: make(chan struct{}), opsToken: token, notifier: built, ledgerDSN: dsn,
		kafka: access, consoleSample: opts.ConsoleSample,
	}
	var counted handlers.Notifier = countingNotifier{Notifier: notifier, sent: m.notifications}
	if notifier == nil {
		counted = nil
	}
	hs, problems := buildHandlers(cfg.Routes, registry, func(r config.Route) handlers.Services {
		return services{
			route: r, logger: logger.With("route", r.Name), now: now,
			metrics:  prometheus.WrapRegistererWith(prometheus.Labels{"route": r.Name}, prom),
			notifier: counted, ledger: &d.ledger, pub: &d.pub, getenv: getenv,
		}
	})
	errs = append(errs, problems...)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	d.handlers = hs
	d.failures = make(map[string]*failures, len(cfg.Routes))
	for _, r := range cfg.Routes {
		d.failures[r.Name] = &failures{}
	}
	return d, nil
}

// Close releases what New built, for a daemon that will not run; Run
// releases it itself.
func (d *Daemon) Close() {
	closeHandlers(d.handlers, d.logger)
	d.handlers = nil
}

// newNotifier builds the configured notifier, reading its secret.
func newNotifier(cfg config.Notifier, getenv func(string) string, logger *slog.Logger) (handlers.Notifier, error) {
	switch cfg.Kind {
	case "log":
		return notify.Log{Logger: logger.With("component", "notifier")}, nil
	case "none":
		return notify.None{}, nil
	case "smtp":
	default:
		return nil, &config.KeyError{Key: "notifier.kind", Msg: fmt.Sprintf("unknown notifier %q; known: log, smtp, none", cfg.Kind)}
	}
	templates, err := notify.LoadTemplates(cfg.Templates)
	if err != nil {
		return nil, &config.KeyError{Key: "notifier.templates", Msg: err.Error()}
	}
	s := cfg.SMTP
	password, err := config.ReadSecret("notifier.smtp.password", s.PasswordEnv, s.PasswordFile, getenv)
	if err != nil {
		return nil, err
	}
	n, err := notify.NewSMTP(notify.SMTPConfig{
		Host: s.Host, Port: s.Port, TLS: s.TLS, Username: s.Username, Password: password,
		From: s.From, Timeout: s.Timeout, MaxConnections: s.MaxConnections,
	}, templates, logger.With("component", "notifier"))
	if err != nil {
		return nil, &config.KeyError{Key: "notifier.smtp", Msg: err.Error()}
	}
	return n, nil
}

// checkRoutes reports routes that name an unknown handler, or that lack a
// publish topic for a handler that publishes.
func checkRoutes(routes []config.Route, registry map[string]handlers.Spec) error {
	var errs []error
	for i, r := range routes {
		spec, ok := registry[r.Handler]
		switch {
		case !ok:
			errs = append(errs, &config.KeyError{
				Key: fmt.Sprintf("routes[%d].handler", i),
				Msg: fmt.Sprintf("unknown handler %q; known: %s", r.Handler, strings.Join(handlers.Names(registry), ", ")),
			})
		case spec.Publishes && r.PublishTopic == "":
			errs = append(errs, &config.KeyError{
				Key: fmt.Sprintf("routes[%d].publish_topic", i),
				Msg: fmt.Sprintf("is missing; handler %q publishes events", r.Handler),
			})
		}
	}
	return errors.Join(errs...)
}

// Running is closed once every route is subscribed.
func (d *Daemon) Running() <-chan struct{} { return d.running }

// Run starts the embedded broker if configured, then the router, and
// blocks until ctx is done. Then it stops taking records, lets in-flight
// ones finish (for at most router.shutdown_timeout), commits their offsets,
// closes the router and the publisher, and stops the broker last.
func (d *Daemon) Run(ctx context.Context) error {
	// Last, once the router has closed and no Handle runs.
	defer d.Close()
	if d.cfg.Kafka.Embedded.Enabled {
		b, err := broker.Start(d.cfg.Kafka.Embedded, d.logger.With("component", "broker"))
		if err != nil {
			return err
		}
		defer func() {
			b.Close()
			d.logger.Info("embedded kafka broker stopped")
		}()
	}

	if d.cfg.Kafka.TLS.InsecureSkipVerify {
		d.logger.Warn("kafka.tls.insecure_skip_verify is on: the brokers' certificates are not checked, so anyone on the path can read and change the traffic")
	}
	// Credentials and certificates the brokers refuse fail the start at
	// once, in one line; the clients would retry them for ever.
	if err := d.kafka.Refusal(ctx); err != nil {
		return err
	}

	l, err := d.openLedger(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err := l.Close(); err != nil {
			d.logger.Error("close ledger", "err", err)
		}
	}()
	if c, ok := d.notifier.(io.Closer); ok {
		// Closed when Run returns, once the router is closed, and before
		// the ledger: a send still under way then is recorded.
		defer func() {
			if err := c.Close(); err != nil {
				d.logger.Error("close notifier", "err", err)
			}
		}()
	}
	d.opened.Store(&l)
	var timed handlers.Ledger = timedLedger{Ledger: l, seconds: d.metrics.ledgerRecord}
	d.ledger.Store(&timed)

	tp := d.tracing
	if tp == nil {
		provider, shutdown, err := newTracerProvider(ctx, d.cfg.Tracing)
		if err != nil {
			return err
		}
		defer shutdown()
		tp = provider
	}
	tracer := tp.Tracer("github.com/eventrouter/eventrouter")

	wlog := watermill.NewSlogLogger(d.logger.With("component", "watermill"))
	pub, err := newPublisher(d.kafka, wlog)
	if err != nil {
		return err
	}
	defer func() {
		if err := pub.Close(); err != nil {
			d.logger.Error("close kafka publisher", "err", err)
		}
	}()
	var shared message.Publisher = pub
	if d.wrapPub != nil {
		shared = d.wrapPub(pub)
	}
	d.pub.Store(&shared)

	// Before the ops server, whose readiness check reads them.
	d.breakers = make(map[string]*retry.Breaker, len(d.cfg.Routes))
	d.subs = make(map[string]*consume.Subscriber, len(d.cfg.Routes))
	for _, r := range d.cfg.Routes {
		d.breakers[r.Name] = d.newBreaker(r)
		sub, err := newSubscriber(d.kafka, r, d.logger)
		if err != nil {
			return err
		}
		d.subs[r.Name] = sub
	}
	d.prom.MustRegister(newConsumerCollector(d.subs))
	if d.cfg.Ops.Enabled {
		stopOps, err := d.startOps()
		if err != nil {
			return err
		}
		defer stopOps()
	}

	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: d.cfg.Router.ShutdownTimeout}, wlog)
	if err != nil {
		return fmt.Errorf("create router: %w", err)
	}
	// Only the handler metric: Watermill's publisher and subscriber
	// decorators label their series with Go type names.
	handlerMetrics := wmetrics.NewPrometheusMetricsBuilder(d.prom, "eventrouter", "watermill").NewRouterMiddleware()
	for _, r := range d.cfg.Routes {
		var routePub message.Publisher = pub
		if d.wrapPub != nil {
			routePub = d.wrapPub(pub)
		}
		rd := routeDeps{pub: routePub, sub: d.subs[r.Name], ledger: l, wlog: wlog,
			tracer: tracer, handlerMetrics: handlerMetrics.Middleware}
		if err := d.addRoute(router, r, rd); err != nil {
			return fmt.Errorf("route %s: %w", r.Name, err)
		}
	}

	// The router gets its own context: cancelling it would close the
	// subscribers at once and abandon the records in flight.
	routerDone := make(chan error, 1)
	go func() { routerDone <- router.Run(context.WithoutCancel(ctx)) }()

	select {
	case <-router.Running():
		d.logger.Info("router running", "routes", len(d.cfg.Routes), "brokers", strings.Join(d.kafka.Brokers(), ","), "security", d.kafka.Protocol())
		close(d.running)
	case err := <-routerDone:
		return fmt.Errorf("start router: %w", err)
	case <-ctx.Done():
	}

	select {
	case <-ctx.Done():
	case err := <-routerDone:
		if err == nil {
			err = errors.New("every handler stopped")
		}
		return fmt.Errorf("router stopped: %w", err)
	}

	// Readiness turns 503 from here on, before consuming stops.
	d.stopping.Store(true)
	d.logger.Info("stopping: finishing in-flight messages", "in_flight", d.inFlight(),
		"timeout", d.cfg.Router.ShutdownTimeout.String())
	for _, sub := range d.subs {
		sub.Stop()
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), d.cfg.Router.ShutdownTimeout)
	for _, sub := range d.subs {
		if err := sub.Wait(drainCtx); err != nil {
			d.logger.Warn("in-flight messages did not finish in time; they will be redelivered",
				"in_flight", d.inFlight(), "timeout", d.cfg.Router.ShutdownTimeout.String())
			break
		}
	}
	cancel()
	closeErr := router.Close()
	if err := <-routerDone; err != nil && closeErr == nil {
		closeErr = err
	}
	if closeErr != nil {
		return fmt.Errorf("close router: %w", closeErr)
	}
	d.logger.Info("router stopped; offsets committed")
	return nil
}

// routeDeps are what every route shares.
type routeDeps struct {
	pub    message.Publisher
	sub    *consume.Subscriber
	ledger sideLedger
	wlog   watermill.LoggerAdapter
	tracer trace.Tracer
	// handlerMetrics is Watermill's handler execution histogram.
	handlerMetrics message.HandlerMiddleware
}

// addRoute subscribes a route's consumer group and adds its handler with
// its middleware.
func (d *Daemon) addRoute(router *message.Router, r config.Route, deps routeDeps) error {
	// Every route's series exist from the start, at zero.
	d.metrics.handled.WithLabelValues(r.Name)
	d.metrics.retried.WithLabelValues(r.Name)
	d.metrics.poisoned.WithLabelValues(r.Name)
	d.metrics.replayed.WithLabelValues(r.Name, "rewind")
	d.metrics.replayed.WithLabelValues(r.Name, "poison")

	poison, err := middleware.PoisonQueueWithFilter(
		// The message's context carries the route for the log line.
		poisonPublisher{Publisher: deps.pub, logger: d.logger, poisoned: d.metrics.poisoned.WithLabelValues(r.Name), breaker: d.breakers[r.Name]},
		r.PoisonTopic,
		// A cancelled context means the subscriber is closing: the record
		// is not acked and comes back after the restart, unpoisoned.
		func(err error) bool { return !errors.Is(err, context.Canceled) },
	)
	if err != nil {
		return fmt.Errorf("poison queue: %w", err)
	}
	retrying := retry.Policy{
		MaxRetries:      *r.Retry.MaxRetries,
		InitialInterval: r.Retry.InitialInterval,
		MaxInterval:     r.Retry.MaxInterval,
		Multiplier:      r.Retry.Multiplier,
		Jitter:          0.2,
	}

	// The handler's own chain, innermost first: correlation ID passes the
	// correlation ID on to the produced events; recoverer turns a panic
	// into an error, so that retry retries it; output publishes the
	// produced events (see output), so that a failed publish takes the
	// same path as a failed handler.
	handle := output(r, deps.pub, deps.ledger, deps.tracer, d.logger)(
		middleware.Recoverer(middleware.CorrelationID(d.handlers[r.Name].Handle)))
	h := router.AddConsumerHandler(r.Name, r.SubscribeTopic, deps.sub, func(msg *message.Message) error {
		_, err := handle(msg)
		return err
	})
	// Around it, the first middleware runs outermost:
	//  1. message scope gives the message a correlation ID, log fields, its
	//     record identity and a consume span;
	//  2. poison queue sees only the final error, after retries, and parks
	//     the record with the reason; a failed park leaves it un-acked;
	//  3. Watermill's handler metric, inside the poison queue, so that a
	//     poisoned record counts as success="false";
	//  4. retry backs off and retries transient errors, and lets permanent
	//     ones through at once;
	//  5. attempt times, counts and logs each try;
	//  6. breaker holds the message, and the whole route, while a
	//     dependency (the mail server, Kafka) is down, so an outage uses up
	//     no retries and poisons nothing.
	h.AddMiddleware(
		messageScope(r, deps.tracer, d.metrics),
		poison,
		deps.handlerMetrics,
		retrying.Middleware,
		attempt(r, d.metrics, deps.tracer, d.logger, d.failures[r.Name]),
		d.breakers[r.Name].Middleware,
	)
	return nil
}

// newBreaker returns the breaker that pauses route r while a dependency is
// down.
func (d *Daemon) newBreaker(r config.Route) *retry.Breaker {
	logger := d.logger.With("route", r.Name)
	d.metrics.paused.WithLabelValues(r.Name).Set(0)
	return &retry.Breaker{
		MinWait: r.Retry.OutageInterval,
		MaxWait: r.Retry.OutageMaxInterval,
		// Called under the breaker's lock, in the order of the changes, so
		// the gauge always ends as the breaker is.
		OnChange: func(paused bool, cause error) {
			d.metrics.paused.WithLabelValues(r.Name).Set(map[bool]float64{true: 1, false: 0}[paused])
			if paused {
				logger.Warn("route paused: a dependency is unavailable; retrying until it is back", "cause", cause.Error())
			} else {
				logger.Info("route resumed")
			}
		},
	}
}

// poisonPublisher adds where a poisoned record came from, and logs each
// record it parks. When the poison topic cannot take it, the record is not
// acked and comes back at once: the route's breaker holds it first, so
// that this is no hot loop.
type poisonPublisher struct {
	message.Publisher
	logger   *slog.Logger
	poisoned prometheus.Counter
	breaker  *retry.Breaker
}

func (p poisonPublisher) Publish(topic string, msgs ...*message.Message) error {
	for _, msg := range msgs {
		if o, ok := record.OriginFrom(msg.Context()); ok {
			msg.Metadata.Set(PoisonedPartitionKey, strconv.FormatInt(int64(o.Partition), 10))
			msg.Metadata.Set(PoisonedOffsetKey, strconv.FormatInt(o.Offset, 10))
		}
	}
	if err := p.Publisher.Publish(topic, msgs...); err != nil {
		err = publishError(topic, err)
		if len(msgs) > 0 && p.breaker != nil {
			_ = p.breaker.Hold(msgs[0].Context(), kafkaDependency, err)
		}
		return err
	}
	for _, msg := range msgs {
		p.poisoned.Inc()
		p.logger.WarnContext(msg.Context(), "message poisoned",
			"poison_topic", topic,
			"message_uuid", msg.UUID,
			"reason", msg.Metadata.Get(middleware.ReasonForPoisonedKey),
		)
	}
	return nil
}

// sideLedger is what the daemon needs of a ledger of either kind.
type sideLedger interface {
	handlers.Ledger
	MarkPublished(key string) error
	Lookup(key string) (ledger.Entry, bool, error)
	Close() error
}

// openLedger opens the configured ledger. The shared one is asked again
// for up to ledgerStartWait while the database does not answer (it may be
// starting beside the daemon); then the daemon gives up: started without
// its ledger it could only pause every route.
func (d *Daemon) openLedger(ctx context.Context) (sideLedger, error) {
	if d.cfg.Ledger.Kind != "postgres" {
		return ledger.Open(d.cfg.Ledger.Path)
	}
	pc := d.cfg.Ledger.Postgres
	octx, cancel := context.WithTimeout(ctx, ledgerStartWait)
	defer cancel()
	wait := 250 * time.Millisecond
	for {
		l, err := ledger.OpenPostgres(octx, ledger.PostgresConfig{
			DSN: d.ledgerDSN, MaxConns: int32(pc.MaxConnections), StatementTimeout: pc.StatementTimeout, Lease: pc.Lease,
		})
		if err == nil {
			d.shared.Store(l)
			d.logger.Info("shared ledger open", "kind", "postgres", "schema_version", ledger.SchemaVersion, "lease", pc.Lease.String())
			return l, nil
		}
		// A newer schema, a wrong password or a missing database stays so.
		var refused *ledger.SchemaError
		var pgErr *pgconn.PgError
		if errors.As(err, &refused) || octx.Err() != nil ||
			errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "28") || pgErr.Code == "3D000") {
			return nil, err
		}
		d.logger.Warn("shared ledger not reachable yet; trying again", "err", err, "in", wait.String())
		select {
		case <-octx.Done():
			return nil, err
		case <-time.After(wait):
		}
		wait = min(2*wait, 4*time.Second)
	}
}

// ledgerStartWait bounds how long the daemon waits for the shared ledger's
// database at start.
const ledgerStartWait = 60 * time.Second

// ReadLedgerDSN reads the shared ledger's connection string and checks
// that it parses, without quoting it: it holds a password.
func ReadLedgerDSN(pc config.Postgres, getenv func(string) string) (string, error) {
	dsn, err := config.ReadSecret("ledger.postgres.dsn", pc.DSNEnv, pc.DSNFile, getenv)
	if err != nil {
		return "", err
	}
	if _, err := pgx.ParseConfig(dsn); err != nil {
		return "", &config.KeyError{Key: "ledger.postgres.dsn", Msg: "does not parse as a PostgreSQL connection string or URL"}
	}
	return dsn, nil
}
