package consume

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/kafka/record"
)

// waitTimeout bounds every wait on the partition's goroutines; a healthy
// run takes microseconds.
const waitTimeout = 10 * time.Second

// fakeSession records the offsets marked.
type fakeSession struct {
	ctx    context.Context
	mu     sync.Mutex
	marked []int64
}

func (s *fakeSession) Claims() map[string][]int32               { return map[string][]int32{"t": {0}} }
func (s *fakeSession) MemberID() string                         { return "member-1" }
func (s *fakeSession) GenerationID() int32                      { return 1 }
func (s *fakeSession) Commit()                                  {}
func (s *fakeSession) ResetOffset(string, int32, int64, string) {}
func (s *fakeSession) Context() context.Context                 { return s.ctx }
func (s *fakeSession) MarkMessage(m *sarama.ConsumerMessage, md string) {
	s.MarkOffset(m.Topic, m.Partition, m.Offset+1, md)
}

func (s *fakeSession) MarkOffset(_ string, _ int32, offset int64, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// As sarama: a mark never moves the offset back.
	if len(s.marked) == 0 || offset > s.marked[len(s.marked)-1] {
		s.marked = append(s.marked, offset)
	}
}

// committed returns the highest offset marked, or -1.
func (s *fakeSession) committed() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.marked) == 0 {
		return -1
	}
	return s.marked[len(s.marked)-1]
}

// fakeClaim is one partition; the test sends records on msgs.
type fakeClaim struct{ msgs chan *sarama.ConsumerMessage }

func (c *fakeClaim) Topic() string                            { return "t" }
func (c *fakeClaim) Partition() int32                         { return 0 }
func (c *fakeClaim) InitialOffset() int64                     { return 0 }
func (c *fakeClaim) HighWaterMarkOffset() int64               { return 0 }
func (c *fakeClaim) Messages() <-chan *sarama.ConsumerMessage { return c.msgs }

// harness runs one partition of a subscriber on fakes.
type harness struct {
	t      *testing.T
	s      *Subscriber
	sess   *fakeSession
	claim  *fakeClaim
	out    chan *message.Message
	cancel context.CancelFunc
	done   chan struct{}
	// offset is the next record's offset.
	offset int64
}

func newHarness(t *testing.T, cfg Config) *harness {
	t.Helper()
	cfg.Brokers, cfg.ConsumerGroup, cfg.Sarama, cfg.Unmarshaler = []string{"127.0.0.1:1"}, "g", sarama.NewConfig(), record.Marshaler{}
	cfg.Logger = slog.New(slog.DiscardHandler)
	s, err := NewSubscriber(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, s: s, out: make(chan *message.Message)}
	t.Cleanup(func() {
		h.cancel()
		s.cancel()
		select {
		case <-h.done:
		case <-time.After(waitTimeout):
			t.Error("partition did not stop")
		}
	})
	h.claimPartition()
	return h
}

// claimPartition starts a new claim of the partition on the harness's
// subscriber, from offset 0, as after a rebalance; the last claim must
// have ended.
func (h *harness) claimPartition() {
	ctx, cancel := context.WithCancel(context.Background())
	h.sess, h.cancel, h.offset = &fakeSession{ctx: ctx}, cancel, 0
	h.claim = &fakeClaim{msgs: make(chan *sarama.ConsumerMessage, 1024)}
	h.done = make(chan struct{})
	// The subscription's context ends with the subscriber, as Subscribe's.
	gh := &groupHandler{s: h.s, ctx: h.s.ctx, out: h.out}
	sess, claim, done := h.sess, h.claim, h.done
	go func() {
		defer close(done)
		_ = gh.ConsumeClaim(sess, claim)
	}()
}

// add offers records with the given keys ("" for none), at the next
// offsets.
func (h *harness) add(keys ...string) {
	for _, k := range keys {
		var key []byte
		if k != "" {
			key = []byte(k)
		}
		h.claim.msgs <- &sarama.ConsumerMessage{Topic: "t", Partition: 0, Offset: h.offset, Key: key, Value: []byte(k)}
		h.offset++
	}
}

// next returns the next message handed out, failing when none comes.
func (h *harness) next() *message.Message {
	h.t.Helper()
	select {
	case m := <-h.out:
		return m
	case <-time.After(waitTimeout):
		h.t.Fatal("no message handed out")
		return nil
	}
}

// none fails if a message is handed out within a short while: records
// that must wait are never handed out at all, so the wait bounds only how
// long the test looks.
func (h *harness) none() {
	h.t.Helper()
	select {
	case m := <-h.out:
		h.t.Fatalf("got offset %d handed out; want none", offset(m))
	case <-time.After(50 * time.Millisecond):
	}
}

func offset(m *message.Message) int64 {
	o, _ := record.OriginFrom(m.Context())
	return o.Offset
}

// eventually polls cond until it holds, failing the test with what() once
// waitTimeout has passed.
func eventually(t *testing.T, cond func() bool, what func() string) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.After(waitTimeout)
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal(what())
		}
	}
}

