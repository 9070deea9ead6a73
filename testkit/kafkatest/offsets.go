package kafkatest

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// EndOffsets returns the end offset of each partition of topic: the offset
// its next record gets. It returns an empty map when topic does not exist,
// and never creates it. A test that must share a topic with earlier runs
// takes the end offsets before it publishes, and reads only after them
// (ConsumeFrom, CommitOffsets).
func EndOffsets(t testing.TB, brokers []string, topic string) map[int32]int64 {
	t.Helper()
	cfg := Config()
	// Asking for a missing topic's metadata would create it on a broker
	// that auto-creates topics, with whatever partitions it defaults to.
	cfg.Metadata.AllowAutoTopicCreation = false
	client, err := sarama.NewClient(brokers, cfg)
	if err != nil {
		t.Fatalf("connect to %v: %v", brokers, err)
	}
	defer client.Close()
	partitions, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return map[int32]int64{}
	}
	if err != nil {
		t.Fatalf("partitions of %s: %v", topic, err)
	}
	ends := make(map[int32]int64, len(partitions))
	for _, p := range partitions {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatalf("end offset of %s/%d: %v", topic, p, err)
		}
		ends[p] = end
	}
	return ends
}

// Since returns how many records topic holds at or after from: from the
// end offsets EndOffsets returned earlier to the end offsets now. A
// partition missing from from (the topic or partition was created later)
// counts from its oldest record.
func Since(t testing.TB, brokers []string, topic string, from map[int32]int64) int {
	t.Helper()
	client, err := sarama.NewClient(brokers, Config())
	if err != nil {
		t.Fatalf("connect to %v: %v", brokers, err)
	}
	defer client.Close()
	n := 0
	for p, end := range EndOffsets(t, brokers, topic) {
		start, ok := from[p]
		if !ok {
			if start, err = client.GetOffset(topic, p, sarama.OffsetOldest); err != nil {
				t.Fatalf("oldest offset of %s/%d: %v", topic, p, err)
			}
		}
		n += int(max(end-start, 0))
	}
	return n
}

// ConsumeFrom is Consume starting at from[p] on each partition p rather
// than at the oldest record, so that a test reads only what was published
// after it took from with EndOffsets. A partition missing from from is read
// from its oldest record.
func ConsumeFrom(t testing.TB, brokers []string, topic string, from map[int32]int64, n int, timeout time.Duration) []*sarama.ConsumerMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	client, err := sarama.NewClient(brokers, Config())
	if err != nil {
		t.Fatalf("connect consumer to %v: %v", brokers, err)
	}
	defer client.Close()

	var partitions []int32
	for {
		_ = client.RefreshMetadata(topic)
		partitions, err = client.Partitions(topic)
		if err == nil && len(partitions) > 0 {
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(100 * time.Millisecond):
		}
	}
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatalf("consumer: %v", err)
	}
	defer consumer.Close()
	out := make(chan *sarama.ConsumerMessage)
	for _, p := range partitions {
		start, ok := from[p]
		if !ok {
			start = sarama.OffsetOldest
		}
		pc, err := consumer.ConsumePartition(topic, p, start)
		if err != nil {
			t.Fatalf("consume %s/%d from %d: %v", topic, p, start, err)
		}
		defer pc.AsyncClose()
		go func() {
			for m := range pc.Messages() {
				select {
				case out <- m:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	var got []*sarama.ConsumerMessage
	for len(got) < n {
		select {
		case m := <-out:
			got = append(got, m)
		case <-ctx.Done():
			return got
		}
	}
	return got
}

// CommitOffsets commits offsets (partition to offset) of topic for
// consumer group group, which must have no members. A new group starts at
// the oldest record; one committed at the end offsets a test took with
// EndOffsets starts after everything earlier runs left on the topic.
func CommitOffsets(t testing.TB, brokers []string, group, topic string, offsets map[int32]int64) {
	t.Helper()
	if len(offsets) == 0 {
		return
	}
	admin, err := sarama.NewClusterAdmin(brokers, Config())
	if err != nil {
		t.Fatalf("connect admin to %v: %v", brokers, err)
	}
	defer admin.Close()
	blocks := make(map[int32]sarama.OffsetAndMetadata, len(offsets))
	for p, off := range offsets {
		blocks[p] = sarama.OffsetAndMetadata{Offset: off, LeaderEpoch: -1}
	}
	resp, err := admin.AlterConsumerGroupOffsets(group, map[string]map[int32]sarama.OffsetAndMetadata{topic: blocks}, nil)
	if err != nil {
		t.Fatalf("commit offsets of %s for group %s: %v", topic, group, err)
	}
	for p, kerr := range resp.Errors[topic] {
		if kerr != sarama.ErrNoError {
			t.Fatalf("commit offset of %s/%d for group %s: %v", topic, p, group, kerr)
		}
	}
}
