package drain_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/drain"
)

// waitTimeout bounds every wait for the gate's goroutines; a healthy run
// takes microseconds.
const waitTimeout = 10 * time.Second

// fakeSession is a consumer group session that records what is marked.
type fakeSession struct {
	mu     sync.Mutex
	marked []int64
}

func (s *fakeSession) Claims() map[string][]int32               { return map[string][]int32{"t": {0}} }
func (s *fakeSession) MemberID() string                         { return "member-1" }
func (s *fakeSession) GenerationID() int32                      { return 1 }
func (s *fakeSession) MarkOffset(string, int32, int64, string)  {}
func (s *fakeSession) Commit()                                  {}
func (s *fakeSession) ResetOffset(string, int32, int64, string) {}
func (s *fakeSession) Context() context.Context                 { return context.Background() }
func (s *fakeSession) MarkMessage(m *sarama.ConsumerMessage, _ string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.marked = append(s.marked, m.Offset)
}

func (s *fakeSession) Marked() []int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.marked)
}

// fakeClaim is one partition's claim; the test sends its records on msgs.
// The channel is unbuffered, so a send returns once the gate took the
// record.
type fakeClaim struct {
	msgs chan *sarama.ConsumerMessage
}

func newClaim() *fakeClaim { return &fakeClaim{msgs: make(chan *sarama.ConsumerMessage)} }

func (c *fakeClaim) Topic() string                            { return "t" }
func (c *fakeClaim) Partition() int32                         { return 0 }
func (c *fakeClaim) InitialOffset() int64                     { return 0 }
func (c *fakeClaim) HighWaterMarkOffset() int64               { return 0 }
func (c *fakeClaim) Messages() <-chan *sarama.ConsumerMessage { return c.msgs }

// fakeHandler stands in for watermill-kafka's handler. ConsumeClaim hands
// each record with the session it came in to the test on got, then waits
// for the test to let it go on (next) or end the claim (end), as a handler
// does whose partition is revoked mid-record.
type fakeHandler struct {
	setupErr, cleanupErr error
	setups, cleanups     int
	got                  chan delivery
	next                 chan struct{}
	end                  chan struct{}
}

type delivery struct {
	sess sarama.ConsumerGroupSession
	rec  *sarama.ConsumerMessage
}

func newHandler() *fakeHandler {
	return &fakeHandler{got: make(chan delivery), next: make(chan struct{}), end: make(chan struct{})}
}

func (h *fakeHandler) Setup(sarama.ConsumerGroupSession) error {
	h.setups++
	return h.setupErr
}

func (h *fakeHandler) Cleanup(sarama.ConsumerGroupSession) error {
	h.cleanups++
	return h.cleanupErr
}

func (h *fakeHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for {
		select {
		case rec, ok := <-claim.Messages():
			if !ok {
				return nil
			}
			select {
			case h.got <- delivery{sess: sess, rec: rec}:
			case <-h.end:
				return nil
			}
			select {
			case <-h.next:
			case <-h.end:
				return nil
			}
		case <-h.end:
			return nil
		}
	}
}

// consuming is one running ConsumeClaim of a gated handler.
type consuming struct {
	t     *testing.T
	gate  *drain.Gate
	h     *fakeHandler
	sess  *fakeSession
	claim *fakeClaim
	done  chan error
	// closed is closed with the claim's records channel.
	closed chan struct{}
}

// consume runs ConsumeClaim of the gated fake handler until the test ends
// the claim; at the end of the test it closes the claim, as sarama does
// when a session ends, and waits for ConsumeClaim to return.
func consume(t *testing.T, gate *drain.Gate) *consuming {
	t.Helper()
	c := &consuming{
		t: t, gate: gate, h: newHandler(), sess: &fakeSession{}, claim: newClaim(),
		done: make(chan error, 1), closed: make(chan struct{}),
	}
	wrapped := gate.WrapConsumerGroupHandler(c.h)
	go func() { c.done <- wrapped.ConsumeClaim(c.sess, c.claim) }()
	t.Cleanup(func() {
		c.closeClaim()
		c.endClaim()
		select {
		case err := <-c.done:
			if err != nil {
				t.Errorf("ConsumeClaim = %v; want nil", err)
			}
			c.done <- err
		case <-time.After(waitTimeout):
			t.Errorf("ConsumeClaim did not return within %s of its claim closing", waitTimeout)
		}
	})
	return c
}

