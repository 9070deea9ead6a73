package retry

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
)

// minBreakerWait is the shortest pause a Breaker makes, whatever MinWait
// says: a zero pause would retry a down server in a tight loop.
const minBreakerWait = 10 * time.Millisecond

// Breaker pauses a whole route while a dependency is down. Place it inside
// the retry middleware: an Unavailable error then uses up none of the
// message's retries and never sends a good message to the poison topic.
// The message waits, and every other message of the route waits before its
// attempt, until an attempt reaches the dependency that is down again (see
// Reached). An attempt that succeeds or fails without touching it, such as
// an invalid event, leaves the route paused. A pause that no message has
// held for one more wait after it ended (its messages left without reaching
// the dependency: their partitions were revoked) ends by itself: nothing
// waits for the dependency any more.
// Waits grow from MinWait to MaxWait. A cancelled message context (the
// subscriber is closing) ends the wait with the context's error.
type Breaker struct {
	// MinWait is the first pause after an outage is seen.
	MinWait time.Duration
	// MaxWait caps the pause between attempts.
	MaxWait time.Duration
	// OnChange, if set, is called when the route pauses (with the error
	// that paused it) and when it resumes (with nil). Calls are made in
	// the order of the changes, one at a time.
	OnChange func(paused bool, cause error)

	mu   sync.Mutex
	open bool
	// holders counts the messages inside the breaker that an outage
	// stopped: they wait for the dependency, or try it again.
	holders   int
	cause     error
	dep       string
	wait      time.Duration
	openUntil time.Time
	// notBefore is when a dependency that said how long to leave it alone
	// (UnavailableError.After) may be tried again. Unlike openUntil, a
	// resume does not end it: an attempt that was already under way when
	// the dependency asked for the pause may succeed, and the next ones
	// must still wait.
	notBefore time.Time
}

// Paused reports whether the route is waiting for a dependency, and the
// error that paused it.
func (b *Breaker) Paused() (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.open, b.cause
}

// Middleware is the Watermill middleware.
func (b *Breaker) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		parent := msg.Context()
		defer msg.SetContext(parent)
		holding := false
		defer func() {
			if holding {
				b.release()
			}
		}()
		for {
			if err := b.waitClosed(parent); err != nil {
				return nil, err
			}
			reached := &reachedSet{}
			msg.SetContext(context.WithValue(parent, reachedKey{}, reached))
			out, err := h(msg)
			var u *UnavailableError
			if errors.As(err, &u) {
				b.trip(u.Dependency, err, !holding, u.After)
				holding = true
				continue
			}
			if holding {
				holding = false
				b.release()
			}
			b.resumeIf(reached)
			return out, err
		}
	}
}

// Hold pauses the route for dependency, which failed with cause outside
// the middleware (such as the poison queue's publish), and waits out the
// pause, or until ctx is done.
func (b *Breaker) Hold(ctx context.Context, dependency string, cause error) error {
	b.trip(dependency, cause, true, 0)
	defer b.release()
	return b.waitClosed(ctx)
}

// release lets go of the pause. The last holder to leave arms a timer
// that ends the pause if nobody holds it one more wait after it ended.
func (b *Breaker) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holders--
	if b.open && b.holders == 0 {
		time.AfterFunc(time.Until(b.staleAt()), b.expire)
	}
}

// staleAt is when a pause that nobody holds ends.
func (b *Breaker) staleAt() time.Time { return b.openUntil.Add(b.wait) }

func (b *Breaker) expire() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open && b.holders == 0 && !time.Now().Before(b.staleAt()) {
		b.closeLocked()
	}
}

// waitClosed waits until the pause, if any, is over; a message waiting
// holds the pause.
func (b *Breaker) waitClosed(ctx context.Context) error {
	b.mu.Lock()
	until := b.openUntil
	if b.notBefore.After(until) {
		until = b.notBefore
	}
	d := time.Until(until)
	if d <= 0 {
		b.mu.Unlock()
		return ctx.Err()
	}
	b.holders++
	b.mu.Unlock()
	defer b.release()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// trip pauses the route, for at least after when positive.
func (b *Breaker) trip(dep string, cause error, hold bool, after time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if hold {
		b.holders++
	}
	now := time.Now()
	opened := !b.open
	switch {
	case opened:
		b.open = true
		b.wait = max(b.MinWait, minBreakerWait)
	case !now.Before(b.openUntil):
		// Only an attempt made after the pause ended grows the pause, so
		// that many partitions failing at once count as one failure.
		b.wait = min(2*b.wait, max(b.MaxWait, b.MinWait, minBreakerWait))
	}
	b.dep, b.cause = dep, cause
	b.openUntil = now.Add(b.wait)
	if nb := now.Add(after); after > 0 && nb.After(b.notBefore) {
		b.notBefore = nb
	}
	// Under the lock, so that a pause and a resume racing each other are
	// reported in the order they happened.
	if opened && b.OnChange != nil {
		b.OnChange(true, cause)
	}
}

// resumeIf closes the breaker when the attempt reached the dependency that
// opened it.
func (b *Breaker) resumeIf(reached *reachedSet) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.open || !reached.has(b.dep) {
		return
	}
	b.closeLocked()
}

func (b *Breaker) closeLocked() {
	b.open = false
	b.cause = nil
	b.dep = ""
	b.wait = 0
	b.openUntil = time.Time{}
	if b.OnChange != nil {
		b.OnChange(false, nil)
	}
}
