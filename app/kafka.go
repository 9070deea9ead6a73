package app

import (
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
)

// saramaConfig returns the client settings shared by every Kafka client the
// daemon makes. cfg was validated, so its version parses.
func saramaConfig(cfg config.Kafka) *sarama.Config {
	c := sarama.NewConfig()
	c.Version, _ = sarama.ParseKafkaVersion(cfg.Version)
	c.ClientID = cfg.ClientID
	c.Net.DialTimeout = cfg.DialTimeout
	c.Metadata.Retry.Backoff = 250 * time.Millisecond
	return c
}

// subscriberConfig is saramaConfig for a route's consumer group.
func subscriberConfig(cfg config.Kafka) *sarama.Config {
	c := saramaConfig(cfg)
	c.Consumer.Return.Errors = true
	// As the seed's consumer does: a new group starts at the oldest record,
	// so events published before the router first started are not lost.
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}
	return c
}

// publisherConfig is saramaConfig for the publisher of produced events and
// poisoned records.
func publisherConfig(cfg config.Kafka) *sarama.Config {
	c := saramaConfig(cfg)
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	// Idempotence keeps a producer retry from writing a record twice.
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 250 * time.Millisecond
	return c
}
