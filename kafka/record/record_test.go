package record_test

import (
	"bytes"
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/kafka/record"
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
		{"uuid header repeated", []*sarama.RecordHeader{{Key: []byte(kafka.UUIDHeaderKey), Value: []byte("abc")}, {Key: []byte(kafka.UUIDHeaderKey)}}, "abc", message.Metadata{}},
		{"empty uuid header first", []*sarama.RecordHeader{{Key: []byte(kafka.UUIDHeaderKey)}, {Key: []byte(kafka.UUIDHeaderKey), Value: []byte("def")}}, "def", message.Metadata{}},
		{"repeated header", []*sarama.RecordHeader{{Key: []byte("k"), Value: []byte("1")}, {Key: []byte("k"), Value: []byte("2")}}, "user-registered/2/41", message.Metadata{"k": "2"}},
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

func TestMarshalHeaders(t *testing.T) {
	tests := []struct {
		name        string
		uuid        string
		metadata    message.Metadata
		wantHeaders map[string]string
	}{
		{"uuid and metadata", "abc", message.Metadata{"k": "v"}, map[string]string{kafka.UUIDHeaderKey: "abc", "k": "v"}},
		{"no uuid", "", message.Metadata{"k": "v"}, map[string]string{"k": "v"}},
		{"metadata named like the uuid header", "abc", message.Metadata{kafka.UUIDHeaderKey: "forged", "k": "v"}, map[string]string{kafka.UUIDHeaderKey: "abc", "k": "v"}},
		{"empty metadata named like the uuid header", "abc", message.Metadata{kafka.UUIDHeaderKey: ""}, map[string]string{kafka.UUIDHeaderKey: "abc"}},
	}
	for _, tt := range tests {
		msg := message.NewMessage(tt.uuid, []byte("v"))
		msg.Metadata = tt.metadata
		rec, err := record.Marshaler{}.Marshal("t", msg)
		if err != nil {
			t.Errorf("%s: Marshal() = %v; want no error", tt.name, err)
			continue
		}
		got := map[string]string{}
		for _, h := range rec.Headers {
			if _, dup := got[string(h.Key)]; dup {
				t.Errorf("%s: Marshal() wrote header %q twice", tt.name, h.Key)
			}
			got[string(h.Key)] = string(h.Value)
		}
		if !maps.Equal(got, tt.wantHeaders) {
			t.Errorf("%s: Marshal() headers = %q; want %q", tt.name, got, tt.wantHeaders)
		}
	}
}

// FuzzMarshaler checks the round trip a record makes through Kafka: what
// Marshal builds, a consumer reads back and Unmarshal turns into the same
// message, whatever the headers, key and value hold.
func FuzzMarshaler(f *testing.F) {
	f.Add("abc", []byte("123"), true, []byte(`{"user_id": 1}`), []byte("k\x00v\x00trace\x00id"), int32(2), int64(41), uint8(0))
	f.Add("", []byte(nil), false, []byte(nil), []byte(nil), int32(0), int64(0), uint8(1))
	f.Add("abc", []byte(""), true, []byte{}, []byte("\x00\x00\x00"), int32(-1), int64(-1), uint8(2))
	f.Fuzz(func(t *testing.T, uuid string, key []byte, keyed bool, value, headers []byte, partition int32, offset int64, nilAt uint8) {
		const topic = "user-registered"
		// headers holds NUL-separated keys and values, as fuzzing takes
		// no maps.
		metadata := message.Metadata{}
		fields := bytes.Split(headers, []byte{0})
		for i := 0; i+1 < len(fields); i += 2 {
			metadata.Set(string(fields[i]), string(fields[i+1]))
		}
		msg := message.NewMessage(uuid, value)
		msg.Metadata = maps.Clone(metadata)
		if keyed {
			msg.SetContext(record.WithKey(context.Background(), string(key)))
		}

		rec, err := record.Marshaler{}.Marshal(topic, msg)
		if err != nil {
			t.Fatalf("Marshal(uuid %q, metadata %q) = %v; want no error", uuid, metadata, err)
		}
		cm := consumed(t, rec, partition, offset, int(nilAt))
		if keyed && !bytes.Equal(cm.Key, key) || keyed != (cm.Key != nil) {
			t.Errorf("consumed key = %q (nil %v); want %q (keyed %v)", cm.Key, cm.Key == nil, key, keyed)
		}

		got, err := record.Marshaler{}.Unmarshal(cm)
		if err != nil {
			t.Fatalf("Unmarshal(%v) = %v; want no error", cm.Headers, err)
		}
		if !bytes.Equal(got.Payload, value) {
			t.Errorf("payload = %q; want %q", got.Payload, value)
		}
		wantMeta := maps.Clone(metadata)
		delete(wantMeta, kafka.UUIDHeaderKey)
		if !maps.Equal(got.Metadata, wantMeta) {
			t.Errorf("metadata = %q; want %q", got.Metadata, wantMeta)
		}
		wantUUID := uuid
		if uuid == "" {
			wantUUID = record.ID(topic, partition, offset)
		}
		if got.UUID != wantUUID {
			t.Errorf("UUID = %q; want %q", got.UUID, wantUUID)
		}
	})
}

// consumed returns the record a consumer reads for rec, as sarama decodes
// it from the wire: header keys and values byte for byte, a nil key or
// value as null, an empty one as empty. A nil header goes at position nilAt
// (modulo the count), since Unmarshal must skip one.
func consumed(t *testing.T, rec *sarama.ProducerMessage, partition int32, offset int64, nilAt int) *sarama.ConsumerMessage {
	t.Helper()
	encode := func(e sarama.Encoder) []byte {
		if e == nil {
			return nil
		}
		b, err := e.Encode()
		if err != nil {
			t.Fatalf("encode %v: %v", e, err)
		}
		return bytes.Clone(b)
	}
	cm := &sarama.ConsumerMessage{
		Topic: rec.Topic, Partition: partition, Offset: offset,
		Key: encode(rec.Key), Value: encode(rec.Value),
	}
	for _, h := range rec.Headers {
		cm.Headers = append(cm.Headers, &sarama.RecordHeader{Key: bytes.Clone(h.Key), Value: bytes.Clone(h.Value)})
	}
	cm.Headers = slices.Insert(cm.Headers, nilAt%(len(cm.Headers)+1), nil)
	return cm
}
