package app

import (
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/retry"
)

// kafkaDependency names Kafka in outage errors (see retry.Unavailable).
const kafkaDependency = "kafka"

// output publishes the events a handler produces, as a middleware inside
// retry and the breaker. Watermill would publish them after the whole
// chain, where a failed publish only nacks the record: it comes back at
// once, forever, never retried with backoff, paused or poisoned. Here a
// failed publish is an error of the handler like any other: retried when
// transient, pausing the route while Kafka is unreachable or the topic
// unusable, and poisoning the record when the record itself is at fault.
// Handlers are idempotent (the ledger), so a retry publishes and sends
// nothing twice.
//
// After the publish it marks the ledger entries the events announce.
func output(r config.Route, pub message.Publisher, l sideLedger, tracer trace.Tracer, logger *slog.Logger) message.HandlerMiddleware {
	return func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err != nil || len(out) == 0 {
				return nil, err
			}
			if r.PublishTopic == "" {
				return nil, retry.Permanent(fmt.Errorf("handler %s produced %d events but route %s has no publish_topic", r.Handler, len(out), r.Name))
			}
			ctx := msg.Context()
			spans := make([]trace.Span, len(out))
			for i, o := range out {
				pctx, span := tracer.Start(ctx, r.PublishTopic+" publish",
					trace.WithSpanKind(trace.SpanKindProducer),
					trace.WithAttributes(
						attribute.String("messaging.system", "kafka"),
						attribute.String("messaging.destination.name", r.PublishTopic),
						attribute.String("messaging.message.id", o.UUID),
					))
				propagator.Inject(pctx, propagation.MapCarrier(o.Metadata))
				spans[i] = span
			}
			err = pub.Publish(r.PublishTopic, out...)
			for _, span := range spans {
				if err != nil {
					span.RecordError(err)
					span.SetStatus(codes.Error, err.Error())
				}
				span.End()
			}
			if err != nil {
				return nil, publishError(r.PublishTopic, err)
			}
			retry.Reached(ctx, kafkaDependency)
			for _, o := range out {
				if key, ok := ledger.KeyFrom(o.Context()); ok && l != nil {
					if err := l.MarkPublished(key); err != nil {
						// The event is out; at worst a redelivery publishes
						// it again with the same UUID.
						logger.WarnContext(ctx, "could not mark notification published", "err", err)
					}
				}
			}
			return nil, nil
		}
	}
}

// publishError classifies a failed publish: the record's own fault is
// permanent; a broker or topic that cannot take any record is an outage;
// the rest is transient.
func publishError(topic string, err error) error {
	err = fmt.Errorf("publish to %s: %w", topic, err)
	var kerr sarama.KError
	var cfgErr sarama.ConfigurationError
	var netErr net.Error
	switch {
	case errors.As(err, &cfgErr):
		// Raised by the client before sending, such as a record larger
		// than Producer.MaxMessageBytes.
		return retry.Permanent(err)
	case errors.As(err, &kerr):
		switch kerr {
		case sarama.ErrMessageSizeTooLarge, sarama.ErrInvalidMessage, sarama.ErrInvalidMessageSize,
			sarama.ErrInvalidRecord:
			return retry.Permanent(err)
		case sarama.ErrUnknownTopicOrPartition, sarama.ErrTopicAuthorizationFailed,
			sarama.ErrClusterAuthorizationFailed, sarama.ErrLeaderNotAvailable,
			sarama.ErrNotLeaderForPartition, sarama.ErrNotEnoughReplicas,
			sarama.ErrNotEnoughReplicasAfterAppend, sarama.ErrRequestTimedOut,
			sarama.ErrBrokerNotAvailable, sarama.ErrNetworkException:
			return retry.Unavailable(kafkaDependency, err)
		}
		return err
	case errors.Is(err, sarama.ErrOutOfBrokers), errors.Is(err, sarama.ErrNotConnected),
		errors.Is(err, sarama.ErrClosedClient), errors.As(err, &netErr):
		return retry.Unavailable(kafkaDependency, err)
	}
	return err
}
