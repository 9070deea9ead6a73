package app

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/msglog"
	"github.com/eventrouter/eventrouter/notify"
)

// metrics are the daemon's own Prometheus metrics; Watermill's router
// metrics come beside them from its metrics builder.
type metrics struct {
	handled       *prometheus.CounterVec
	replayed      *prometheus.CounterVec
	retried       *prometheus.CounterVec
	poisoned      *prometheus.CounterVec
	duration      *prometheus.HistogramVec
	notifications *prometheus.CounterVec
	paused        *prometheus.GaugeVec
	ledgerRecord  prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventrouter_messages_handled_total",
			Help: "Messages a route handled successfully.",
		}, []string{"route"}),
		replayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventrouter_messages_replayed_total",
			Help: "Records a route received again on purpose: after eventrouter rewind (source rewind) or from eventrouter replay of the poison topic (source poison).",
		}, []string{"route", "source"}),
		retried: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventrouter_messages_retried_total",
			Help: "Handler attempts that were retries of a failed attempt.",
		}, []string{"route"}),
		poisoned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventrouter_messages_poisoned_total",
			Help: "Messages a route wrote to its poison topic.",
		}, []string{"route"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "eventrouter_handler_duration_seconds",
			Help:    "Duration of one handler attempt.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "eventrouter_notifications_sent_total",
			Help: "Notifications delivered, by channel and template.",
		}, []string{"route", "channel", "template"}),
		ledgerRecord: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "eventrouter_ledger_record_seconds",
			Help: "Time from a notification's delivery to its durable ledger entry: the window in which a crash makes it go out again.",
			// From a fraction of an fsync to a slow disk.
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "eventrouter_route_paused",
			Help: "1 while a route waits for an unavailable dependency.",
		}, []string{"route"}),
	}
	reg.MustRegister(m.handled, m.replayed, m.retried, m.poisoned, m.duration, m.notifications, m.paused, m.ledgerRecord)
	return m
}

// propagator carries W3C trace context in Kafka headers.
var propagator = propagation.TraceContext{}

type attemptsKey struct{}

// replaySource says why a record comes again on purpose: "rewind" (its
// group was rewound), "poison" (eventrouter replay sent it back from the
// poison topic), or "" for a normal delivery.
func replaySource(msg *message.Message, origin record.Origin) string {
	switch {
	case origin.Replayed:
		return "rewind"
	case msg.Metadata.Get(ReplayedFromKey) != "":
		return "poison"
	}
	return ""
}

// messageScope is the outermost middleware of a route. It gives a record
// from a plain producer a correlation ID, puts the message's identity on
// every log line about it (with replayed=rewind or poison for a record
// that comes again on purpose, which it also counts), and continues the
// producer's trace with a consume span.
func messageScope(r config.Route, tracer trace.Tracer, m *metrics) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			if g := msg.Metadata.Get(ReplayForGroupKey); g != "" && g != r.ConsumerGroup {
				// A replay of another route's poisoned record: done here.
				m.replayed.WithLabelValues(r.Name, "poison_for_other_route").Inc()
				return nil, nil
			}
			if middleware.MessageCorrelationID(msg) == "" {
				middleware.SetCorrelationID(msg.UUID, msg)
			}
			ctx := msg.Context()
			origin, _ := record.OriginFrom(ctx)
			partition, offset := origin.Partition, origin.Offset
			ctx = msglog.With(ctx,
				slog.String("route", r.Name),
				slog.String("topic", r.SubscribeTopic),
				slog.Int("partition", int(partition)),
				slog.Int64("offset", offset),
				slog.String("correlation_id", middleware.MessageCorrelationID(msg)),
			)
			replayed := replaySource(msg, origin)
			if replayed != "" {
				ctx = msglog.With(ctx, slog.String("replayed", replayed))
				m.replayed.WithLabelValues(r.Name, replayed).Inc()
			}
			ctx = propagator.Extract(ctx, propagation.MapCarrier(msg.Metadata))
			ctx, span := tracer.Start(ctx, r.SubscribeTopic+" process",
				trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(
					attribute.String("messaging.system", "kafka"),
					attribute.String("messaging.destination.name", r.SubscribeTopic),
					attribute.String("messaging.consumer.group.name", r.ConsumerGroup),
					attribute.Int("messaging.destination.partition.id", int(partition)),
					attribute.Int64("messaging.kafka.offset", offset),
					attribute.String("messaging.message.id", msg.UUID),
					attribute.String("eventrouter.route", r.Name),
					attribute.String("eventrouter.replayed", replayed),
				))
			defer span.End()
			ctx = context.WithValue(ctx, attemptsKey{}, new(atomic.Int64))
			msg.SetContext(ctx)

			out, err := h(msg)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
			}
			return out, err
		}
	}
}