// send offers the claim record offset off and returns the delivery when
// the handler receives it.
func (c *consuming) send(off int64) delivery {
	c.t.Helper()
	c.offer(off)
	select {
	case d := <-c.h.got:
		if d.rec.Offset != off {
			c.t.Fatalf("handler got offset %d; want %d", d.rec.Offset, off)
		}
		return d
	case <-time.After(waitTimeout):
		c.t.Fatalf("handler did not get offset %d within %s", off, waitTimeout)
		return delivery{}
	}
}

// offer puts record offset off on the claim and returns once the gate
// took it, whether or not it hands it on.
func (c *consuming) offer(off int64) {
	c.t.Helper()
	select {
	case c.claim.msgs <- &sarama.ConsumerMessage{Topic: "t", Offset: off}:
	case <-time.After(waitTimeout):
		c.t.Fatalf("the gate did not take offset %d within %s", off, waitTimeout)
	}
}

// next lets the handler take its next record.
func (c *consuming) next() {
	c.t.Helper()
	select {
	case c.h.next <- struct{}{}:
	case <-time.After(waitTimeout):
		c.t.Fatalf("handler not waiting to go on")
	}
}

// endClaim makes the handler's ConsumeClaim return, as when its partition
// is revoked; it is a no-op the second time.
func (c *consuming) endClaim() {
	select {
	case <-c.h.end:
	default:
		close(c.h.end)
	}
}

func (c *consuming) closeClaim() {
	select {
	case <-c.closed:
	default:
		close(c.closed)
		close(c.claim.msgs)
	}
}

// finish closes the claim, as sarama does when the session ends, lets the
// busy handler go on, and fails the test if the handler gets another
// record before its ConsumeClaim returns.
func (c *consuming) finish() {
	c.t.Helper()
	c.closeClaim()
	c.next()
	select {
	case d := <-c.h.got:
		c.t.Fatalf("handler got offset %d after the gate stopped; want none", d.rec.Offset)
	case err := <-c.done:
		c.done <- err // for the cleanup
		if err != nil {
			c.t.Fatalf("ConsumeClaim = %v; want nil", err)
		}
	case <-time.After(waitTimeout):
		c.t.Fatalf("ConsumeClaim did not return within %s of its claim closing", waitTimeout)
	}
}

// returned waits for ConsumeClaim to return and fails the test if it
// returned an error.
func (c *consuming) returned() {
	c.t.Helper()
	select {
	case err := <-c.done:
		c.done <- err // for the cleanup
		if err != nil {
			c.t.Fatalf("ConsumeClaim = %v; want nil", err)
		}
	case <-time.After(waitTimeout):
		c.t.Fatalf("ConsumeClaim did not return within %s", waitTimeout)
	}
}

// waitInFlight waits until the gate counts want records in flight.
func waitInFlight(t *testing.T, g *drain.Gate, want int64) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for g.InFlight() != want {
		if time.Now().After(deadline) {
			t.Fatalf("InFlight() = %d after %s; want %d", g.InFlight(), waitTimeout, want)
		}
		<-tick.C
	}
}

// waitTimesOut checks that Wait does not return while records are in
// flight: it must give up with ctx's error instead.
func waitTimesOut(t *testing.T, g *drain.Gate) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- g.Wait(ctx) }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Wait with %d in flight = %v; want %v", g.InFlight(), err, context.DeadlineExceeded)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Wait with %d in flight did not return within %s of its deadline", g.InFlight(), waitTimeout)
	}
}

