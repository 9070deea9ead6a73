package events_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/mail"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/eventrouter/eventrouter/events"
)

// FuzzDecodeUserRegistered checks that decoding never panics, that every
// rejection is an InvalidError without the address in its reason, and that
// an accepted event obeys every rule of the schema, checked here again
// without the decoder's own code.
func FuzzDecodeUserRegistered(f *testing.F) {
	for _, seed := range []string{
		`{"user_id": 123, "email": "test@example.com"}`,
		`{"user_id":"u-7","email":"a@b.co","extra":{"USER_ID":1}}`,
		"  {\"user_id\":1,\"email\":\"x@y.z\"}\n",
		`{"user\u005fid": "a\u002db", "email": "a@b.co"}`,
		`{"user_id": -0, "email": "a@b.co"}`,
		`{"user_id": 9223372036854775808, "email": "a@b.co"}`,
		`{"user_id": "\ud800", "email": "a@b.co"}`,
		`{"user_id": "Jürgen", "email": "jürgen@bücher.de"}`,
		`{"user_id":1,"email":"a@b.c"}}`,
		`{"user_id":1,"email":"a@b.c"}]`,
		`{"USER_ID": 1, "email": "a@b.co"}`,
		`{"u\u017fer_id": 1, "email": "a@b.co"}`,
		`{"user_id": 1, "user_id": 2, "email": "a@b.co"}`,
		`{"user_id": " 1", "email": "a@b.co"}`,
		`{"user_id": "u\u200b", "email": "a@b.co"}`,
		`{"user_id": 1, "email": "Name <a@b.co>"}`,
		`{"user_id": 1, "email": "\"a b\"@c.d"}`,
		`{"user_id": 1, "email": "a@[127.0.0.1]"}`,
		`{"user_id": 1, "email": "a@b.co (comment)"}`,
		"\ufeff{\"user_id\": 1, \"email\": \"a@b.co\"}",
		`[{"user_id": 1, "email": "a@b.co"}]`,
		`{"user_id": 1, "email": "a@b.co", "x": [[[[[[[[[[]]]]]]]]]]}`,
		``,
		"\xff",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		ev, err := events.DecodeUserRegistered(payload)
		if err != nil {
			var invalid *events.InvalidError
			if !errors.As(err, &invalid) || invalid.Reason == "" {
				t.Fatalf("DecodeUserRegistered(%q) = %v; want an *events.InvalidError with a reason", payload, err)
			}
			if email := emailOf(payload); strings.HasPrefix(invalid.Reason, "email") && len(email) >= 6 && strings.Contains(email, "@") && strings.Contains(invalid.Reason, email) {
				t.Fatalf("DecodeUserRegistered(%q) = %q; want a reason without the address", payload, invalid.Reason)
			}
			return
		}

		if len(payload) > events.MaxPayloadLen || !utf8.Valid(payload) || !json.Valid(payload) {
			t.Fatalf("DecodeUserRegistered(%q) accepted a value that is too long (%d bytes), not UTF-8 or not one JSON value", payload, len(payload))
		}
		if body := bytes.TrimLeft(payload, " \t\r\n"); body[0] != '{' {
			t.Fatalf("DecodeUserRegistered(%q) accepted a value that is not an object", payload)
		}

		values := map[string][]json.RawMessage{}
		for _, m := range topLevelMembers(t, payload) {
			for _, known := range []string{"user_id", "email"} {
				if m.key != known && strings.EqualFold(m.key, known) {
					t.Fatalf("DecodeUserRegistered(%q) accepted key %q next to %q", payload, m.key, known)
				}
			}
			values[m.key] = append(values[m.key], m.value)
		}
		if len(values["user_id"]) != 1 || len(values["email"]) != 1 {
			t.Fatalf("DecodeUserRegistered(%q) accepted %d user_id and %d email keys; want 1 of each", payload, len(values["user_id"]), len(values["email"]))
		}

		rawID := values["user_id"][0]
		key := ev.UserID.String()
		// The same JSON value as sent: encoding/json may escape characters
		// such as & as \u0026, which is the same string.
		if got, _ := json.Marshal(ev.UserID); !sameJSON(got, rawID) {
			t.Fatalf("DecodeUserRegistered(%q) user id = %s; want it as sent, %s", payload, got, rawID)
		}
		if len(key) == 0 || len(key) > events.MaxUserIDLen {
			t.Fatalf("DecodeUserRegistered(%q) user id %q is %d bytes long; want 1 to %d", payload, key, len(key), events.MaxUserIDLen)
		}
		if rawID[0] == '"' {
			var s string
			if err := json.Unmarshal(rawID, &s); err != nil || s != key {
				t.Fatalf("DecodeUserRegistered(%q) user id = %q; want %q (%v)", payload, key, s, err)
			}
			if strings.TrimSpace(key) != key || hasControl(key) {
				t.Fatalf("DecodeUserRegistered(%q) accepted user id %q with surrounding whitespace or a control character", payload, key)
			}
		} else if _, err := strconv.ParseInt(string(rawID), 10, 64); err != nil || key != string(rawID) {
			t.Fatalf("DecodeUserRegistered(%q) accepted user id %s, which is not an integer (%v)", payload, rawID, err)
		}

		var email string
		if err := json.Unmarshal(values["email"][0], &email); err != nil || email != ev.Email {
			t.Fatalf("DecodeUserRegistered(%q) email = %q; want %q (%v)", payload, ev.Email, email, err)
		}
		if len(email) > events.MaxEmailLen || hasControl(email) {
			t.Fatalf("DecodeUserRegistered(%q) accepted an email of %d bytes or with a control character", payload, len(email))
		}
		if addr, err := mail.ParseAddress(email); err != nil || addr.Address != email {
			t.Fatalf("DecodeUserRegistered(%q) accepted email %q, which is not a bare address", payload, email)
		}

		// A consumer that reads the event with plain encoding/json must
		// see the same user and address.
		var plain struct {
			UserID json.RawMessage `json:"user_id"`
			Email  string          `json:"email"`
		}
		if err := json.Unmarshal(payload, &plain); err != nil || !bytes.Equal(plain.UserID, rawID) || plain.Email != email {
			t.Fatalf("json.Unmarshal(%q) = %s %q, %v; want %s %q as DecodeUserRegistered read them", payload, plain.UserID, plain.Email, err, rawID, email)
		}
	})
}