// attempt wraps one handler attempt, inside the retry middleware: it times
// it in a handle span, counts retries and successes, and logs failures with
// the message's identity.
func attempt(r config.Route, m *metrics, tracer trace.Tracer, logger *slog.Logger, failed *failures) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			n := int64(1)
			if counter, ok := msg.Context().Value(attemptsKey{}).(*atomic.Int64); ok {
				n = counter.Add(1)
			}
			if n > 1 {
				m.retried.WithLabelValues(r.Name).Inc()
			}
			parent := msg.Context()
			ctx, span := tracer.Start(parent, r.Name+" handle", trace.WithAttributes(attribute.Int64("eventrouter.attempt", n)))
			msg.SetContext(ctx)
			start := time.Now()
			out, err := h(msg)
			m.duration.WithLabelValues(r.Name).Observe(time.Since(start).Seconds())
			msg.SetContext(parent)
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
				logger.WarnContext(ctx, "handler attempt failed", "attempt", n, "err", err.Error())
				failed.add(msg, err)
			} else {
				m.handled.WithLabelValues(r.Name).Inc()
			}
			span.End()
			return out, err
		}
	}
}

// countingNotifier counts delivered notifications by route.
type countingNotifier struct {
	handlers.Notifier
	sent *prometheus.CounterVec
}

func (c countingNotifier) Send(ctx context.Context, m notify.Message) error {
	if err := c.Notifier.Send(ctx, m); err != nil {
		return err
	}
	c.sent.WithLabelValues(message.HandlerNameFromCtx(ctx), c.Channel(), m.Template).Inc()
	return nil
}

// lagCollector reports each route's consumer lag per partition, read from
// the broker at scrape time: the partition's end offset minus the group's
// committed offset.
type lagCollector struct {
	client sarama.Client
	admin  sarama.ClusterAdmin
	routes []config.Route
	desc   *prometheus.Desc
	logger *slog.Logger
}

func newLagCollector(client sarama.Client, admin sarama.ClusterAdmin, routes []config.Route, logger *slog.Logger) *lagCollector {
	return &lagCollector{
		client: client, admin: admin, routes: routes, logger: logger,
		desc: prometheus.NewDesc("eventrouter_consumer_lag_messages",
			"Records in a partition that the route's consumer group has not committed yet.",
			[]string{"route", "topic", "partition"}, nil),
	}
}

func (c *lagCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *lagCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.routes {
		if err := c.collectRoute(r, ch); err != nil {
			c.logger.Debug("consumer lag not read", "route", r.Name, "err", err)
		}
	}
}

func (c *lagCollector) collectRoute(r config.Route, ch chan<- prometheus.Metric) error {
	offsets, err := groupOffsets(c.client, c.admin, r)
	if err != nil {
		return err
	}
	for _, o := range offsets {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(o.lag),
			r.Name, r.SubscribeTopic, strconv.Itoa(int(o.partition)))
	}
	return nil
}

// partitionOffsets are where a route's consumer group stands on one
// partition.
type partitionOffsets struct {
	partition int32
	// committed is the group's committed offset, -1 when none.
	committed, end, lag int64
}

