package handlers_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/testkit/handlertest"
)

func TestLogHandler(t *testing.T) {
	tests := []struct {
		name, options string
		want, not     []string
	}{
		{"defaults", "", []string{"level=INFO", "msg=event", "topic=user-registered", "partition=1", "offset=5", "id=user-registered/1/5", "bytes=40"},
			[]string{"a@example.com", "payload="}},
		{"payload at debug", "level: debug\npayload: true\nmax_payload: 12", []string{"level=DEBUG", `payload="{\"user_id\": "`, "key=7"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			s := handlertest.NewServices(t)
			s.Log = slog.New(slog.NewTextHandler(&out, &slog.HandlerOptions{Level: slog.LevelDebug}))
			h := handlertest.Build(t, handlers.Registry()["log"], tt.options, s)
			res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7, "email": "a@example.com"}`,
				handlertest.At("user-registered", 1, 5), handlertest.Key("7")))
			if !res.Acked || res.Err != nil || len(res.Out) != 0 {
				t.Fatalf("got %+v; want the record handled, nothing produced", res)
			}
			for _, w := range tt.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("got log %q; want %q in it", out.String(), w)
				}
			}
			for _, n := range tt.not {
				if strings.Contains(out.String(), n) {
					t.Errorf("got log %q; want no %q in it", out.String(), n)
				}
			}
		})
	}
	if _, err := handlertest.BuildErr(handlers.Registry()["log"], "payload: true", handlertest.NewServices(t)); err == nil ||
		!strings.Contains(err.Error(), "line 1: routes[0].options.payload: payloads hold personal data") {
		t.Errorf("got %v; want payload above debug refused", err)
	}
}
