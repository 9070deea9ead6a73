package events_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/events"
)

func TestDecodeUserRegistered(t *testing.T) {
	longID := strings.Repeat("u", events.MaxUserIDLen)
	longEmail := strings.Repeat("a", 64) + "@" + strings.Repeat("b", events.MaxEmailLen-64-1-3) + ".co"
	tests := []struct {
		payload   string
		wantID    string // the id's JSON form
		wantKey   string
		wantEmail string
	}{
		// The seed's Python producer: json.dumps({'user_id': 123, ...}).
		{payload: `{"user_id": 123, "email": "test@example.com"}`, wantID: `123`, wantKey: "123", wantEmail: "test@example.com"},
		{payload: `{"user_id": "u-7", "email": "a@b.co", "extra": true}`, wantID: `"u-7"`, wantKey: "u-7", wantEmail: "a@b.co"},
		{payload: "  {\"user_id\":1,\"email\":\"x@y.z\"}\n", wantID: `1`, wantKey: "1", wantEmail: "x@y.z"},
		{payload: `{"user_id": -5, "email": "a@b.co"}`, wantID: `-5`, wantKey: "-5", wantEmail: "a@b.co"},
		{payload: `{"user_id": 9223372036854775807, "email": "a@b.co"}`, wantID: `9223372036854775807`, wantKey: "9223372036854775807", wantEmail: "a@b.co"},
		{payload: `{"user_id": "Jürgen Weiß", "email": "a@b.co"}`, wantID: `"Jürgen Weiß"`, wantKey: "Jürgen Weiß", wantEmail: "a@b.co"},
		{payload: `{"user_id": "a\u002db", "email": "a@b.co"}`, wantID: `"a\u002db"`, wantKey: "a-b", wantEmail: "a@b.co"},
		{payload: `{"user\u005fid": 1, "email": "a@b.co"}`, wantID: `1`, wantKey: "1", wantEmail: "a@b.co"},
		{payload: `{"user_id": "` + longID + `", "email": "` + longEmail + `"}`, wantID: `"` + longID + `"`, wantKey: longID, wantEmail: longEmail},
		// Producers may add fields, in any case and more than once.
		{payload: `{"Name": "x", "name": "y", "name": "z", "user_id": 1, "email": "a@b.co", "nested": {"USER_ID": 2}}`, wantID: `1`, wantKey: "1", wantEmail: "a@b.co"},
		{payload: `{"user_id": 1, "email": "a@b.co", "user_ids": [2, 3]}`, wantID: `1`, wantKey: "1", wantEmail: "a@b.co"},
	}
	for _, tt := range tests {
		got, err := events.DecodeUserRegistered([]byte(tt.payload))
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

// TestDecodeUserRegisteredRejects checks each rule of the event schema and
// that the reason names exactly what is wrong.
func TestDecodeUserRegisteredRejects(t *testing.T) {
	ok := `"email": "a@b.co"`
	huge := `{"user_id": 1, "email": "a@b.co", "pad": "` + strings.Repeat("x", events.MaxPayloadLen) + `"}`
	tests := []struct {
		name, payload, reason string
	}{
		// The value as a whole.
		{"empty", ``, "empty value"},
		{"only whitespace", " \n\t", "empty value"},
		{"not UTF-8", "\xff\xfe\x00garbage", "value is not UTF-8 text"},
		{"text", `not json`, `value is not a JSON object: it starts with 'n'`},
		{"array", `[1,2]`, "value is an array, not a JSON object"},
		{"string", `"text"`, "value is a string, not a JSON object"},
		{"number", `42`, "value is a number, not a JSON object"},
		{"non-JSON space before", "\u00a0{\"user_id\": 1, " + ok + "}", `value is not a JSON object: it starts with '\u00a0'`},
		{"unclosed", `{"user_id": 1, "email": "a@b.co"`, "value is not valid JSON: it ends before the object is closed"},
		{"trailing comma", `{"user_id": 1, "email": "a@b.co",}`, "value is not valid JSON: invalid character '}' looking for beginning of object key string"},
		{"trailing brace", `{"user_id":1,"email":"a@b.c"}}`, "value has more data after the JSON object, from byte 29"},
		{"trailing bracket", `{"user_id":1,"email":"a@b.c"}]`, "value has more data after the JSON object, from byte 29"},
		{"second object", `{"user_id": 1, "email": "a@b.co"} {}`, "value has more data after the JSON object, from byte 33"},
		{"trailing text", `{"user_id": 1, "email": "a@b.co"}x`, "value has more data after the JSON object, from byte 33"},
		{"too large", huge, fmt.Sprintf("value is %d bytes long; the limit is %d", len(huge), events.MaxPayloadLen)},

		// Keys.
		{"upper-case user_id", `{"USER_ID": 1, ` + ok + `}`, `key "USER_ID" differs from "user_id" only by case; keys are case-sensitive`},
		{"upper-case email", `{"user_id": 1, "Email": "a@b.co"}`, `key "Email" differs from "email" only by case; keys are case-sensitive`},
		{"case variant next to the key", `{"user_id": 1, "User_Id": 2, ` + ok + `}`, `key "User_Id" differs from "user_id" only by case; keys are case-sensitive`},
		{"long s folds to s", `{"u\u017fer_id": 1, ` + ok + `}`, `key "uſer_id" differs from "user_id" only by case; keys are case-sensitive`},
		{"duplicate user_id", `{"user_id": 1, "user_id": 2, ` + ok + `}`, `key "user_id" appears more than once`},
		{"duplicate email", `{"user_id": 1, "email": "a@b.co", "email": "c@d.co"}`, `key "email" appears more than once`},

		// user_id.
		{"user_id missing", `{` + ok + `}`, "user_id is missing"},
		{"user_id null", `{"user_id": null, ` + ok + `}`, "user_id is null, neither a string nor an integer"},
		{"user_id empty", `{"user_id": "", ` + ok + `}`, "user_id is an empty string"},
		{"user_id blank", `{"user_id": "   ", ` + ok + `}`, `user_id "   " is blank`},
		{"user_id newline only", `{"user_id": "\n", ` + ok + `}`, `user_id "\n" is blank`},
		{"user_id leading space", `{"user_id": " u-1", ` + ok + `}`, `user_id " u-1" starts or ends with whitespace`},
		{"user_id trailing no-break space", `{"user_id": "u-1\u00a0", ` + ok + `}`, `user_id "u-1\u00a0" starts or ends with whitespace`},
		{"user_id NUL", `{"user_id": "u\u0000", ` + ok + `}`, `user_id "u\x00" contains control character U+0000 at byte 1`},
		{"user_id newline", `{"user_id": "u\n1", ` + ok + `}`, `user_id "u\n1" contains control character U+000A at byte 1`},
		{"user_id DEL", `{"user_id": "u\u007f1", ` + ok + `}`, `user_id "u\x7f1" contains control character U+007F at byte 1`},
		{"user_id zero-width space", `{"user_id": "u\u200b1", ` + ok + `}`, `user_id "u\u200b1" contains control character U+200B at byte 1`},
		{"user_id bidi override", `{"user_id": "u\u202e1", ` + ok + `}`, `user_id "u\u202e1" contains control character U+202E at byte 1`},
		{"user_id line separator", `{"user_id": "u\u20281", ` + ok + `}`, `user_id "u\u20281" contains control character U+2028 at byte 1`},
		{"user_id too long", `{"user_id": "` + strings.Repeat("u", events.MaxUserIDLen+1) + `", ` + ok + `}`, fmt.Sprintf("user_id is %d bytes long; the limit is %d", events.MaxUserIDLen+1, events.MaxUserIDLen)},
		{"user_id beyond bbolt's key limit", `{"user_id": "` + strings.Repeat("u", 40000) + `", ` + ok + `}`, fmt.Sprintf("user_id is 40000 bytes long; the limit is %d", events.MaxUserIDLen)},
		{"user_id fraction", `{"user_id": 1.5, ` + ok + `}`, "user_id 1.5 is a number but not a 64-bit integer written in digits"},
		{"user_id exponent", `{"user_id": 1e3, ` + ok + `}`, "user_id 1e3 is a number but not a 64-bit integer written in digits"},
		{"user_id beyond 64 bits", `{"user_id": 9223372036854775808, ` + ok + `}`, "user_id 9223372036854775808 is a number but not a 64-bit integer written in digits"},
		{"user_id object", `{"user_id": {"a":1}, ` + ok + `}`, "user_id is an object, neither a string nor an integer"},
		{"user_id array", `{"user_id": [1], ` + ok + `}`, "user_id is an array, neither a string nor an integer"},
		{"user_id boolean", `{"user_id": true, ` + ok + `}`, "user_id is a boolean, neither a string nor an integer"},

		// email.
		{"email missing", `{"user_id": 1}`, "email is missing"},
		{"email null", `{"user_id": 1, "email": null}`, "email is null, not a string"},
		{"email number", `{"user_id": 1, "email": 5}`, "email is a number, not a string"},
		{"email empty", `{"user_id": 1, "email": ""}`, "email is an empty string"},
		{"email too long", `{"user_id": 1, "email": "` + strings.Repeat("a", 64) + "@" + strings.Repeat("b", 200) + `.co"}`, fmt.Sprintf("email is 268 bytes long; the limit is %d", events.MaxEmailLen)},
		{"email control", `{"user_id": 1, "email": "a\u0001@b.co"}`, "email contains control character U+0001 at byte 1"},
		{"email zero-width space", `{"user_id": 1, "email": "a\u200b@b.co"}`, "email contains control character U+200B at byte 1"},
		{"email not an address", `{"user_id": 1, "email": "not-an-address"}`, "email is not an address"},
		{"email display name", `{"user_id": 1, "email": "Name <a@b.co>"}`, "email is not a bare address such as user@example.com"},
		{"email angle brackets", `{"user_id": 1, "email": "<a@b.co>"}`, "email is not a bare address such as user@example.com"},
		{"email surrounding space", `{"user_id": 1, "email": " a@b.co"}`, "email is not a bare address such as user@example.com"},
	}
	for _, tt := range tests {
		_, err := events.DecodeUserRegistered([]byte(tt.payload))
		var invalid *events.InvalidError
		if !errors.As(err, &invalid) {
			t.Errorf("%s: DecodeUserRegistered() = %v; want an *events.InvalidError", tt.name, err)
			continue
		}
		if invalid.Event != "user-registered" || invalid.Reason != tt.reason {
			t.Errorf("%s: DecodeUserRegistered() = %q, %q; want %q, %q", tt.name, invalid.Event, invalid.Reason, "user-registered", tt.reason)
		}
	}
}

// TestReasonsHoldNoEmail checks that a rejected address is not quoted in the
// reason, which poison records and logs carry.
func TestReasonsHoldNoEmail(t *testing.T) {
	for _, email := range []string{"not-an-address", "Secret Name <secret@example.com>", "secret@example.com\u0001", " secret@example.com", "secret@" + strings.Repeat("x", 300) + ".com"} {
		payload := `{"user_id": 1, "email": "` + email + `"}`
		_, err := events.DecodeUserRegistered([]byte(payload))
		if err == nil {
			t.Errorf("DecodeUserRegistered(%q) = nil; want an error", payload)
			continue
		}
		for _, secret := range []string{"not-an-address", "secret", "Secret"} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("DecodeUserRegistered(%q) = %q; want a reason without %q", payload, err, secret)
			}
		}
	}
}

