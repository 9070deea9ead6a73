// Package events holds the typed events eventrouter consumes and produces,
// with their decoding and validation.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxPayloadLen is the size, in bytes, of the largest event the router
// decodes. A user-registered event is two short fields; the bound leaves
// producers room for fields of their own, and a runaway record is rejected
// with a reason before it is parsed.
const MaxPayloadLen = 64 << 10

// MaxUserIDLen is the length, in bytes of UTF-8, of the longest user_id
// string. The id becomes the Kafka key of the events about the user and part
// of the ledger key; a key the ledger refuses would fail only after the email
// went out.
const MaxUserIDLen = 128

// MaxEmailLen is the length, in bytes, of the longest email address: the
// longest that fits in an SMTP path (RFC 5321).
const MaxEmailLen = 254

// UserID is a user's identity as the producer sent it. The seed's producer
// sends a JSON number; other producers send a string. UserID keeps the
// original JSON so that events derived from it echo it unchanged.
type UserID struct {
	raw json.RawMessage
}

// NewUserID returns the UserID whose JSON form is raw.
func NewUserID(raw string) UserID { return UserID{raw: json.RawMessage(raw)} }

// String returns the id as text, without JSON quotes; it is the Kafka key of
// events about the user.
func (u UserID) String() string {
	var s string
	if json.Unmarshal(u.raw, &s) == nil {
		return s
	}
	return string(u.raw)
}

// IsZero reports whether the id is absent.
func (u UserID) IsZero() bool { return len(u.raw) == 0 }

// MarshalJSON returns the id exactly as it arrived.
func (u UserID) MarshalJSON() ([]byte, error) {
	if u.IsZero() {
		return []byte("null"), nil
	}
	return u.raw, nil
}

// UnmarshalJSON accepts null, which leaves the id absent, or a user_id that
// follows the rules of DecodeUserRegistered.
func (u *UserID) UnmarshalJSON(b []byte) error {
	b = trimJSONSpace(b)
	if string(b) == "null" {
		*u = UserID{}
		return nil
	}
	id, err := parseUserID(b)
	if err != nil {
		return err
	}
	*u = id
	return nil
}

// Validate checks the id against the rules of DecodeUserRegistered.
func (u UserID) Validate() error {
	if u.IsZero() {
		return errors.New("user_id is missing")
	}
	_, err := parseUserID(u.raw)
	return err
}

// parseUserID returns the id whose JSON form is b: a string or an integer.
func parseUserID(b []byte) (UserID, error) {
	b = trimJSONSpace(b)
	switch kind := jsonKind(b); kind {
	case "a string":
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return UserID{}, fmt.Errorf("user_id is not a valid JSON string: %w", err)
		}
		if err := checkUserID(s); err != nil {
			return UserID{}, err
		}
	case "a number":
		// Digits only, as strconv reads them: 1.0 and 1e3 are integers
		// to JSON but would become keys that differ from 1 and 1000.
		if _, err := strconv.ParseInt(string(b), 10, 64); err != nil {
			return UserID{}, fmt.Errorf("user_id %s is a number but not a 64-bit integer written in digits", truncate(b, 32))
		}
	default:
		return UserID{}, fmt.Errorf("user_id is %s, neither a string nor an integer", kind)
	}
	return UserID{raw: append(json.RawMessage(nil), b...)}, nil
}

// checkUserID applies the content rules to a string user_id.
func checkUserID(s string) error {
	switch {
	case s == "":
		return errors.New("user_id is an empty string")
	case len(s) > MaxUserIDLen:
		return fmt.Errorf("user_id is %d bytes long; the limit is %d", len(s), MaxUserIDLen)
	case strings.TrimSpace(s) == "":
		return fmt.Errorf("user_id %q is blank", s)
	}
	if r, at, ok := controlChar(s); ok {
		return fmt.Errorf("user_id %q contains control character %U at byte %d", s, r, at)
	}
	if strings.TrimSpace(s) != s {
		return fmt.Errorf("user_id %q starts or ends with whitespace", s)
	}
	return nil
}

// UserRegistered is published by the User Service when a user signs up.
type UserRegistered struct {
	// UserID identifies the new user.
	UserID UserID `json:"user_id"`
	// Email is the address the welcome notification goes to.
	Email string `json:"email"`
}

// InvalidError says why an event could not be decoded or is not valid.
// Retrying cannot fix it.
type InvalidError struct {
	// Event names the event type, such as "user-registered".
	Event string
	// Reason says what is wrong. It never holds an email address, because
	// it ends up in poison records and logs; it may hold a user id.
	Reason string
}

func (e *InvalidError) Error() string {
	return "invalid " + e.Event + " event: " + e.Reason
}

// DecodeUserRegistered decodes and validates a user-registered event: one
// JSON object of at most MaxPayloadLen bytes, with nothing after it, whose
// user_id and email keys are spelt exactly so and appear once each. Other
// keys are allowed, so producers can add fields without breaking the
// router. Every error is an *InvalidError.
func DecodeUserRegistered(payload []byte) (UserRegistered, error) {
	const name = "user-registered"
	invalid := func(err error) (UserRegistered, error) {
		return UserRegistered{}, &InvalidError{Event: name, Reason: err.Error()}
	}
	fields, err := decodeFields(payload, "user_id", "email")
	if err != nil {
		return invalid(err)
	}
	var ev UserRegistered
	if raw, ok := fields["user_id"]; ok {
		if ev.UserID, err = parseUserID(raw); err != nil {
			return invalid(err)
		}
	}
	if raw, ok := fields["email"]; ok {
		if kind := jsonKind(raw); kind != "a string" {
			return invalid(fmt.Errorf("email is %s, not a string", kind))
		}
		if err := json.Unmarshal(raw, &ev.Email); err != nil {
			return invalid(fmt.Errorf("email is not a valid JSON string: %w", err))
		}
	} else {
		// Validate cannot tell a missing email from an empty one.
		return invalid(errors.New("email is missing"))
	}
	if err := ev.Validate(); err != nil {
		return invalid(err)
	}
	return ev, nil
}

