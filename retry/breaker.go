package retry

import (
	"context"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// Breaker pauses a whole route while a dependency is down. Place it inside
// the Retry middleware: an Unavailable error then uses up none of the
// message's retries and never sends a good message to the poison topic.
// The message waits, and every other message of the route waits before its
// first attempt, until one attempt gets through. Waits grow from MinWait to
// MaxWait. A cancelled message context (the subscriber is closing) ends the
// wait with the context's error.
type Breaker struct {
	// MinWait is the first pause after an outage is seen.
	MinWait time.Duration
	// MaxWait caps the pause between attempts.
	MaxWait time.Duration
	// OnChange, if set, is called when the route pauses (with the error
	// that paused it) and when it resumes (with nil).
	OnChange func(paused bool, cause error)

	mu        sync.Mutex
	open      bool
	wait      time.Duration
	openUntil time.Time
}

// Paused reports whether the route is waiting for a dependency.
func (b *Breaker) Paused() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open
}

// Middleware is the Watermill middleware.
func (b *Breaker) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		for {
			if err := b.waitClosed(msg.Context()); err != nil {
				return nil, err
			}
			out, err := h(msg)
			if !IsUnavailable(err) {
				b.resume()
				return out, err
			}
			b.trip(err)
		}
	}
}

func (b *Breaker) waitClosed(ctx context.Context) error {
	b.mu.Lock()
	until := b.openUntil
	b.mu.Unlock()
	d := time.Until(until)
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func (b *Breaker) trip(cause error) {
	b.mu.Lock()
	now := time.Now()
	opened := !b.open
	switch {
	case opened:
		b.open = true
		b.wait = b.MinWait
	case !now.Before(b.openUntil):
		// Only an attempt made after the pause ended grows the pause, so
		// that many partitions failing at once count as one failure.
		b.wait = min(2*b.wait, b.MaxWait)
	}
	b.openUntil = now.Add(b.wait)
	b.mu.Unlock()
	if opened && b.OnChange != nil {
		b.OnChange(true, cause)
	}
}

func (b *Breaker) resume() {
	b.mu.Lock()
	closed := b.open
	b.open = false
	b.wait = 0
	b.openUntil = time.Time{}
	b.mu.Unlock()
	if closed && b.OnChange != nil {
		b.OnChange(false, nil)
	}
}
