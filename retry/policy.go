package retry

import (
	"context"
	"errors"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Policy retries a handler's transient errors with exponential backoff.
// The n-th retry waits InitialInterval × Multiplier^(n-1), capped at
// MaxInterval, each wait varied by up to ±Jitter of itself so that many
// partitions failing together do not retry in step. Permanent errors are
// returned at once.
//
// Watermill's own Retry middleware waits one backoff step more than it is
// configured to (its gaps for 100ms × 2 are 200ms, 800ms, 3.2s), so the
// router uses this one: the configured schedule is the real one.
type Policy struct {
	// MaxRetries is how many retries follow the first attempt.
	MaxRetries int
	// InitialInterval is the wait before the first retry.
	InitialInterval time.Duration
	// MaxInterval caps every wait.
	MaxInterval time.Duration
	// Multiplier grows each wait from the one before.
	Multiplier float64
	// Jitter is the share of each wait, 0 to 1, by which it may vary.
	Jitter float64
	// After replaces time.After, for tests.
	After func(time.Duration) <-chan time.Time
}

// Delay returns the wait before retry n (1 for the first retry), before
// jitter.
func (p Policy) Delay(n int) time.Duration {
	if n < 1 {
		return 0
	}
	d := float64(p.InitialInterval) * math.Pow(max(p.Multiplier, 1), float64(n-1))
	if p.MaxInterval > 0 && d > float64(p.MaxInterval) {
		return p.MaxInterval
	}
	if d > math.MaxInt64 {
		return time.Duration(math.MaxInt64)
	}
	return time.Duration(d)
}

func (p Policy) wait(n int) time.Duration {
	d := p.Delay(n)
	if p.Jitter > 0 && d > 0 {
		d = time.Duration(float64(d) * (1 + p.Jitter*(2*rand.Float64()-1)))
	}
	return d
}

// Middleware is the Watermill middleware. A cancelled message context (the
// subscriber is closing) ends a wait with an error that wraps both the
// context's error and the last attempt's.
func (p Policy) Middleware(h message.HandlerFunc) message.HandlerFunc {
	after := p.After
	if after == nil {
		after = time.After
	}
	return func(msg *message.Message) ([]*message.Message, error) {
		for n := 1; ; n++ {
			out, err := h(msg)
			if err == nil || IsPermanent(err) || n > p.MaxRetries {
				return out, err
			}
			ctx := msg.Context()
			select {
			case <-ctx.Done():
				return nil, errors.Join(ctx.Err(), err)
			case <-after(p.wait(n)):
			}
		}
	}
}

// reachedKey carries the dependencies an attempt reached.
type reachedKey struct{}

type reachedSet struct {
	mu   sync.Mutex
	deps []string
}

func (s *reachedSet) has(dependency string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.deps, dependency)
}

// Reached records that the attempt running with ctx got an answer from
// dependency, such as a reply from the mail server, even an error reply:
// the dependency is up. A Breaker paused for that dependency resumes on it.
func Reached(ctx context.Context, dependency string) {
	if s, ok := ctx.Value(reachedKey{}).(*reachedSet); ok {
		s.mu.Lock()
		s.deps = append(s.deps, dependency)
		s.mu.Unlock()
	}
}
