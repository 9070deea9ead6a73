package record_test

import (
	"context"
	"maps"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/record"
)

func TestUnmarshal(t *testing.T) {
	tests := []struct {
		name     string
		headers  []*sarama.RecordHeader
		wantUUID string
		wantMeta message.Metadata
	}{
		{"plain producer", nil, "user-registered/2/41", message.Metadata{}},
		{"watermill producer", []*sarama.RecordHeader{{Key: []byte(kafka.UUIDHeaderKey), Value: []byte("abc")}, {Key: []byte("k"), Value: []byte("v")}}, "abc", message.Metadata{"k": "v"}},
		{"empty uuid header", []*sarama.RecordHeader{{Key: []byte(kafka.UUIDHeaderKey)}}, "user-registered/2/41", message.Metadata{}},
		{"binary header", []*sarama.RecordHeader{{Key: []byte("bin"), Value: []byte{0xff, 0}}, nil}, "user-registered/2/41", message.Metadata{"bin": "\xff\x00"}},
	}
	for _, tt := range tests {
		rec := &sarama.ConsumerMessage{Topic: "user-registered", Partition: 2, Offset: 41, Value: []byte("v"), Headers: tt.headers}
		msg, err := record.Marshaler{}.Unmarshal(rec)
		if err != nil {
			t.Fatalf("%s: Unmarshal() = %v; want no error", tt.name, err)
		}
		if msg.UUID != tt.wantUUID || !maps.Equal(msg.Metadata, tt.wantMeta) {
			t.Errorf("%s: Unmarshal() = %s %v; want %s %v", tt.name, msg.UUID, msg.Metadata, tt.wantUUID, tt.wantMeta)
		}
	}
}

func TestMarshalKey(t *testing.T) {
	msg := message.NewMessage("id", []byte("v"))
	msg.SetContext(record.WithKey(context.Background(), "123"))
	rec, err := record.Marshaler{}.Marshal("t", msg)
	if err != nil {
		t.Fatalf("Marshal() = %v", err)
	}
	if got, _ := rec.Key.Encode(); string(got) != "123" {
		t.Errorf("Marshal() key = %q; want %q", got, "123")
	}

	unkeyed, err := record.Marshaler{}.Marshal("t", message.NewMessage("id", nil))
	if err != nil || unkeyed.Key != nil {
		t.Errorf("Marshal(no key) = key %v, %v; want a nil key", unkeyed.Key, err)
	}
}
