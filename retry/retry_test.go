package retry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/retry"
)

func TestClassify(t *testing.T) {
	base := errors.New("boom")
	tests := []struct {
		err                    error
		permanent, unavailable bool
	}{
		{base, false, false},
		{retry.Permanent(base), true, false},
		{fmt.Errorf("send: %w", retry.Permanent(base)), true, false},
		{retry.Unavailable("smtp", base), false, true},
		{fmt.Errorf("send: %w", retry.Unavailable("smtp", base)), false, true},
		{nil, false, false},
	}
	for _, tt := range tests {
		if got := retry.IsPermanent(tt.err); got != tt.permanent {
			t.Errorf("IsPermanent(%v) = %v; want %v", tt.err, got, tt.permanent)
		}
		if got := retry.IsUnavailable(tt.err); got != tt.unavailable {
			t.Errorf("IsUnavailable(%v) = %v; want %v", tt.err, got, tt.unavailable)
		}
	}
	if retry.Permanent(nil) != nil || retry.Unavailable("smtp", nil) != nil {
		t.Error("Permanent(nil) or Unavailable(nil) is not nil")
	}
}

// reaching is a handler that reaches dep and returns err.
func reaching(dep string, err error) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if dep != "" {
			retry.Reached(msg.Context(), dep)
		}
		return nil, err
	}
}

func TestBreakerWaitsOutAnOutage(t *testing.T) {
	var mu sync.Mutex
	var changes []bool
	b := &retry.Breaker{MinWait: 5 * time.Millisecond, MaxWait: 20 * time.Millisecond,
		OnChange: func(paused bool, _ error) { mu.Lock(); changes = append(changes, paused); mu.Unlock() }}
	calls := 0
	h := b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		calls++
		if calls <= 4 {
			return nil, retry.Unavailable("smtp", errors.New("connection refused"))
		}
		return reaching("smtp", nil)(msg)
	})
	if _, err := h(message.NewMessage("1", nil)); err != nil {
		t.Fatalf("handler through an outage = %v; want nil", err)
	}
	if paused, _ := b.Paused(); calls != 5 || paused {
		t.Errorf("calls = %d, paused = %v; want 5 calls and the route resumed", calls, paused)
	}
	if fmt.Sprint(changes) != "[true false]" {
		t.Errorf("OnChange saw %v; want [true false]", changes)
	}
}

// A message that never touches the dependency that is down, such as an
// invalid event, must not resume the route: the next messages would hit
// the dead server at full speed.
func TestBreakerResumesOnlyWhenTheDependencyAnswers(t *testing.T) {
	tests := []struct {
		name   string
		after  message.HandlerFunc
		paused bool
	}{
		{"invalid event, no smtp", reaching("", retry.Permanent(errors.New("invalid event"))), true},
		{"repeated event, only kafka", reaching("kafka", nil), true},
		{"smtp answered with 5xx", reaching("smtp", retry.Permanent(errors.New("550 no such user"))), false},
		{"smtp delivered", reaching("smtp", nil), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &retry.Breaker{MinWait: time.Millisecond, MaxWait: time.Millisecond}
			// Message 1 trips the breaker, then holds it: its retry blocks
			// until the test is done.
			retrying, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
			calls := 0
			go func() {
				defer close(done)
				_, _ = b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
					if calls++; calls == 1 {
						return nil, retry.Unavailable("smtp", errors.New("connection refused"))
					}
					close(retrying)
					<-release
					return reaching("smtp", nil)(msg)
				})(message.NewMessage("1", nil))
			}()
			<-retrying
			_, _ = b.Middleware(tt.after)(message.NewMessage("2", nil))
			if paused, _ := b.Paused(); paused != tt.paused {
				t.Errorf("paused = %v; want %v", paused, tt.paused)
			}
			close(release)
			<-done
			if paused, _ := b.Paused(); paused {
				t.Error("paused = true after the held message reached smtp; want false")
			}
		})
	}
}