// TestUserIDUnmarshalJSON checks that decoding a UserID anywhere applies the
// same rules.
func TestUserIDUnmarshalJSON(t *testing.T) {
	tests := []struct {
		json    string
		wantKey string
		wantErr string
	}{
		{json: `123`, wantKey: "123"},
		{json: `"u-7"`, wantKey: "u-7"},
		{json: `null`, wantKey: ""},
		{json: `""`, wantErr: "user_id is an empty string"},
		{json: `"u\u0001"`, wantErr: `user_id "u\x01" contains control character U+0001 at byte 1`},
		{json: `1.5`, wantErr: "user_id 1.5 is a number but not a 64-bit integer written in digits"},
	}
	for _, tt := range tests {
		var got struct {
			UserID events.UserID `json:"user_id"`
		}
		err := json.Unmarshal([]byte(`{"user_id":`+tt.json+`}`), &got)
		switch {
		case tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr):
			t.Errorf("json.Unmarshal(%s) = %v; want %q", tt.json, err, tt.wantErr)
		case tt.wantErr == "" && (err != nil || got.UserID.String() != tt.wantKey):
			t.Errorf("json.Unmarshal(%s) = %q, %v; want %q", tt.json, got.UserID, err, tt.wantKey)
		}
	}
}

func TestUserRegisteredValidate(t *testing.T) {
	tests := []struct {
		ev      events.UserRegistered
		wantErr string
	}{
		{events.UserRegistered{UserID: events.NewUserID(`7`), Email: "a@b.co"}, ""},
		{events.UserRegistered{Email: "a@b.co"}, "user_id is missing"},
		{events.UserRegistered{UserID: events.NewUserID(`" x"`), Email: "a@b.co"}, `user_id " x" starts or ends with whitespace`},
		{events.UserRegistered{UserID: events.NewUserID(`7`)}, "email is an empty string"},
	}
	for _, tt := range tests {
		err := tt.ev.Validate()
		if got := fmt.Sprint(err); (tt.wantErr == "" && err != nil) || (tt.wantErr != "" && got != tt.wantErr) {
			t.Errorf("%+v.Validate() = %v; want %q", tt.ev, err, tt.wantErr)
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
