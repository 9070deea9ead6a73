// Package record converts between Kafka records and Watermill messages the
// way eventrouter needs: every record gets a stable identity, keys survive
// the round trip, and unmarshaling never fails.
package record

import (
	"context"
	"fmt"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"
)

type keyContextKey struct{}

// WithKey returns a context that makes Marshaler use key as the Kafka key
// of a message published with that context.
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyContextKey{}, []byte(key))
}

// Key returns the Kafka key a message will be published with: the one set
// by WithKey or, for a consumed message (as when it is poisoned), the key
// it was consumed with.
func Key(ctx context.Context) ([]byte, bool) {
	if key, ok := ctx.Value(keyContextKey{}).([]byte); ok {
		return key, true
	}
	if o, ok := OriginFrom(ctx); ok {
		return o.Key, true
	}
	return nil, false
}

// ID returns the identity of a record that carries no Watermill message
// UUID: its topic, partition and offset, which never change. Kafka topic
// names cannot contain '/', so the form is unambiguous.
func ID(topic string, partition int32, offset int64) string {
	return fmt.Sprintf("%s/%d/%d", topic, partition, offset)
}

// Marshaler is Watermill-kafka's record format plus keys and stable
// identities: the message UUID in the _watermill_message_uuid header and
// each metadata entry in a header of its own, so that a plain
// Watermill-kafka subscriber reads our records too. Use one value for both
// the publisher and the subscribers.
type Marshaler struct{}

// Marshal builds a Kafka record with the message's UUID and metadata as
// headers and the key from its context (see Key). It never fails: it also
// publishes poisoned records, and a record that cannot be poisoned would
// block its partition. A metadata entry named like the UUID header is left
// out, so that no metadata can replace the message's identity (Watermill-
// kafka's default marshaler refuses the whole message instead).
func (m Marshaler) Marshal(topic string, msg *message.Message) (*sarama.ProducerMessage, error) {
	headers := make([]sarama.RecordHeader, 0, len(msg.Metadata)+1)
	if msg.UUID != "" {
		headers = append(headers, sarama.RecordHeader{Key: []byte(kafka.UUIDHeaderKey), Value: []byte(msg.UUID)})
	}
	for k, v := range msg.Metadata {
		if k == kafka.UUIDHeaderKey {
			continue
		}
		headers = append(headers, sarama.RecordHeader{Key: []byte(k), Value: []byte(v)})
	}
	rec := &sarama.ProducerMessage{
		Topic:   topic,
		Value:   sarama.ByteEncoder(msg.Payload),
		Headers: headers,
	}
	if key, ok := Key(msg.Context()); ok && key != nil {
		rec.Key = sarama.ByteEncoder(key)
	}
	return rec, nil
}

// Unmarshal turns a record into a message. It never fails: a record the
// router cannot use must reach a handler, which rejects it into the poison
// topic, instead of restarting the consumer session over and over. The
// first non-empty Watermill UUID header is the message's UUID; a record
// without one gets ID as its UUID. Of repeated header keys, the last
// becomes the metadata entry.
func (m Marshaler) Unmarshal(rec *sarama.ConsumerMessage) (*message.Message, error) {
	metadata := make(message.Metadata, len(rec.Headers))
	var uuid string
	for _, h := range rec.Headers {
		if h == nil {
			continue
		}
		if string(h.Key) == kafka.UUIDHeaderKey {
			if uuid == "" {
				uuid = string(h.Value)
			}
			continue
		}
		metadata.Set(string(h.Key), string(h.Value))
	}
	if uuid == "" {
		uuid = ID(rec.Topic, rec.Partition, rec.Offset)
	}
	msg := message.NewMessage(uuid, rec.Value)
	msg.Metadata = metadata
	return msg, nil
}