// groupOffsets reads, for every partition of route r's topic, its end
// offset and the group's committed offset, and the lag between them. A
// partition the group has not committed counts from where the group will
// start: the oldest record, or the end with start_from: latest.
func groupOffsets(client sarama.Client, admin sarama.ClusterAdmin, r config.Route) ([]partitionOffsets, error) {
	if err := client.RefreshMetadata(r.SubscribeTopic); err != nil {
		return nil, err
	}
	partitions, err := client.Partitions(r.SubscribeTopic)
	if err != nil {
		return nil, err
	}
	committed, err := admin.ListConsumerGroupOffsets(r.ConsumerGroup, map[string][]int32{r.SubscribeTopic: partitions})
	if err != nil {
		return nil, err
	}
	out := make([]partitionOffsets, 0, len(partitions))
	for _, p := range partitions {
		end, err := client.GetOffset(r.SubscribeTopic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, err
		}
		o := partitionOffsets{partition: p, committed: -1, end: end}
		if b := committed.GetBlock(r.SubscribeTopic, p); b != nil && b.Offset >= 0 {
			o.committed = b.Offset
		}
		from := o.committed
		switch {
		case from >= 0:
		case r.StartFrom == "latest":
			from = end
		default:
			if from, err = client.GetOffset(r.SubscribeTopic, p, sarama.OffsetOldest); err != nil {
				return nil, err
			}
		}
		o.lag = max(end-from, 0)
		out = append(out, o)
	}
	return out, nil
}

// timedLedger times each Record: it starts as soon as a notification was
// delivered, so its duration is the window in which a crash repeats one.
type timedLedger struct {
	handlers.Ledger
	seconds prometheus.Histogram
}

func (l timedLedger) Record(ctx context.Context, key string, e ledger.Entry) error {
	start := time.Now()
	err := l.Ledger.Record(ctx, key, e)
	l.seconds.Observe(time.Since(start).Seconds())
	return err
}

// consumerCollector reports, at scrape time, each route's records in
// flight and, per partition, how long its oldest unfinished record has
// waited: a stuck record shows there before the lag grows.
type consumerCollector struct {
	subs     map[string]*consume.Subscriber
	inFlight *prometheus.Desc
	window   *prometheus.Desc
	oldest   *prometheus.Desc
	now      func() time.Time
}

func newConsumerCollector(subs map[string]*consume.Subscriber) *consumerCollector {
	return &consumerCollector{
		subs: subs, now: time.Now,
		inFlight: prometheus.NewDesc("eventrouter_records_in_flight",
			"Records a route has handed to its handler and not finished (acked, poisoned or given up).",
			[]string{"route"}, nil),
		window: prometheus.NewDesc("eventrouter_partition_uncommitted_records",
			"Records of a partition taken from Kafka and not yet committed: waiting for their key, in flight, or finished behind an unfinished one.",
			[]string{"route", "topic", "partition"}, nil),
		oldest: prometheus.NewDesc("eventrouter_partition_oldest_unfinished_seconds",
			"How long the oldest unfinished record of a partition has been in the route; 0 when none is unfinished.",
			[]string{"route", "topic", "partition"}, nil),
	}
}

func (c *consumerCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inFlight
	ch <- c.window
	ch <- c.oldest
}

func (c *consumerCollector) Collect(ch chan<- prometheus.Metric) {
	now := c.now()
	for route, sub := range c.subs {
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(sub.InFlight()), route)
		for _, p := range sub.Partitions() {
			partition := strconv.Itoa(int(p.Partition))
			ch <- prometheus.MustNewConstMetric(c.window, prometheus.GaugeValue, float64(p.Window), route, p.Topic, partition)
			age := 0.0
			if !p.Oldest.IsZero() {
				age = now.Sub(p.Oldest).Seconds()
			}
			ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age, route, p.Topic, partition)
		}
	}
}
