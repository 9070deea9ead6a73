package events_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/events"
)

func TestDecodeUserRegistered(t *testing.T) {
	tests := []struct {
		payload    string
		wantID     string // the id's JSON form
		wantKey    string
		wantEmail  string
		wantReason string // empty: valid
	}{
		{payload: `{"user_id": 123, "email": "test@example.com"}`, wantID: `123`, wantKey: "123", wantEmail: "test@example.com"},
		{payload: `{"user_id": "u-7", "email": "a@b.co", "extra": true}`, wantID: `"u-7"`, wantKey: "u-7", wantEmail: "a@b.co"},
		{payload: "  {\"user_id\":1,\"email\":\"x@y.z\"}\n", wantID: `1`, wantKey: "1", wantEmail: "x@y.z"},
		{payload: ``, wantReason: "empty value"},
		{payload: `not json`, wantReason: "not a JSON object"},
		{payload: `[1,2]`, wantReason: "not a JSON object"},
		{payload: `"text"`, wantReason: "not a JSON object"},
		{payload: `{"user_id": 1, "email": "a@b.co"`, wantReason: "not valid JSON"},
		{payload: `{"user_id": 1, "email": "a@b.co"} {}`, wantReason: "more than one JSON value"},
		{payload: "\xff\xfe\x00garbage", wantReason: "not UTF-8"},
		{payload: `{"email": "a@b.co"}`, wantReason: "user_id is missing"},
		{payload: `{"user_id": null, "email": "a@b.co"}`, wantReason: "user_id is missing"},
		{payload: `{"user_id": "", "email": "a@b.co"}`, wantReason: "user_id is missing"},
		{payload: `{"user_id": 1.5, "email": "a@b.co"}`, wantReason: "neither a string nor an integer"},
		{payload: `{"user_id": {"a":1}, "email": "a@b.co"}`, wantReason: "neither a string nor an integer"},
		{payload: `{"user_id": 1}`, wantReason: "email is missing"},
		{payload: `{"user_id": 1, "email": "not-an-address"}`, wantReason: `email "not-an-address" is not an address`},
		{payload: `{"user_id": 1, "email": "Name <a@b.co>"}`, wantReason: "is not an address"},
		{payload: `{"user_id": 1, "email": 5}`, wantReason: "not valid JSON"},
	}
	for _, tt := range tests {
		got, err := events.DecodeUserRegistered([]byte(tt.payload))
		if tt.wantReason != "" {
			var invalid *events.InvalidError
			if !errors.As(err, &invalid) || !strings.Contains(err.Error(), tt.wantReason) {
				t.Errorf("DecodeUserRegistered(%q) = %v; want an InvalidError containing %q", tt.payload, err, tt.wantReason)
			}
			continue
		}
		if err != nil {
			t.Errorf("DecodeUserRegistered(%q) = %v; want no error", tt.payload, err)
			continue
		}
		id, _ := json.Marshal(got.UserID)
		if string(id) != tt.wantID || got.UserID.String() != tt.wantKey || got.Email != tt.wantEmail {
			t.Errorf("DecodeUserRegistered(%q) = {%s %q %q}; want {%s %q %q}", tt.payload, id, got.UserID, got.Email, tt.wantID, tt.wantKey, tt.wantEmail)
		}
	}
}

func TestNotificationSentEchoesUserID(t *testing.T) {
	for _, id := range []string{`123`, `"abc"`} {
		ev := events.NotificationSent{
			UserID: events.NewUserID(id), Email: "a@b.co", Channel: "log", Template: "welcome",
			SentAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), SourceEventID: "t/0/1",
		}
		got, err := ev.Encode()
		if err != nil {
			t.Fatalf("Encode() = %v", err)
		}
		want := `{"user_id":` + id + `,"email":"a@b.co","channel":"log","template":"welcome","sent_at":"2026-01-02T03:04:05Z","source_event_id":"t/0/1"}`
		if string(got) != want {
			t.Errorf("Encode() = %s; want %s", got, want)
		}
	}
}
