package notify_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/notify"
)

// The address is personal data: it is logged at debug level only.
func TestLogNotifierKeepsAddressesAtDebug(t *testing.T) {
	tests := []struct {
		level     slog.Level
		wantEmail bool
	}{
		{slog.LevelInfo, false},
		{slog.LevelDebug, true},
	}
	for _, tt := range tests {
		var buf bytes.Buffer
		n := notify.Log{Logger: slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: tt.level}))}
		err := n.Send(context.Background(), notify.Message{Template: "welcome", UserID: events.NewUserID("7"), Email: "seven@example.com", EventID: "t/0/1"})
		if err != nil {
			t.Fatal(err)
		}
		line := buf.String()
		if got := strings.Contains(line, "seven@example.com"); got != tt.wantEmail {
			t.Errorf("at level %s the line carries the address: %v; want %v\n%s", tt.level, got, tt.wantEmail, line)
		}
		if !strings.Contains(line, "user_id=7") {
			t.Errorf("line = %q; want user_id=7", line)
		}
	}
}
