package app

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/IBM/sarama"
	wkerrors "github.com/pkg/errors"

	"github.com/eventrouter/eventrouter/retry"
)

// A failed publish takes the handler's paths: the record's fault poisons
// it, a broker or topic that takes nothing pauses the route, the rest is
// retried.
func TestPublishErrorClasses(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"record too large for the topic", sarama.ErrMessageSizeTooLarge, "permanent"},
		{"record too large for the client", sarama.ConfigurationError("Attempt to produce message larger than configured Producer.MaxMessageBytes"), "permanent"},
		{"topic missing, auto-create off", sarama.ErrUnknownTopicOrPartition, "unavailable"},
		{"no ACL", sarama.ErrTopicAuthorizationFailed, "unavailable"},
		{"no broker", sarama.ErrOutOfBrokers, "unavailable"},
		{"connection refused", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, "unavailable"},
		{"not enough replicas", sarama.ErrNotEnoughReplicas, "unavailable"},
		{"something else", errors.New("boom"), "transient"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// As watermill-kafka wraps it.
			err := publishError("notification-sent", wkerrors.Wrapf(tt.err, "cannot produce message %s", "id"))
			got := "transient"
			switch {
			case retry.IsPermanent(err):
				got = "permanent"
			case retry.IsUnavailable(err):
				got = "unavailable"
			}
			if got != tt.want {
				t.Errorf("publishError(%v) is %s; want %s", tt.err, got, tt.want)
			}
			if want := "publish to notification-sent: "; !strings.HasPrefix(err.Error(), want) {
				t.Errorf("publishError(%v) = %q; want it to start with %q", tt.err, err, want)
			}
		})
	}
}
