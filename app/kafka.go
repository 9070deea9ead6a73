package app

import (
	"fmt"
	"log/slog"
	"strings"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/kafka/record"
)

// newPublisher connects the publisher of produced events and poisoned
// records.
func newPublisher(a client.Settings, logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               a.Brokers(),
		Marshaler:             record.Marshaler{},
		OverwriteSaramaConfig: a.Publisher(),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka at %s: %w", strings.Join(a.Brokers(), ","), err)
	}
	return pub, nil
}

// newSubscriber makes the subscriber of route r's consumer group. It
// connects when it subscribes.
func newSubscriber(a client.Settings, r config.Route, logger *slog.Logger) (*consume.Subscriber, error) {
	ordering, err := consume.ParseOrdering(r.Ordering)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", r.Name, err)
	}
	// start_from: latest is the subscriber's marks alone: sarama's
	// Offsets.Initial also says where a group whose commit fell out of
	// retention resumes, and that must stay the oldest record.
	sub, err := consume.NewSubscriber(consume.Config{
		Brokers:       a.Brokers(),
		ConsumerGroup: r.ConsumerGroup,
		Sarama:        a.Subscriber(),
		StartAtNewest: r.StartFrom == "latest",
		Unmarshaler:   record.Marshaler{},
		Ordering:      ordering,
		MaxInFlight:   r.MaxInFlight,
		// A revoked partition lets its records in flight finish, but the
		// member must rejoin within the rebalance timeout.
		RevokeTimeout: a.Kafka().RebalanceTimeout * 3 / 4,
		Logger:        logger.With("component", "consumer", "route", r.Name),
	})
	if err != nil {
		return nil, fmt.Errorf("create subscriber for group %s: %w", r.ConsumerGroup, err)
	}
	return sub, nil
}

// NewPublisher returns the Kafka publisher exactly as the daemon configures
// it, for tools such as the benchmark. getenv gives the SASL password.
func NewPublisher(cfg config.Kafka, brokers []string, getenv func(string) string) (message.Publisher, error) {
	a, err := client.New(cfg, brokers, getenv)
	if err != nil {
		return nil, err
	}
	return newPublisher(a, watermill.NopLogger{})
}