// Validate checks that the event names a user and a usable address.
func (e UserRegistered) Validate() error {
	if err := e.UserID.Validate(); err != nil {
		return err
	}
	return checkEmail(e.Email)
}

// checkEmail applies the rules to an address. Its errors never quote the
// address: they end up in poison records and logs.
func checkEmail(s string) error {
	switch {
	case s == "":
		return errors.New("email is an empty string")
	case len(s) > MaxEmailLen:
		return fmt.Errorf("email is %d bytes long; the limit is %d", len(s), MaxEmailLen)
	}
	if r, at, ok := controlChar(s); ok {
		return fmt.Errorf("email contains control character %U at byte %d", r, at)
	}
	addr, err := mail.ParseAddress(s)
	if err != nil {
		return errors.New("email is not an address")
	}
	if addr.Address != s {
		return errors.New("email is not a bare address such as user@example.com")
	}
	return nil
}

// controlChar returns the first character of s that has no place in an id
// or an address: a control character (C0, DEL, C1), an invisible format
// character (Unicode category Cf: zero-width characters, bidirectional
// overrides, the byte order mark) or a line or paragraph separator. Such
// characters make two ids that print alike differ, and break log lines.
func controlChar(s string) (rune, int, bool) {
	for i, r := range s {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == '\u2028' || r == '\u2029' {
			return r, i, true
		}
	}
	return 0, 0, false
}

// NotificationSent is published after a notification went out.
type NotificationSent struct {
	// UserID is the user_id of the event that caused it, as it arrived.
	UserID UserID `json:"user_id"`
	// Email is where the notification went.
	Email string `json:"email"`
	// Channel is how it went, such as "log" or "email".
	Channel string `json:"channel"`
	// Template names the notification's content.
	Template string `json:"template"`
	// SentAt is when it was handed to the channel.
	SentAt time.Time `json:"sent_at"`
	// SourceEventID identifies the event that caused it.
	SourceEventID string `json:"source_event_id"`
}

// Encode returns the event's JSON form.
func (e NotificationSent) Encode() ([]byte, error) {
	return json.Marshal(e)
}

// decodeFields checks that payload is exactly one JSON object of at most
// MaxPayloadLen bytes and returns the values of its known keys. encoding/json
// alone would match keys case-insensitively, keep the last of duplicate
// keys and ignore a stray '}' or ']' after the object; producers and
// consumers that read the event differently must not be able to disagree on
// which user it names.
func decodeFields(payload []byte, known ...string) (map[string]json.RawMessage, error) {
	if len(payload) > MaxPayloadLen {
		return nil, fmt.Errorf("value is %d bytes long; the limit is %d", len(payload), MaxPayloadLen)
	}
	body := trimJSONSpace(payload)
	switch {
	case len(body) == 0:
		return nil, errors.New("empty value")
	case !utf8.Valid(body):
		return nil, errors.New("value is not UTF-8 text")
	case body[0] != '{' && json.Valid(body):
		return nil, fmt.Errorf("value is %s, not a JSON object", jsonKind(body))
	case body[0] != '{':
		r, _ := utf8.DecodeRune(body)
		return nil, fmt.Errorf("value is not a JSON object: it starts with %q", r)
	}
	members, err := decodeMembers(body)
	if err != nil {
		return nil, err
	}
	fields := make(map[string]json.RawMessage, len(known))
	for _, m := range members {
		for _, k := range known {
			switch {
			case m.key == k:
				if _, dup := fields[k]; dup {
					return nil, fmt.Errorf("key %q appears more than once", k)
				}
				fields[k] = m.value
			case strings.EqualFold(m.key, k):
				return nil, fmt.Errorf("key %q differs from %q only by case; keys are case-sensitive", m.key, k)
			}
		}
	}
	return fields, nil
}

// member is one key and value of a JSON object.
type member struct {
	key   string
	value json.RawMessage
}

// decodeMembers returns the members of body, a JSON object without
// surrounding whitespace, in order.
func decodeMembers(body []byte) ([]member, error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if _, err := dec.Token(); err != nil {
		return nil, syntaxError(err)
	}
	var members []member
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, syntaxError(err)
		}
		key, _ := tok.(string) // the decoder accepts only strings as keys
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, syntaxError(err)
		}
		members = append(members, member{key: key, value: trimJSONSpace(value)})
	}
	if _, err := dec.Token(); err != nil {
		return nil, syntaxError(err)
	}
	if end := dec.InputOffset(); end != int64(len(body)) {
		return nil, fmt.Errorf("value has more data after the JSON object, from byte %d", end)
	}
	return members, nil
}

// syntaxError says why the decoder stopped.
func syntaxError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.New("value is not valid JSON: it ends before the object is closed")
	}
	return fmt.Errorf("value is not valid JSON: %w", err)
}

// jsonKind names the kind of the JSON value b, judged by its first byte.
func jsonKind(b []byte) string {
	if len(b) == 0 {
		return "empty"
	}
	switch b[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case '"':
		return "a string"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}

// trimJSONSpace removes the whitespace JSON allows around a value, and no
// other.
func trimJSONSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