func TestGateCountsHandedOutUntilMarked(t *testing.T) {
	tests := []struct {
		name string
		// handed records reach the handler; the first marked of them are
		// marked, then the last one marked is marked markedAgain more
		// times.
		handed, marked, markedAgain int
		want                        int64
	}{
		{name: "nothing handed out", want: 0},
		{name: "handed out, none marked", handed: 3, want: 3},
		{name: "handed out, some marked", handed: 3, marked: 2, want: 1},
		{name: "every one marked", handed: 3, marked: 3, want: 0},
		{name: "extra marks never go below zero", handed: 1, marked: 1, markedAgain: 3, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := drain.New()
			c := consume(t, g)
			var ds []delivery
			for i := range tt.handed {
				ds = append(ds, c.send(int64(i)))
				c.next()
				if got := g.InFlight(); got != int64(i+1) {
					t.Fatalf("InFlight() after %d handed out = %d; want %d", i+1, got, i+1)
				}
			}
			for _, d := range ds[:tt.marked] {
				d.sess.MarkMessage(d.rec, "")
			}
			for range tt.markedAgain {
				d := ds[tt.marked-1]
				d.sess.MarkMessage(d.rec, "")
			}
			if got := g.InFlight(); got != tt.want {
				t.Errorf("InFlight() = %d; want %d", got, tt.want)
			}
			if got, want := len(c.sess.Marked()), tt.marked+tt.markedAgain; got != want {
				t.Errorf("session got %d marks; want %d: the gate's session must pass every mark on", got, want)
			}
		})
	}
}

// TestGateClaimEndReleasesPending checks that when a claim ends (its
// partition revoked, the session over), what it handed out and never
// marked stops counting: the partition's next owner consumes it again, so
// a drain must not wait for it.
func TestGateClaimEndReleasesPending(t *testing.T) {
	tests := []struct {
		name           string
		handed, marked int
		// waiting is a record the gate took from the claim and holds for
		// the busy handler when the claim ends.
		waiting bool
	}{
		{name: "nothing handed out"},
		{name: "one unmarked", handed: 1},
		{name: "some marked, some not", handed: 3, marked: 1},
		{name: "every one marked", handed: 2, marked: 2},
		{name: "a record waiting for the handler", handed: 1, waiting: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := drain.New()
			c := consume(t, g)
			var ds []delivery
			for i := range tt.handed {
				ds = append(ds, c.send(int64(i)))
				if i < tt.handed-1 {
					c.next()
				}
			}
			for _, d := range ds[:tt.marked] {
				d.sess.MarkMessage(d.rec, "")
			}
			want := int64(tt.handed - tt.marked)
			if tt.waiting {
				c.offer(int64(tt.handed))
				want++
			}
			waitInFlight(t, g, want)

			c.endClaim()
			c.returned()
			if got := g.InFlight(); got != 0 {
				t.Fatalf("InFlight() after the claim ended = %d; want 0", got)
			}
			// A slow handler may still mark after its claim ended; the
			// records it releases were already released.
			for _, d := range ds[tt.marked:] {
				d.sess.MarkMessage(d.rec, "")
			}
			if got := g.InFlight(); got != 0 {
				t.Errorf("InFlight() after late marks = %d; want 0", got)
			}
			// Until sarama closes the ended claim, records still come in;
			// none may count.
			c.offer(100)
			if got := g.InFlight(); got != 0 {
				t.Errorf("InFlight() after a record came for the ended claim = %d; want 0", got)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			if err := g.Drain(ctx); err != nil {
				t.Errorf("Drain after the claim ended = %v; want nil", err)
			}
		})
	}
}

// TestGateStop checks that Stop hands out nothing more, takes back a record
// it held for a busy handler, and lets what was handed out finish: Wait
// returns once it is marked, not before.
func TestGateStop(t *testing.T) {
	g := drain.New()
	c := consume(t, g)
	first := c.send(0)
	// The handler is busy with offset 0; the gate takes offset 1 and holds
	// it for the handler.
	c.offer(1)
	waitInFlight(t, g, 2)

	g.Stop()
	g.Stop() // stopping twice is allowed: a shutdown may race a signal
	waitInFlight(t, g, 1)
	// Records that come after the stop are left for the next consumer.
	c.offer(2)
	c.offer(3)
	if got := g.InFlight(); got != 1 {
		t.Fatalf("InFlight() after records came to a stopped gate = %d; want 1", got)
	}
	waitTimesOut(t, g)

	first.sess.MarkMessage(first.rec, "")
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := g.Wait(ctx); err != nil {
		t.Fatalf("Wait after the last record was marked = %v; want nil", err)
	}

	// The handler never sees a record offered after offset 0.
	c.finish()
	if got := c.sess.Marked(); !slices.Equal(got, []int64{0}) {
		t.Errorf("marked offsets = %v; want [0]", got)
	}
}

