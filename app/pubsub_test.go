package app

import (
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/drain"
	"github.com/eventrouter/eventrouter/kafkatest"
)

// TestPubSub runs Watermill's universal Pub/Sub test suite against the
// publisher and subscribers exactly as the daemon configures them, with
// every feature Kafka has for consumer groups: groups, persistence, and
// order within a (single-partition) topic. NewSubscriberReceivesOldMessages
// is off: it expects every subscriber to see everything, which is what a
// consumer group exists to prevent (watermill-kafka enables it only for
// subscribers without a group, which the daemon never uses).
func TestPubSub(t *testing.T) {
	if testing.Short() {
		t.Skip("the universal suite takes minutes")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		cfg := config.Defaults().Kafka
		logger := watermill.NopLogger{}
		newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
			pub, err := newPublisher(cfg, k.Brokers, logger)
			if err != nil {
				t.Fatal(err)
			}
			sub, err := newSubscriber(cfg, k.Brokers, group, drain.New(), logger)
			if err != nil {
				t.Fatal(err)
			}
			return pub, sub
		}
		tests.TestPubSub(t,
			tests.Features{
				ConsumerGroups:                   true,
				ExactlyOnceDelivery:              false,
				GuaranteedOrder:                  true,
				Persistent:                       true,
				NewSubscriberReceivesOldMessages: false,
			},
			func(t *testing.T) (message.Publisher, message.Subscriber) { return newPubSub(t, "test") },
			newPubSub,
		)
	})
}
