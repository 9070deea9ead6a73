package retry_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
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
		{retry.Unavailable(base), false, true},
		{fmt.Errorf("send: %w", retry.Unavailable(base)), false, true},
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
	if retry.Permanent(nil) != nil || retry.Unavailable(nil) != nil {
		t.Error("Permanent(nil) or Unavailable(nil) is not nil")
	}
}

func TestBreakerWaitsOutAnOutage(t *testing.T) {
	var mu sync.Mutex
	var changes []bool
	b := &retry.Breaker{MinWait: 5 * time.Millisecond, MaxWait: 20 * time.Millisecond,
		OnChange: func(paused bool, _ error) { mu.Lock(); changes = append(changes, paused); mu.Unlock() }}
	calls := 0
	h := b.Middleware(func(*message.Message) ([]*message.Message, error) {
		calls++
		if calls <= 4 {
			return nil, retry.Unavailable(errors.New("connection refused"))
		}
		return nil, nil
	})
	if _, err := h(message.NewMessage("1", nil)); err != nil {
		t.Fatalf("handler through an outage = %v; want nil", err)
	}
	if calls != 5 || b.Paused() {
		t.Errorf("calls = %d, paused = %v; want 5 calls and the route resumed", calls, b.Paused())
	}
	if fmt.Sprint(changes) != "[true false]" {
		t.Errorf("OnChange saw %v; want [true false]", changes)
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
	done := make(chan error)
	go func() {
		_, err := b.Middleware(func(*message.Message) ([]*message.Message, error) {
			return nil, retry.Unavailable(errors.New("down"))
		})(msg)
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
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
