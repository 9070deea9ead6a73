package app

import (
	"log/slog"
	"testing"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/tests"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// TestPubSub runs Watermill's universal Pub/Sub test suite against the
// publisher and the subscriber exactly as the daemon configures them, in
// each ordering mode, with every feature Kafka has for consumer groups:
// groups, persistence, and (in key and partition mode, for records without
// a key) order within a single-partition topic. NewSubscriberReceivesOldMessages
// is off: it expects every subscriber to see everything, which is what a
// consumer group exists to prevent.
func TestPubSub(t *testing.T) {
	if testing.Short() {
		t.Skip("the universal suite takes minutes")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		for _, ordering := range []string{"key", "partition", "unordered"} {
			t.Run(ordering, func(t *testing.T) {
				t.Parallel()
				access, _ := client.New(config.Defaults().Kafka, k.Brokers, nil)
				newPubSub := func(t *testing.T, group string) (message.Publisher, message.Subscriber) {
					pub, err := newPublisher(access, watermill.NopLogger{})
					if err != nil {
						t.Fatal(err)
					}
					route := config.DefaultRoute(config.Defaults().Retry)
					route.Name, route.ConsumerGroup, route.Ordering = "pubsub", group, ordering
					sub, err := newSubscriber(access, route, slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatal(err)
					}
					return pub, sub
				}
				tests.TestPubSub(t,
					tests.Features{
						ConsumerGroups:                   true,
						ExactlyOnceDelivery:              false,
						GuaranteedOrder:                  ordering != "unordered",
						Persistent:                       true,
						NewSubscriberReceivesOldMessages: false,
					},
					func(t *testing.T) (message.Publisher, message.Subscriber) { return newPubSub(t, "test-"+ordering) },
					newPubSub,
				)
			})
		}
	})
}
