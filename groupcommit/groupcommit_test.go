package groupcommit_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/eventrouter/eventrouter/groupcommit"
)

func TestBatcher(t *testing.T) {
	var batches, biggest atomic.Int64
	release := make(chan struct{})
	first := make(chan struct{})
	var once sync.Once
	b := groupcommit.New(1, 8, func(reqs []int) ([]string, []error, error) {
		once.Do(func() { close(first); <-release })
		batches.Add(1)
		if int64(len(reqs)) > biggest.Load() {
			biggest.Store(int64(len(reqs)))
		}
		res := make([]string, len(reqs))
		errs := make([]error, len(reqs))
		for i, r := range reqs {
			switch {
			case r == -1:
				return nil, nil, errors.New("whole batch failed")
			case r%10 == 7:
				errs[i] = fmt.Errorf("request %d refused", r)
			default:
				res[i] = fmt.Sprint(r * 2)
			}
		}
		return res, errs, nil
	})
	// The first call holds the only worker, so the next ones queue and
	// go as batches.
	var wg sync.WaitGroup
	got := make([]string, 40)
	gotErr := make([]error, 40)
	wg.Go(func() { got[0], gotErr[0] = b.Do(0) })
	<-first
	for i := 1; i < 40; i++ {
		wg.Go(func() { got[i], gotErr[i] = b.Do(i) })
	}
	close(release)
	wg.Wait()
	for i := range 40 {
		switch {
		case i%10 == 7:
			if gotErr[i] == nil || got[i] != "" {
				t.Errorf("request %d: got %q, %v; want its own error", i, got[i], gotErr[i])
			}
		case gotErr[i] != nil || got[i] != fmt.Sprint(i*2):
			t.Errorf("request %d: got %q, %v; want %d", i, got[i], gotErr[i], i*2)
		}
	}
	if biggest.Load() > 8 {
		t.Errorf("got a batch of %d; want at most 8", biggest.Load())
	}
	t.Logf("40 calls in %d batches", batches.Load())
	if _, err := b.Do(-1); err == nil || err.Error() != "whole batch failed" {
		t.Errorf("got %v; want the batch's error", err)
	}
	b.Close()
	b.Close()
	if _, err := b.Do(1); !errors.Is(err, groupcommit.ErrClosed) {
		t.Errorf("got %v after Close; want ErrClosed", err)
	}
}
