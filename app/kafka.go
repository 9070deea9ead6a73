package app

import (
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/kafka/record"
)

// subscriberConfig is saramaConfig for a route's consumer group.
func (a kafkaAccess) subscriberConfig() *sarama.Config {
	cfg := a.cfg
	c := a.saramaConfig()
	c.Consumer.Return.Errors = true
	// As the seed's consumer does: a new group starts at the oldest record,
	// so events published before the router first started are not lost.
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sticky{}}
	c.Consumer.Group.Session.Timeout = cfg.SessionTimeout
	c.Consumer.Group.Heartbeat.Interval = cfg.HeartbeatInterval
	c.Consumer.Group.Rebalance.Timeout = cfg.RebalanceTimeout
	// The coordinator holds a JoinGroup until every member has rejoined,
	// and a SyncGroup until the leader has sent the assignment, each up to
	// the rebalance timeout. sarama has one read timeout for all requests;
	// were it shorter, members would time out of a slow rebalance, rejoin
	// and restart it, again and again (IBM/sarama#2820). Kafka's Java
	// client likewise waits the rebalance timeout plus 5s for a join.
	c.Net.ReadTimeout = max(cfg.RequestTimeout, cfg.RebalanceTimeout+5*time.Second)
	return c
}

// publisherConfig is saramaConfig for the publisher of produced events and
// poisoned records.
func (a kafkaAccess) publisherConfig() *sarama.Config {
	c := a.saramaConfig()
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	// Idempotence keeps a producer retry from writing a record twice.
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 250 * time.Millisecond
	return c
}

// newPublisher connects the publisher of produced events and poisoned
// records.
func newPublisher(a kafkaAccess, logger watermill.LoggerAdapter) (*kafka.Publisher, error) {
	pub, err := kafka.NewPublisher(kafka.PublisherConfig{
		Brokers:               a.brokers,
		Marshaler:             record.Marshaler{},
		OverwriteSaramaConfig: a.publisherConfig(),
	}, logger)
	if err != nil {
		return nil, fmt.Errorf("connect to kafka at %s: %w", strings.Join(a.brokers, ","), err)
	}
	return pub, nil
}

// newSubscriber makes the subscriber of route r's consumer group. It
// connects when it subscribes.
func newSubscriber(a kafkaAccess, r config.Route, logger *slog.Logger) (*consume.Subscriber, error) {
	ordering, err := consume.ParseOrdering(r.Ordering)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", r.Name, err)
	}
	sc := a.subscriberConfig()
	if r.StartFrom == "latest" {
		sc.Consumer.Offsets.Initial = sarama.OffsetNewest
	}
	sub, err := consume.NewSubscriber(consume.Config{
		Brokers:       a.brokers,
		ConsumerGroup: r.ConsumerGroup,
		Sarama:        sc,
		StartAtNewest: r.StartFrom == "latest",
		Unmarshaler:   record.Marshaler{},
		Ordering:      ordering,
		MaxInFlight:   r.MaxInFlight,
		// A revoked partition lets its records in flight finish, but the
		// member must rejoin within the rebalance timeout.
		RevokeTimeout: a.cfg.RebalanceTimeout * 3 / 4,
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
	a, err := newKafkaAccess(cfg, brokers, getenv)
	if err != nil {
		return nil, err
	}
	return newPublisher(a, watermill.NopLogger{})
}

// sticky is sarama's sticky strategy with a new instance for each plan.
// The instance keeps the plan in progress in its fields, and a subscriber
// uses one config for the consumer group of each topic it subscribes, so
// two groups planning at once would share them (a data race). The sticky
// assignor reads the previous assignment from the members' user data, so
// a new instance plans the same.
type sticky struct{}

func (sticky) Name() string { return sarama.StickyBalanceStrategyName }

func (sticky) Plan(members map[string]sarama.ConsumerGroupMemberMetadata, topics map[string][]int32) (sarama.BalanceStrategyPlan, error) {
	return sarama.NewBalanceStrategySticky().Plan(members, topics)
}

func (sticky) AssignmentData(memberID string, topics map[string][]int32, generationID int32) ([]byte, error) {
	return sarama.NewBalanceStrategySticky().AssignmentData(memberID, topics, generationID)
}
