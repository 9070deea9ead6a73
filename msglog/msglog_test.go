package msglog_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/msglog"
)

func TestHandlerAddsContextAttrs(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(msglog.Handler{Handler: slog.NewTextHandler(&buf, nil)}).With("component", "x")
	ctx := msglog.With(context.Background(), slog.String("route", "welcome"))
	ctx = msglog.With(ctx, slog.Int64("offset", 42))

	logger.InfoContext(ctx, "about a message")
	logger.Info("about nothing")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines; want 2", len(lines))
	}
	for _, want := range []string{"component=x", "route=welcome", "offset=42"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line with a message context = %q; want %s", lines[0], want)
		}
	}
	if strings.Contains(lines[1], "route=") {
		t.Errorf("line without a message context = %q; want no message fields", lines[1])
	}
}
