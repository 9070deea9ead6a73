package ledger

import (
	"context"
	"fmt"
	"sync"
)

// keyLocks serialises the handlers of one process by key: a second lock of
// a key waits until the first is released. It is the in-process half of a
// claim; the shared ledger adds a lease that other processes honour.
type keyLocks struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	sem     chan struct{}
	waiters int
}

// lock takes key, or fails when ctx is done first. unlock may be called
// more than once.
func (k *keyLocks) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	if k.locks == nil {
		k.locks = map[string]*keyLock{}
	}
	c, ok := k.locks[key]
	if !ok {
		c = &keyLock{sem: make(chan struct{}, 1)}
		k.locks[key] = c
	}
	c.waiters++
	k.mu.Unlock()
	drop := func() {
		k.mu.Lock()
		if c.waiters--; c.waiters == 0 {
			delete(k.locks, key)
		}
		k.mu.Unlock()
	}
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		drop()
		return nil, fmt.Errorf("wait for ledger key %s: %w", key, ctx.Err())
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-c.sem
			drop()
		})
	}, nil
}
