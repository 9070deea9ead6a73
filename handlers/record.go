package handlers

import (
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/kafka/record"
)

// Record is what a handler knows of the Kafka record a message came from.
type Record struct {
	// Topic, Partition and Offset say where the record was read.
	Topic     string
	Partition int32
	Offset    int64
	// Key is the record's Kafka key; nil when it has none.
	Key []byte
	// Timestamp is the record's Kafka timestamp.
	Timestamp time.Time
	// ID is the event's stable identity, "topic/partition/offset" of the
	// record first consumed: a record replayed from the poison topic keeps
	// the ID of the record that was poisoned, and a redelivery has the same
	// ID, so that a receiver which dedupes on it acts once.
	ID string
	// Replayed says that the record is handled again: rewound, or
	// replayed from the poison topic.
	Replayed bool
}

// RecordOf returns the record msg was read from. A message the router did
// not read from Kafka (one built in a test without handlertest.Message)
// gives a Record with msg's UUID as its ID and nothing else.
func RecordOf(msg *message.Message) Record {
	o, ok := record.OriginFrom(msg.Context())
	if !ok {
		return Record{ID: msg.UUID}
	}
	r := Record{Topic: o.Topic, Partition: o.Partition, Offset: o.Offset, Key: o.Key, Timestamp: o.Timestamp, ID: o.ID(), Replayed: o.Replayed}
	// Only `eventrouter replay` writes both headers, and only onto the
	// topic the record was first consumed from; a producer that copies
	// headers along cannot make two events share an identity.
	first := msg.Metadata.Get(record.OriginalKey)
	if first != "" && msg.Metadata.Get(record.ReplayedFromKey) != "" && strings.HasPrefix(first, o.Topic+"/") {
		r.ID, r.Replayed = first, true
	}
	return r
}
