package client

import (
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/config"
)

func TestSubscriberWaitsOutARebalance(t *testing.T) {
	tests := []struct {
		request, rebalance time.Duration
		want               time.Duration
	}{
		{request: 30 * time.Second, rebalance: 60 * time.Second, want: 65 * time.Second},
		{request: 2 * time.Minute, rebalance: 60 * time.Second, want: 2 * time.Minute},
		{request: 30 * time.Second, rebalance: 10 * time.Second, want: 30 * time.Second},
	}
	for _, tt := range tests {
		cfg := config.Defaults().Kafka
		cfg.RequestTimeout, cfg.RebalanceTimeout = tt.request, tt.rebalance
		if got := (Settings{cfg: cfg}).Subscriber().Net.ReadTimeout; got != tt.want {
			t.Errorf("subscriberConfig(request %s, rebalance %s).Net.ReadTimeout = %s; want %s", tt.request, tt.rebalance, got, tt.want)
		}
		if got := (Settings{cfg: cfg}).Publisher().Net.ReadTimeout; got != tt.request {
			t.Errorf("publisherConfig(request %s).Net.ReadTimeout = %s; want %s", tt.request, got, tt.request)
		}
		if err := (Settings{cfg: cfg}).Subscriber().Validate(); err != nil {
			t.Errorf("subscriberConfig(request %s, rebalance %s).Validate() = %v; want nil", tt.request, tt.rebalance, err)
		}
	}
}
