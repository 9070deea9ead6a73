// Package kafkatest gives tests real Kafka brokers to run against: an
// embedded kfake broker always, and the Apache Kafka broker named by
// EVENTROUTER_TEST_BROKERS when it is set.
package kafkatest

import (
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/broker"
)

// BrokersEnv names the variable that points tests at a real Kafka broker.
const BrokersEnv = "EVENTROUTER_TEST_BROKERS"

// Target is one broker a test runs against.
type Target struct {
	// Name is "embedded" or "kafka".
	Name string
	// Brokers are the bootstrap addresses.
	Brokers []string
}

// Each runs fn as a subtest against every available broker: a fresh
// embedded broker, and the real one when EVENTROUTER_TEST_BROKERS is set.
// Under CI=true a missing real broker fails the test rather than skipping.
func Each(t *testing.T, fn func(t *testing.T, target Target)) {
	t.Helper()
	t.Run("embedded", func(t *testing.T) {
		fn(t, Target{Name: "embedded", Brokers: []string{Embedded(t)}})
	})
	t.Run("kafka", func(t *testing.T) {
		fn(t, Target{Name: "kafka", Brokers: Real(t)})
	})
}

// Real returns the real broker's addresses, or skips the test when none is
// configured (fails it under CI=true).
func Real(t *testing.T) []string {
	t.Helper()
	list := need(t, BrokersEnv, "CI runs every integration test on a real Kafka broker (make test starts one)", "run make test to start a real Kafka broker")
	return strings.Split(list, ",")
}

// need returns the variable name, or skips the test when it is not set
// (fails it under CI=true, which has everything).
func need(t *testing.T, name, inCI, hint string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set; %s", name, inCI)
		}
		t.Skipf("%s is not set; %s", name, hint)
	}
	return v
}

// Embedded starts a kfake broker on a free port for the rest of the test
// and returns its address. Auto-created topics get one partition, as on
// Apache Kafka.
func Embedded(t testing.TB) string {
	t.Helper()
	return EmbeddedWith(t, 1)
}

// EmbeddedWith is Embedded with partitions partitions per auto-created
// topic.
func EmbeddedWith(t testing.TB, partitions int) string {
	t.Helper()
	cfg := config.Defaults().Kafka.Embedded
	cfg.Listen = "127.0.0.1:0"
	cfg.Partitions = partitions
	b, err := broker.Start(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatalf("start embedded broker: %v", err)
	}
	t.Cleanup(b.Close)
	return b.Addr()
}

// Topic returns a topic name unique to this run, so tests can share a
// long-lived broker.
func Topic(base string) string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return base + "-" + hex.EncodeToString(b)
}

// Config returns a sarama config that speaks the same protocol version as
// the daemon.
func Config() *sarama.Config {
	c := sarama.NewConfig()
	c.Version, _ = sarama.ParseKafkaVersion(config.Defaults().Kafka.Version)
	c.ClientID = "kafkatest"
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	return c
}

// CreateTopic creates topic with partitions partitions.
func CreateTopic(t testing.TB, brokers []string, topic string, partitions int32) {
	t.Helper()
	CreateReplicatedTopic(t, brokers, topic, partitions, 1)
}

// CreateReplicatedTopic creates topic with partitions partitions, each on
// replicas brokers.
func CreateReplicatedTopic(t testing.TB, brokers []string, topic string, partitions int32, replicas int16) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, Config())
	if err != nil {
		t.Fatalf("connect admin to %v: %v", brokers, err)
	}
	defer admin.Close()
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: partitions, ReplicationFactor: replicas}, false)
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	// Wait until every partition has a leader, as clients see it.
	client, err := sarama.NewClient(brokers, Config())
	if err != nil {
		t.Fatalf("connect to %v: %v", brokers, err)
	}
	defer client.Close()
	deadline := time.Now().Add(30 * time.Second)
	for p := int32(0); p < partitions; {
		_ = client.RefreshMetadata(topic)
		if _, err := client.Leader(topic, p); err == nil {
			p++
			continue
		}
		if time.Now().After(deadline) {
			t.Fatalf("topic %s partition %d has no leader after 30s", topic, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Record is a record to produce.
type Record struct {
	Key     []byte
	Value   []byte
	Headers map[string]string
}

// Produce writes records to topic, in order, and fails the test on error.
func Produce(t testing.TB, brokers []string, topic string, records ...Record) {
	t.Helper()
	p, err := sarama.NewSyncProducer(brokers, Config())
	if err != nil {
		t.Fatalf("connect producer to %v: %v", brokers, err)
	}
	defer p.Close()
	msgs := make([]*sarama.ProducerMessage, 0, len(records))
	for _, r := range records {
		m := &sarama.ProducerMessage{Topic: topic}
		if r.Key != nil {
			m.Key = sarama.ByteEncoder(r.Key)
		}
		if r.Value != nil {
			m.Value = sarama.ByteEncoder(r.Value)
		}
		for k, v := range r.Headers {
			m.Headers = append(m.Headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
		}
		msgs = append(msgs, m)
	}
	if err := p.SendMessages(msgs); err != nil {
		t.Fatalf("produce %d records to %s: %v", len(records), topic, err)
	}
}

// Consume reads topic from the start until it has n records or timeout
// passes, and returns what it read. It waits for the topic to exist.
func Consume(t testing.TB, brokers []string, topic string, n int, timeout time.Duration) []*sarama.ConsumerMessage {
	t.Helper()
	return ConsumeFrom(t, brokers, topic, nil, n, timeout)
}

// Header returns the value of the record's header key, and whether it has
// one.
func Header(m *sarama.ConsumerMessage, key string) (string, bool) {
	for _, h := range m.Headers {
		if string(h.Key) == key {
			return string(h.Value), true
		}
	}
	return "", false
}

// Restartable is an embedded broker that a test can stop and start again on
// the same address and data directory.
type Restartable struct {
	t    testing.TB
	cfg  config.Embedded
	addr string
	b    *broker.Embedded
}

// NewRestartable starts a persistent embedded broker for the rest of the
// test.
func NewRestartable(t testing.TB) *Restartable {
	t.Helper()
	cfg := config.Defaults().Kafka.Embedded
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = t.TempDir()
	r := &Restartable{t: t, cfg: cfg}
	r.Start()
	r.cfg.Listen = r.addr
	t.Cleanup(func() {
		if r.b != nil {
			r.b.Close()
		}
	})
	return r
}

// Addr returns the broker's address, which stays the same across restarts.
func (r *Restartable) Addr() string { return r.addr }

// Stop stops the broker.
func (r *Restartable) Stop() {
	r.b.Close()
	r.b = nil
}

// Start starts the broker, retrying while the old listener's port is still
// being released.
func (r *Restartable) Start() {
	r.t.Helper()
	var err error
	for range 50 {
		r.b, err = broker.Start(r.cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err == nil {
			r.addr = r.b.Addr()
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.t.Fatalf("restart embedded broker: %v", err)
}