// waitCommitted waits until the partition marked want.
func (h *harness) waitCommitted(want int64) {
	h.t.Helper()
	eventually(h.t, func() bool { return h.sess.committed() == want },
		func() string { return fmt.Sprintf("got committed offset %d; want %d", h.sess.committed(), want) })
}

func waitInFlight(t *testing.T, s *Subscriber, want int64) {
	t.Helper()
	eventually(t, func() bool { return s.InFlight() == want },
		func() string { return fmt.Sprintf("got %d in flight; want %d", s.InFlight(), want) })
}

func TestKeyOrderingHandsOutOtherKeysAtOnce(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey})
	h.add("a", "b", "a", "", "")
	got := []int64{offset(h.next()), offset(h.next()), offset(h.next())}
	slices.Sort(got)
	if want := []int64{0, 1, 3}; !slices.Equal(got, want) {
		t.Fatalf("got offsets %v handed out first; want %v (a, b and the first without a key)", got, want)
	}
	h.none()
}

func TestSubscriberOrdering(t *testing.T) {
	tests := []struct {
		name     string
		ordering Ordering
		keys     []string
		// first is how many records are handed out before any ack.
		first int
	}{
		{"key: distinct keys all start", ByKey, []string{"a", "b", "c", "d"}, 4},
		{"key: one key runs alone", ByKey, []string{"a", "a", "a"}, 1},
		{"key: no key is one key", ByKey, []string{"", "", "x"}, 2},
		{"partition: one at a time", ByPartition, []string{"a", "b", "c"}, 1},
		{"unordered: all at once", Unordered, []string{"a", "a", "a"}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t, Config{Ordering: tt.ordering})
			h.add(tt.keys...)
			var msgs []*message.Message
			for range tt.first {
				msgs = append(msgs, h.next())
			}
			h.none()
			// Acking everything in hand lets the rest through, and every
			// offset is committed in the end.
			for len(msgs) > 0 {
				m := msgs[0]
				msgs = msgs[1:]
				m.Ack()
				select {
				case n := <-h.out:
					msgs = append(msgs, n)
				case <-time.After(20 * time.Millisecond):
				}
			}
			h.waitCommitted(int64(len(tt.keys)))
		})
	}
}

func TestCommitNeverPassesARecordInFlight(t *testing.T) {
	h := newHarness(t, Config{Ordering: Unordered})
	h.add("a", "b", "c")
	m0, m1, m2 := h.next(), h.next(), h.next()
	byOffset := map[int64]*message.Message{offset(m0): m0, offset(m1): m1, offset(m2): m2}
	byOffset[2].Ack()
	byOffset[1].Ack()
	waitInFlight(t, h.s, 1)
	if got := h.sess.committed(); got > 0 {
		t.Fatalf("got offset %d committed with offset 0 in flight; want at most 0", got)
	}
	byOffset[0].Ack()
	h.waitCommitted(3)
}

func TestNackedRecordComesBackAndBlocksOnlyItsKey(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey, NackDelay: 20 * time.Millisecond})
	h.add("a", "a", "b")
	first := h.next()
	b := h.next()
	if offset(first) != 0 || offset(b) != 2 {
		t.Fatalf("got offsets %d and %d first; want 0 and 2", offset(first), offset(b))
	}
	first.Nack()
	b.Ack()
	again := h.next()
	if offset(again) != 0 {
		t.Fatalf("got offset %d after the nack; want 0 again, before 1 of the same key", offset(again))
	}
	if again == first {
		t.Fatal("got the nacked message itself again; want a new message")
	}
	h.none()
	again.Ack()
	if got := offset(h.next()); got != 1 {
		t.Fatalf("got offset %d; want 1", got)
	}
}

func TestMaxInFlightBoundsHandedOut(t *testing.T) {
	h := newHarness(t, Config{Ordering: Unordered, MaxInFlight: 2})
	h.add("a", "b", "c", "d")
	m := h.next()
	h.next()
	h.none()
	m.Ack()
	h.next()
	h.none()
}

func TestMaxWindowStopsFetching(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey, MaxInFlight: 4, MaxWindow: 3})
	h.add("hot", "hot", "hot", "hot", "cold")
	m := h.next()
	h.none()
	// Offsets 0 to 2 fill the window: the cold key behind them is not
	// taken until the hot key's first record finishes.
	eventually(t, func() bool { return len(h.claim.msgs) == 2 },
		func() string { return fmt.Sprintf("got %d records left in the claim; want 2", len(h.claim.msgs)) })
	if st := h.s.Partitions(); len(st) != 1 || st[0].Window != 3 || st[0].Oldest.IsZero() {
		t.Fatalf("got partitions %+v; want one with a window of 3 and an oldest record", st)
	}
	m.Ack()
	if got := offset(h.next()); got != 1 {
		t.Fatalf("got offset %d; want 1", got)
	}
}