// A pause whose messages all left without reaching the dependency (their
// partitions went to another instance) must not stay reported for good: it
// ends by itself one wait after it ended, with nobody asking.
func TestBreakerPauseNobodyHoldsEnds(t *testing.T) {
	changes := make(chan bool, 4)
	b := &retry.Breaker{MinWait: 20 * time.Millisecond, MaxWait: 20 * time.Millisecond,
		OnChange: func(paused bool, _ error) { changes <- paused }}
	ctx, cancel := context.WithCancel(context.Background())
	msg := message.NewMessage("1", nil)
	msg.SetContext(ctx)
	_, err := b.Middleware(func(*message.Message) ([]*message.Message, error) {
		cancel() // the partition is revoked during the attempt
		return nil, retry.Unavailable("smtp", errors.New("down"))
	})(msg)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v; want context.Canceled", err)
	}
	for _, want := range []bool{true, false} {
		select {
		case got := <-changes:
			if got != want {
				t.Fatalf("OnChange(%v); want OnChange(%v)", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no OnChange(%v) within 10s; want the pause to end by itself", want)
		}
	}
}

// Hold pauses the route for a failure outside the middleware, such as the
// poison queue's publish. The record comes back at once and fails again:
// each Hold then waits longer, and the route stays paused in between
// rather than flapping.
func TestBreakerHold(t *testing.T) {
	var mu sync.Mutex
	var changes []bool
	b := &retry.Breaker{MinWait: 20 * time.Millisecond, MaxWait: time.Second,
		OnChange: func(paused bool, _ error) { mu.Lock(); changes = append(changes, paused); mu.Unlock() }}
	start := time.Now()
	for i := 0; i < 3; i++ {
		if err := b.Hold(context.Background(), "kafka", errors.New("poison topic missing")); err != nil {
			t.Fatalf("Hold = %v; want nil", err)
		}
	}
	// 20ms, then 40ms, then 80ms.
	if waited := time.Since(start); waited < 140*time.Millisecond {
		t.Errorf("three Holds returned after %s; want the waits to grow, 140ms at least", waited)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(changes) != "[true]" {
		t.Errorf("OnChange saw %v; want [true]: one pause, not one per Hold", changes)
	}
}

// A zero MinWait must not turn an outage into a tight loop of attempts.
func TestBreakerZeroWaitDoesNotSpin(t *testing.T) {
	b := &retry.Breaker{}
	var calls atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	msg := message.NewMessage("1", nil)
	msg.SetContext(ctx)
	_, err := b.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls.Add(1)
		return nil, retry.Unavailable("smtp", errors.New("down"))
	})(msg)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v; want the context's deadline", err)
	}
	// At least 10 ms apart, growing: 100 ms holds at most about 5.
	if n := calls.Load(); n > 12 {
		t.Errorf("%d attempts in 100 ms with a zero MinWait; want at most 12", n)
	}
}

// OnChange is the paused gauge's only writer: pauses and resumes racing
// each other must leave it equal to Paused().
func TestBreakerOnChangeMatchesState(t *testing.T) {
	for round := 0; round < 20; round++ {
		var gauge atomic.Bool
		b := &retry.Breaker{MinWait: time.Nanosecond, MaxWait: time.Nanosecond,
			OnChange: func(paused bool, _ error) { gauge.Store(paused) }}
		var wg sync.WaitGroup
		for i := 0; i < 8; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				n := 0
				_, _ = b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
					n++
					if n%2 == 1 && n < 20 {
						return nil, retry.Unavailable("smtp", errors.New("down"))
					}
					return reaching("smtp", nil)(msg)
				})(message.NewMessage("1", nil))
			}()
		}
		wg.Wait()
		if paused, _ := b.Paused(); gauge.Load() != paused {
			t.Fatalf("round %d: gauge = %v; want %v as Paused says", round, gauge.Load(), paused)
		}
	}
}

