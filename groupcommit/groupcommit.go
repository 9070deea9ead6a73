// Package groupcommit groups the calls of concurrent goroutines into
// batches, as a database's group commit does, so that many handlers
// writing at once pay for one round trip.
package groupcommit

import (
	"errors"
	"sync"
)

// ErrClosed is what a call to a closed Batcher gets.
var ErrClosed = errors.New("batcher is closed")

// Batcher groups the calls of concurrent handlers into one statement, as
// group commit does: a worker takes the first call waiting and every
// other call waiting with it (up to max), runs them in one round trip and
// one transaction, and hands each caller its own result. A call that finds
// a worker idle runs at once, alone; calls queue only behind a running
// batch, so batches grow with the load and add no delay when it is low.
type Batcher[Req, Res any] struct {
	calls chan *batchCall[Req, Res]
	max   int
	// run returns a result and an error per request, or one error for the
	// whole batch.
	run func(reqs []Req) ([]Res, []error, error)
	wg  sync.WaitGroup

	// mu guards closed against calls racing close: a handler the router
	// gave up waiting for may still call after its owner closed.
	mu     sync.RWMutex
	closed bool
}

type batchCall[Req, Res any] struct {
	req  Req
	res  Res
	err  error
	done chan struct{}
}

// New starts workers that each run one batch at a time.
func New[Req, Res any](workers, max int, run func(reqs []Req) ([]Res, []error, error)) *Batcher[Req, Res] {
	b := &Batcher[Req, Res]{calls: make(chan *batchCall[Req, Res], 4*max), max: max, run: run}
	for range workers {
		b.wg.Go(b.work)
	}
	return b
}

// Do runs req in the next batch and returns its result. It waits for the
// batch even when the caller's context ends: the statement is bounded by
// its own timeout, and a claim made must reach its caller to be released.
func (b *Batcher[Req, Res]) Do(req Req) (Res, error) {
	c := &batchCall[Req, Res]{req: req, done: make(chan struct{})}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		var zero Res
		return zero, ErrClosed
	}
	b.calls <- c
	b.mu.RUnlock()
	<-c.done
	return c.res, c.err
}

func (b *Batcher[Req, Res]) work() {
	for first := range b.calls {
		batch := []*batchCall[Req, Res]{first}
	gather:
		for len(batch) < b.max {
			select {
			case c, ok := <-b.calls:
				if !ok {
					break gather
				}
				batch = append(batch, c)
			default:
				break gather
			}
		}
		reqs := make([]Req, len(batch))
		for i, c := range batch {
			reqs[i] = c.req
		}
		res, errs, err := b.run(reqs)
		for i, c := range batch {
			switch {
			case err != nil:
				c.err = err
			default:
				c.res, c.err = res[i], errs[i]
			}
			close(c.done)
		}
	}
}

// Close stops the workers once the calls queued are done; later calls get
// ErrClosed. It may be called more than once.
func (b *Batcher[Req, Res]) Close() {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return
	}
	b.closed = true
	close(b.calls)
	b.mu.Unlock()
	b.wg.Wait()
}
