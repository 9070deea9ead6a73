package consume_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// handling is what the stress test's handler saw of one record.
type handling struct {
	mu sync.Mutex
	// order holds, per key (per partition for records without a key), the
	// sequence numbers of the records handled successfully, in the order
	// their handlers returned.
	order map[string][]int
	// done counts successful handlings per record.
	done map[string]int
	// running counts handlers running per key.
	running map[string]int
	overlap []string
}

// TestStressKeyOrder runs the subscriber under Watermill's router with the
// retry and recoverer middleware the daemon uses, on many keys over six
// partitions, with random handler latencies, random errors (some retried
// inside the handler's chain, some nacked back to the subscriber) and
// random panics. Each key's records are handled one at a time in offset
// order, every record is handled exactly once (a clean run), and the
// group commits every offset.
func TestStressKeyOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("handles thousands of records")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const (
			keys    = 97
			records = 4000
		)
		seed := uint64(time.Now().UnixNano())
		t.Logf("seed %d", seed)
		rng := rand.New(rand.NewPCG(seed, 1))
		topic := kafkatest.Topic("stress")
		group := topic + "-group"
		kafkatest.CreateTopic(t, k.Brokers, topic, 6)

		// Records 0, 1, ... of key k carry "k:n"; a few have no key.
		var recs []kafkatest.Record
		seq := map[string]int{}
		for range records {
			key := "k" + strconv.Itoa(rng.IntN(keys))
			if rng.IntN(50) == 0 {
				key = ""
			}
			rec := kafkatest.Record{Value: fmt.Appendf(nil, "%s:%d", key, seq[key])}
			if key != "" {
				rec.Key = []byte(key)
			}
			recs = append(recs, rec)
			seq[key]++
		}
		kafkatest.Produce(t, k.Brokers, topic, recs...)

		cfg := kafkatest.Config()
		cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
		sub, err := consume.NewSubscriber(consume.Config{
			Brokers: k.Brokers, ConsumerGroup: group, Sarama: cfg, Unmarshaler: record.Marshaler{},
			Ordering: consume.ByKey, MaxInFlight: 64, NackDelay: time.Millisecond,
			Logger: slog.New(slog.DiscardHandler),
		})
		if err != nil {
			t.Fatal(err)
		}
		h := &handling{order: map[string][]int{}, done: map[string]int{}, running: map[string]int{}}
		var rmu sync.Mutex
		chance := func(n int) bool {
			rmu.Lock()
			defer rmu.Unlock()
			return rng.IntN(n) == 0
		}
		latency := func() time.Duration {
			rmu.Lock()
			defer rmu.Unlock()
			return time.Duration(rng.IntN(3000)) * time.Microsecond
		}

		router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		retry := middleware.Retry{MaxRetries: 1, InitialInterval: time.Millisecond}
		router.AddConsumerHandler("stress", topic, sub, func(msg *message.Message) error {
			key, n, _ := strings.Cut(string(msg.Payload), ":")
			lane := key
			if key == "" {
				// Records without a key are spread over the partitions,
				// and ordered within each.
				o, _ := record.OriginFrom(msg.Context())
				lane = fmt.Sprintf("no key, partition %d", o.Partition)
			}
			h.mu.Lock()
			h.running[lane]++
			if h.running[lane] > 1 {
				h.overlap = append(h.overlap, string(msg.Payload))
			}
			h.mu.Unlock()
			defer func() {
				h.mu.Lock()
				h.running[lane]--
				h.mu.Unlock()
			}()
			<-time.After(latency()) // the handler's work
			switch {
			case chance(20):
				panic("stress panic")
			case chance(10):
				return errors.New("stress error")
			}
			seqNo, _ := strconv.Atoi(n)
			h.mu.Lock()
			h.order[lane] = append(h.order[lane], seqNo)
			h.done[string(msg.Payload)]++
			h.mu.Unlock()
			return nil
		}).AddMiddleware(retry.Middleware, middleware.Recoverer)

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		runDone := make(chan error, 1)
		go func() { runDone <- router.Run(ctx) }()
		defer func() {
			cancel()
			<-runDone
		}()

		doneCount := func() int {
			h.mu.Lock()
			defer h.mu.Unlock()
			return len(h.done)
		}
		poll(t, 3*time.Minute, func() bool { return doneCount() == records },
			func() string { return fmt.Sprintf("got %d of %d records handled", doneCount(), records) })
		// Every offset is committed once the last acks are marked.
		waitCommitted(t, k.Brokers, group, topic)
		sub.Stop()
		waitCtx, stop := context.WithTimeout(context.Background(), 30*time.Second)
		defer stop()
		if err := sub.Wait(waitCtx); err != nil {
			t.Fatalf("wait: %v", err)
		}

		h.mu.Lock()
		defer h.mu.Unlock()
		if len(h.overlap) > 0 {
			t.Errorf("got %d records handled while another of their key ran (first %s); want none", len(h.overlap), h.overlap[0])
		}
		handled := map[string]int{}
		for lane, got := range h.order {
			for i := 1; i < len(got); i++ {
				if got[i] <= got[i-1] {
					t.Errorf("%s: got record %d handled after %d; want each key's records in offset order", lane, got[i], got[i-1])
					break
				}
			}
			key := lane
			if strings.HasPrefix(lane, "no key") {
				key = ""
			}
			handled[key] += len(got)
		}
		for key, want := range seq {
			if handled[key] != want {
				t.Errorf("key %q: got %d records handled; want %d", key, handled[key], want)
			}
		}
		for rec, n := range h.done {
			if n != 1 {
				t.Errorf("record %s handled %d times; want once in a clean run", rec, n)
			}
		}
	})
}

// waitCommitted waits until the group committed the end offset of every
// partition of topic.
func waitCommitted(t *testing.T, brokers []string, group, topic string) {
	t.Helper()
	client, err := sarama.NewClient(brokers, kafkatest.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	behind := func() int {
		n := 0
		offsets, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range partitions {
			end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				t.Fatal(err)
			}
			if b := offsets.GetBlock(topic, p); b == nil || b.Offset != end {
				n++
			}
		}
		return n
	}
	poll(t, 30*time.Second, func() bool { return behind() == 0 },
		func() string { return fmt.Sprintf("%d partitions not committed to their end", behind()) })
}

// poll checks cond every 20ms until it holds, failing the test with what()
// once timeout has passed.
func poll(t *testing.T, timeout time.Duration, cond func() bool, what func() string) {
	t.Helper()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal(what())
		}
	}
}