func TestBreakerPassesOtherErrorsAndStopsOnCancel(t *testing.T) {
	b := &retry.Breaker{MinWait: time.Hour, MaxWait: time.Hour}
	other := errors.New("bad")
	if _, err := b.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, other })(message.NewMessage("1", nil)); !errors.Is(err, other) {
		t.Errorf("handler error = %v; want %v passed through", err, other)
	}

	ctx, cancel := context.WithCancel(context.Background())
	msg := message.NewMessage("2", nil)
	msg.SetContext(ctx)
	tried := make(chan struct{})
	done := make(chan error)
	go func() {
		_, err := b.Middleware(func(*message.Message) ([]*message.Message, error) {
			close(tried)
			return nil, retry.Unavailable("smtp", errors.New("down"))
		})(msg)
		done <- err
	}()
	<-tried
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled wait = %v; want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the wait did not end on cancel")
	}
}

func TestPolicyDelays(t *testing.T) {
	tests := []struct {
		name string
		p    retry.Policy
		want []time.Duration
	}{
		{"100ms x2", retry.Policy{InitialInterval: 100 * time.Millisecond, MaxInterval: 10 * time.Second, Multiplier: 2},
			[]time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond}},
		{"capped", retry.Policy{InitialInterval: time.Second, MaxInterval: 3 * time.Second, Multiplier: 2},
			[]time.Duration{time.Second, 2 * time.Second, 3 * time.Second, 3 * time.Second}},
		{"constant", retry.Policy{InitialInterval: 50 * time.Millisecond, Multiplier: 1},
			[]time.Duration{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []time.Duration
			tt.p.MaxRetries = len(tt.want)
			tt.p.After = func(d time.Duration) <-chan time.Time {
				got = append(got, d)
				ch := make(chan time.Time, 1)
				ch <- time.Time{}
				return ch
			}
			attempts := 0
			_, err := tt.p.Middleware(func(*message.Message) ([]*message.Message, error) {
				attempts++
				return nil, errors.New("transient")
			})(message.NewMessage("1", nil))
			if err == nil || attempts != len(tt.want)+1 {
				t.Fatalf("attempts = %d, err = %v; want %d attempts and the last error", attempts, err, len(tt.want)+1)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("waits = %v; want %v", got, tt.want)
			}
		})
	}
}

// The gaps between real attempts are the configured ones: Watermill's
// retry middleware made them 200ms, 800ms, 3.2s for 100ms × 2.
func TestPolicyRealGaps(t *testing.T) {
	p := retry.Policy{MaxRetries: 3, InitialInterval: 50 * time.Millisecond, MaxInterval: time.Second, Multiplier: 2}
	var at []time.Time
	_, _ = p.Middleware(func(*message.Message) ([]*message.Message, error) {
		at = append(at, time.Now())
		return nil, errors.New("transient")
	})(message.NewMessage("1", nil))
	want := []time.Duration{50 * time.Millisecond, 100 * time.Millisecond, 200 * time.Millisecond}
	if len(at) != len(want)+1 {
		t.Fatalf("attempts = %d; want %d", len(at), len(want)+1)
	}
	for i, w := range want {
		// A timer never fires early; a loaded machine may fire it late,
		// but not by the next step (Watermill's were 100ms, 400ms, 1.6s).
		if hi := 2*w + 100*time.Millisecond; gap(at, i) < w || gap(at, i) >= hi {
			t.Errorf("gap %d = %s; want %s (less than %s)", i+1, gap(at, i), w, hi)
		}
	}
}

func gap(at []time.Time, i int) time.Duration { return at[i+1].Sub(at[i]) }