type fuzzMember struct {
	key   string
	value json.RawMessage
}

// topLevelMembers returns the members of the JSON object payload in order,
// duplicates included.
func topLevelMembers(t *testing.T, payload []byte) []fuzzMember {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(payload))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("%q does not start an object: %v %v", payload, tok, err)
	}
	var members []fuzzMember
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("key in %q: %v", payload, err)
		}
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			t.Fatalf("value in %q: %v", payload, err)
		}
		members = append(members, fuzzMember{key: tok.(string), value: value})
	}
	return members
}

// hasControl reports whether s holds a character the schema forbids in ids
// and addresses.
func hasControl(s string) bool {
	return strings.IndexFunc(s, func(r rune) bool {
		return unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
	}) >= 0
}

// emailOf returns the email string of payload, if it has one.
func emailOf(payload []byte) string {
	var v struct {
		Email string `json:"email"`
	}
	_ = json.Unmarshal(payload, &v)
	return v.Email
}

// sameJSON reports whether a and b are the same JSON value, numbers
// compared as written.
func sameJSON(a, b []byte) bool {
	decode := func(raw []byte) (any, error) {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.UseNumber()
		var v any
		err := dec.Decode(&v)
		return v, err
	}
	va, errA := decode(a)
	vb, errB := decode(b)
	return errA == nil && errB == nil && reflect.DeepEqual(va, vb)
}
