// Package events holds the typed events eventrouter consumes and produces,
// with their decoding and validation.
package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/mail"
	"strconv"
	"time"
	"unicode/utf8"
)

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

// UnmarshalJSON accepts a non-empty string or an integer.
func (u *UserID) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*u = UserID{}
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		if s == "" {
			*u = UserID{}
			return nil
		}
	default:
		if _, err := strconv.ParseInt(string(b), 10, 64); err != nil {
			return fmt.Errorf("user_id %s is neither a string nor an integer", b)
		}
	}
	u.raw = append(json.RawMessage(nil), b...)
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
	// Reason says what is wrong.
	Reason string
}

func (e *InvalidError) Error() string {
	return "invalid " + e.Event + " event: " + e.Reason
}

// DecodeUserRegistered decodes and validates a user-registered event.
// Unknown fields are allowed, so producers can add fields without
// breaking the router.
func DecodeUserRegistered(payload []byte) (UserRegistered, error) {
	const name = "user-registered"
	var ev UserRegistered
	if err := decodeObject(payload, &ev); err != nil {
		return UserRegistered{}, &InvalidError{Event: name, Reason: err.Error()}
	}
	if err := ev.Validate(); err != nil {
		return UserRegistered{}, &InvalidError{Event: name, Reason: err.Error()}
	}
	return ev, nil
}

// Validate checks that the event names a user and a usable address.
func (e UserRegistered) Validate() error {
	if e.UserID.IsZero() {
		return errors.New("user_id is missing")
	}
	if e.Email == "" {
		return errors.New("email is missing")
	}
	addr, err := mail.ParseAddress(e.Email)
	if err != nil || addr.Address != e.Email {
		return fmt.Errorf("email %q is not an address", e.Email)
	}
	return nil
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

// decodeObject decodes payload, which must be one JSON object, into v.
func decodeObject(payload []byte, v any) error {
	trimmed := bytes.TrimSpace(payload)
	switch {
	case len(trimmed) == 0:
		return errors.New("empty value")
	case !utf8.Valid(trimmed):
		return errors.New("value is not UTF-8 text")
	case trimmed[0] != '{':
		return fmt.Errorf("value is not a JSON object (starts with %q)", truncate(trimmed, 16))
	}
	dec := json.NewDecoder(bytes.NewReader(trimmed))
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("value is not valid JSON: %w", err)
	}
	if dec.More() {
		return errors.New("value holds more than one JSON value")
	}
	return nil
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
