package ledger

import (
	"slices"
	"time"
)

// Filter selects ledger entries to forget: those whose key starts with
// Prefix (one template's, such as "welcome/"), or, when Keys is set, only
// those keys, and whose side effect happened at or after Since and, when
// Until is set, before Until. Claims not yet recorded are never selected.
type Filter struct {
	Prefix string
	Keys   []string
	Since  time.Time
	Until  time.Time
}

func (f Filter) matches(key string, sentAt time.Time) bool {
	if len(key) < len(f.Prefix) || key[:len(f.Prefix)] != f.Prefix {
		return false
	}
	if len(f.Keys) > 0 && !slices.Contains(f.Keys, key) {
		return false
	}
	return !sentAt.Before(f.Since) && (f.Until.IsZero() || sentAt.Before(f.Until))
}

// Forgotten is an entry Forget removed, or would remove.
type Forgotten struct {
	Key    string
	SentAt time.Time
}