func TestStopHandsOutNothingMoreAndWaitsForTheRest(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey})
	h.add("a", "b", "a")
	m0, m1 := h.next(), h.next()
	h.s.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := h.s.Wait(ctx); err == nil {
		t.Fatal("Wait returned with two records in flight")
	}
	m0.Ack()
	h.none()
	m1.Ack()
	ctx, cancel = context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := h.s.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
	// Offset 2 was never handed out: it is consumed again from 2.
	h.waitCommitted(2)
}

func TestRevokeWaitsForRecordsInFlightThenDropsLateAcks(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey, RevokeTimeout: 200 * time.Millisecond})
	h.add("a", "b", "c")
	m0, m1, m2 := h.next(), h.next(), h.next()
	byOffset := map[int64]*message.Message{offset(m0): m0, offset(m1): m1, offset(m2): m2}
	close(h.claim.msgs)
	byOffset[0].Ack()
	h.waitCommitted(1)
	select {
	case <-h.done:
		t.Fatal("revoked partition returned with records in flight before its timeout")
	case <-time.After(20 * time.Millisecond):
	}
	select {
	case <-h.done:
	case <-time.After(waitTimeout):
		t.Fatal("revoked partition did not return after its timeout")
	}
	byOffset[1].Ack()
	byOffset[2].Ack()
	waitInFlight(t, h.s, 0)
	if got := h.sess.committed(); got != 1 {
		t.Fatalf("got committed offset %d after late acks; want 1", got)
	}
	if len(h.s.slots) != 0 {
		t.Fatalf("got %d slots held; want 0", len(h.s.slots))
	}
}

func TestMessageContextEndsWithTheRecord(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey})
	h.add("k")
	m := h.next()
	o, ok := record.OriginFrom(m.Context())
	if !ok || o.Topic != "t" || string(o.Key) != "k" {
		t.Fatalf("got origin %+v, %v; want topic t, key k", o, ok)
	}
	if key, _ := record.Key(m.Context()); string(key) != "k" {
		t.Fatalf("got record key %q; want k", key)
	}
	m.Ack()
	select {
	case <-m.Context().Done():
	case <-time.After(waitTimeout):
		t.Fatal("message context not cancelled after the ack")
	}
}

func TestClaimAfterStopHandsOutNothing(t *testing.T) {
	h := newHarness(t, Config{Ordering: Unordered})
	h.cancel()
	<-h.done
	h.s.Stop()
	// A rebalance after the stop: the new claim must not hand out either.
	for range 20 {
		h.claimPartition()
		h.add("a", "b", "c")
		h.none()
		h.cancel()
		<-h.done
	}
	waitInFlight(t, h.s, 0)
}

func TestRevokeThatTimesOutCancelsAndTheNextClaimWaits(t *testing.T) {
	h := newHarness(t, Config{Ordering: ByKey, RevokeTimeout: 300 * time.Millisecond})
	h.add("a")
	old := h.next()
	close(h.claim.msgs)
	select {
	case <-h.done:
	case <-time.After(waitTimeout):
		t.Fatal("revoked partition did not give up after its timeout")
	}
	select {
	case <-old.Context().Done():
	default:
		t.Fatal("the record given up on still has a live context")
	}
	// Claimed again (sticky assignment) while the old record still runs:
	// the same record must not run twice at once.
	h.claimPartition()
	h.add("a")
	h.none()
	old.Ack()
	if got := offset(h.next()); got != 0 {
		t.Fatalf("got offset %d; want 0 again, once the old one finished", got)
	}
}

// A stop that races the ack freeing the next record of a key: once Wait
// returned, nothing is handed out; a record already on its way counts as
// in flight, so Wait waits for it.
func TestNothingHandedOutAfterWait(t *testing.T) {
	for range 50 {
		h := newHarness(t, Config{Ordering: ByKey})
		h.add("a", "a")
		m := h.next()
		go m.Ack()
		h.s.Stop()
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			err := h.s.Wait(ctx)
			cancel()
			if err == nil {
				break
			}
			// Counted as in flight: it must be on its way.
			h.next().Ack()
		}
		select {
		case m := <-h.out:
			t.Fatalf("got offset %d handed out after Wait returned", offset(m))
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// An ack that came before Close is marked, although Close cancels
// everything still in flight.
func TestAckBeforeCloseIsMarked(t *testing.T) {
	for range 20 {
		h := newHarness(t, Config{Ordering: Unordered})
		h.add("a", "b")
		m0, m1 := h.next(), h.next()
		first := map[int64]*message.Message{offset(m0): m0, offset(m1): m1}[0]
		first.Ack()
		if err := h.s.Close(); err != nil {
			t.Fatal(err)
		}
		select {
		case <-h.done:
		case <-time.After(waitTimeout):
			t.Fatal("partition did not stop at Close")
		}
		if got := h.sess.committed(); got != 1 {
			t.Fatalf("got offset %d committed; want 1: offset 0 was acked before Close", got)
		}
		if n := len(h.s.slots); n != 0 {
			t.Fatalf("got %d slots held after Close; want 0", n)
		}
	}
}
