package handlers

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/config"
)

// LogOptions are the options of the log handler.
type LogOptions struct {
	// Level is the level of each line: debug, info, warn or error.
	Level string `yaml:"level"`
	// Payload puts each record's payload, at most MaxPayload bytes, on its
	// line. Payloads hold personal data, so it needs level debug.
	Payload bool `yaml:"payload"`
	// MaxPayload bounds the payload logged, in bytes.
	MaxPayload int `yaml:"max_payload"`
}

func logDefaults() LogOptions { return LogOptions{Level: "info", MaxPayload: 1024} }

// Validate checks the options once they are decoded.
func (o LogOptions) Validate() error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.Level)); err != nil {
		return &config.KeyError{Key: "level", Msg: fmt.Sprintf("%q is not a level; want debug, info, warn or error", o.Level)}
	}
	if o.Payload && level > slog.LevelDebug {
		return &config.KeyError{Key: "payload", Msg: "payloads hold personal data such as email addresses; set level: debug to log them"}
	}
	if o.MaxPayload < 1 {
		return &config.KeyError{Key: "max_payload", Msg: fmt.Sprintf("must be at least 1, got %d", o.MaxPayload)}
	}
	return nil
}

// LogHandler writes one line per record: where it was read, its key and
// its size, and with Payload its payload. It changes nothing, so it suits
// watching a topic and trying a route out.
type LogHandler struct {
	// Logger receives the lines.
	Logger  *slog.Logger
	Options LogOptions
}

func newLog(o LogOptions, s Services) (Handler, error) {
	return LogHandler{Logger: s.Logger(), Options: o}, nil
}

// Handle logs msg.
func (h LogHandler) Handle(msg *message.Message) ([]*message.Message, error) {
	var level slog.Level
	_ = level.UnmarshalText([]byte(h.Options.Level))
	rec := RecordOf(msg)
	attrs := []slog.Attr{
		slog.String("topic", rec.Topic), slog.Int("partition", int(rec.Partition)), slog.Int64("offset", rec.Offset),
		slog.String("id", rec.ID), slog.Int("bytes", len(msg.Payload)), slog.Bool("replayed", rec.Replayed),
	}
	if h.Options.Payload {
		attrs = append(attrs, slog.String("key", string(rec.Key)), slog.String("payload", string(truncate(msg.Payload, h.Options.MaxPayload))))
	}
	h.Logger.LogAttrs(context.WithoutCancel(msg.Context()), level, "event", attrs...)
	return nil, nil
}

// Close does nothing.
func (LogHandler) Close() error { return nil }

// truncate returns at most n bytes of b.
func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
