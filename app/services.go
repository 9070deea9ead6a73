package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/ledger"
)

// buildHandlers decodes every route's options and builds its handler, for
// routes that name a known handler; a handler no route names is never
// built. On an error it closes what it built.
func buildHandlers(routes []config.Route, registry map[string]handlers.Spec, svc func(config.Route) handlers.Services) (map[string]handlers.Handler, []error) {
	built := make(map[string]handlers.Handler, len(routes))
	var errs []error
	for i, r := range routes {
		spec, ok := registry[r.Handler]
		if !ok || spec.New == nil {
			// checkRoutes reports it.
			continue
		}
		var opts any
		switch {
		case spec.Options != nil:
			opts = spec.Options()
			if problems := r.DecodeOptions(i, opts); len(problems) > 0 {
				errs = append(errs, problems...)
				continue
			}
		case r.HasOptions():
			errs = append(errs, &config.KeyError{Key: fmt.Sprintf("routes[%d].options", i), Line: r.Options.Line,
				Msg: fmt.Sprintf("handler %q takes no options", r.Handler)})
			continue
		}
		h, err := spec.New(opts, svc(r))
		if err != nil {
			errs = append(errs, r.OptionErrors(i, err)...)
			continue
		}
		built[r.Name] = h
	}
	if len(errs) > 0 {
		closeHandlers(built, slog.New(slog.DiscardHandler))
		return nil, errs
	}
	return built, nil
}

// closeHandlers closes every handler, logging what fails.
func closeHandlers(built map[string]handlers.Handler, logger *slog.Logger) {
	for name, h := range built {
		if err := h.Close(); err != nil {
			logger.Error("close handler", "route", name, "err", err)
		}
	}
}

// services are what the daemon offers the handler of one route.
type services struct {
	route    config.Route
	logger   *slog.Logger
	now      func() time.Time
	metrics  prometheus.Registerer
	notifier handlers.Notifier
	ledger   *atomic.Pointer[handlers.Ledger]
	pub      *atomic.Pointer[message.Publisher]
	getenv   func(string) string
}

var _ handlers.Services = services{}

func (s services) Route() handlers.Route {
	return handlers.Route{Name: s.route.Name, SubscribeTopic: s.route.SubscribeTopic,
		ConsumerGroup: s.route.ConsumerGroup, PublishTopic: s.route.PublishTopic}
}

func (s services) Logger() *slog.Logger           { return s.logger }
func (s services) Now() time.Time                 { return s.now() }
func (s services) Metrics() prometheus.Registerer { return s.metrics }
func (s services) Notifier() handlers.Notifier    { return s.notifier }
func (s services) Ledger() handlers.Ledger        { return runningLedger{s.ledger} }

func (s services) Secret(key, env, file string) (string, error) {
	return config.ReadSecret(key, env, file, s.getenv)
}

func (s services) Publish(topic string, msgs ...*message.Message) error {
	p := s.pub.Load()
	if p == nil {
		return errNotRunning
	}
	return (*p).Publish(topic, msgs...)
}

// errNotRunning is what a handler gets from a service that needs the
// daemon running, called before it runs.
var errNotRunning = errors.New("the daemon is not running yet")

// runningLedger is the ledger the daemon opens when it runs, for handlers
// built before that.
type runningLedger struct {
	p *atomic.Pointer[handlers.Ledger]
}

func (l runningLedger) get() (handlers.Ledger, error) {
	p := l.p.Load()
	if p == nil {
		return nil, errNotRunning
	}
	return *p, nil
}

func (l runningLedger) Claim(ctx context.Context, key string) (ledger.Entry, bool, func(), error) {
	led, err := l.get()
	if err != nil {
		return ledger.Entry{}, false, nil, err
	}
	return led.Claim(ctx, key)
}

func (l runningLedger) Record(ctx context.Context, key string, e ledger.Entry) error {
	led, err := l.get()
	if err != nil {
		return err
	}
	return led.Record(ctx, key, e)
}