func TestPolicyPermanentAndCancel(t *testing.T) {
	p := retry.Policy{MaxRetries: 5, InitialInterval: time.Hour, Multiplier: 2}
	attempts := 0
	_, err := p.Middleware(func(*message.Message) ([]*message.Message, error) {
		attempts++
		return nil, retry.Permanent(errors.New("invalid"))
	})(message.NewMessage("1", nil))
	if attempts != 1 || !retry.IsPermanent(err) {
		t.Errorf("permanent error: attempts = %d, err = %v; want 1 attempt and the error", attempts, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	msg := message.NewMessage("2", nil)
	msg.SetContext(ctx)
	transient := errors.New("transient")
	_, err = p.Middleware(func(*message.Message) ([]*message.Message, error) {
		cancel()
		return nil, transient
	})(msg)
	if !errors.Is(err, context.Canceled) || !errors.Is(err, transient) {
		t.Errorf("cancelled wait = %v; want context.Canceled and the attempt's error", err)
	}
}

func TestBreakerHonoursAfter(t *testing.T) {
	tests := []struct {
		name  string
		after time.Duration
		want  time.Duration
	}{
		{"longer than the breaker's wait", 300 * time.Millisecond, 300 * time.Millisecond},
		{"shorter than the breaker's wait", time.Millisecond, 50 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &retry.Breaker{MinWait: 50 * time.Millisecond, MaxWait: time.Second}
			var calls []time.Time
			h := b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
				calls = append(calls, time.Now())
				if len(calls) == 1 {
					return nil, retry.UnavailableFor("http", tt.after, errors.New("503"))
				}
				retry.Reached(msg.Context(), "http")
				return nil, nil
			})
			if _, err := h(message.NewMessage("1", nil)); err != nil {
				t.Fatalf("handler: %v", err)
			}
			if len(calls) != 2 {
				t.Fatalf("got %d calls; want 2", len(calls))
			}
			if gap := calls[1].Sub(calls[0]); gap < tt.want {
				t.Errorf("got a pause of %s; want at least %s", gap, tt.want)
			}
			if paused, _ := b.Paused(); paused {
				t.Error("breaker still paused after the dependency answered")
			}
		})
	}
	var u *retry.UnavailableError
	if err := retry.UnavailableFor("http", time.Hour, errors.New("x")); !errors.As(err, &u) || u.After != retry.MaxAfter {
		t.Errorf("got After %v; want it capped at %v", u, retry.MaxAfter)
	}
}

// TestBreakerAfterOutlivesAResume: an attempt already under way when the
// dependency asked for a pause succeeds and resumes the route; the next
// message still waits out the pause asked for.
func TestBreakerAfterOutlivesAResume(t *testing.T) {
	b := &retry.Breaker{MinWait: 10 * time.Millisecond, MaxWait: time.Second}
	tripped := make(chan time.Time, 1)
	bInside := make(chan struct{})
	bGo := make(chan struct{})
	var calls atomic.Int32
	h := b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		switch msg.UUID {
		case "a":
			if calls.Add(1) == 1 {
				tripped <- time.Now()
				return nil, retry.UnavailableFor("http", 300*time.Millisecond, errors.New("429"))
			}
		case "b":
			close(bInside)
			<-bGo
		}
		retry.Reached(msg.Context(), "http")
		return nil, nil
	})
	bDone := make(chan struct{})
	go func() {
		defer close(bDone)
		_, _ = h(message.NewMessage("b", nil))
	}()
	<-bInside
	aDone := make(chan struct{})
	go func() {
		defer close(aDone)
		_, _ = h(message.NewMessage("a", nil))
	}()
	at := <-tripped
	waitUntil(t, func() bool { paused, _ := b.Paused(); return paused })
	// b, under way before the pause, succeeds and resumes the route.
	close(bGo)
	<-bDone
	if paused, _ := b.Paused(); paused {
		t.Fatal("the route is still paused after b reached the dependency")
	}
	if _, err := h(message.NewMessage("c", nil)); err != nil {
		t.Fatal(err)
	}
	if ran := time.Since(at); ran < 300*time.Millisecond {
		t.Errorf("got the next message through %s after the dependency asked for 300ms; want it to wait", ran)
	}
	<-aDone
}

// waitUntil polls cond for up to 5s.
func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		<-tick.C
	}
}