// TestGateDrain checks that Drain stops the gate and returns once the
// record in flight is marked.
func TestGateDrain(t *testing.T) {
	g := drain.New()
	c := consume(t, g)
	d := c.send(0)

	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	drained := make(chan error, 1)
	go func() { drained <- g.Drain(ctx) }()
	waitTimesOut(t, g)
	d.sess.MarkMessage(d.rec, "")
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("Drain = %v; want nil", err)
		}
	case <-time.After(waitTimeout):
		t.Fatalf("Drain did not return within %s of the last mark", waitTimeout)
	}

	// Drain stopped the gate: later records are not handed out. Once the
	// second is taken, the gate is done with the first, whichever way.
	c.offer(1)
	c.offer(2)
	if got := g.InFlight(); got != 0 {
		t.Errorf("InFlight() after records came to a drained gate = %d; want 0", got)
	}
	c.finish()
}

func TestGateWaitHonoursContext(t *testing.T) {
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	tests := []struct {
		name     string
		inFlight bool
		ctx      context.Context
		want     error
	}{
		{name: "nothing in flight, canceled", ctx: canceled, want: nil},
		{name: "in flight, canceled", inFlight: true, ctx: canceled, want: context.Canceled},
		{name: "in flight, deadline passed", inFlight: true, ctx: expired, want: context.DeadlineExceeded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := drain.New()
			if tt.inFlight {
				c := consume(t, g)
				c.send(0)
			}
			done := make(chan error, 1)
			go func() { done <- g.Wait(tt.ctx) }()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("Wait = %v; want %v", err, tt.want)
				}
			case <-time.After(waitTimeout):
				t.Fatalf("Wait did not return within %s of its context ending", waitTimeout)
			}
		})
	}
}

func TestGateInSession(t *testing.T) {
	errSetup := errors.New("setup failed")
	errCleanup := errors.New("cleanup failed")
	tests := []struct {
		name string
		// steps are "setup" and "cleanup" calls of the wrapped handler.
		steps                []string
		setupErr, cleanupErr error
		want                 bool
		wantSetups           int
		wantCleanups         int
	}{
		{name: "never joined", want: false},
		{name: "joined", steps: []string{"setup"}, want: true, wantSetups: 1},
		{name: "joined and left", steps: []string{"setup", "cleanup"}, want: false, wantSetups: 1, wantCleanups: 1},
		{name: "rejoined after a rebalance", steps: []string{"setup", "cleanup", "setup"}, want: true, wantSetups: 2, wantCleanups: 1},
		{name: "setup failed", steps: []string{"setup"}, setupErr: errSetup, want: false, wantSetups: 1},
		{name: "cleanup failed still leaves", steps: []string{"setup", "cleanup"}, cleanupErr: errCleanup, want: false, wantSetups: 1, wantCleanups: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := drain.New()
			h := newHandler()
			h.setupErr, h.cleanupErr = tt.setupErr, tt.cleanupErr
			wrapped := g.WrapConsumerGroupHandler(h)
			sess := &fakeSession{}
			for _, step := range tt.steps {
				switch step {
				case "setup":
					if err := wrapped.Setup(sess); !errors.Is(err, tt.setupErr) {
						t.Fatalf("Setup = %v; want %v", err, tt.setupErr)
					}
				case "cleanup":
					if err := wrapped.Cleanup(sess); !errors.Is(err, tt.cleanupErr) {
						t.Fatalf("Cleanup = %v; want %v", err, tt.cleanupErr)
					}
				}
			}
			if got := g.InSession(); got != tt.want {
				t.Errorf("InSession() = %v; want %v", got, tt.want)
			}
			if h.setups != tt.wantSetups || h.cleanups != tt.wantCleanups {
				t.Errorf("inner handler got %d setups, %d cleanups; want %d, %d", h.setups, h.cleanups, tt.wantSetups, tt.wantCleanups)
			}
		})
	}
}
