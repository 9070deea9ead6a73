package events_test

import (
	"testing"

	"github.com/eventrouter/eventrouter/events"
)

func TestMaskEmails(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"email": "a.b+c@example.com"}`, `{"email": "<email>"}`},
		{"550 rejected <x@y.org>, then z@w.io", "550 rejected <<email>>, then <email>"},
		{"no address @ here", "no address @ here"},
	}
	for _, tt := range tests {
		if got := events.MaskEmails(tt.in); got != tt.want {
			t.Errorf("MaskEmails(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
