package ledger

import (
	"errors"
	"slices"
	"strconv"
	"strings"
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
	// Sources, when set, selects only entries caused by a record in one
	// of these ranges (their EventID is topic/partition/offset): the
	// records a rewind hands out again.
	Sources []SourceRange
}

// SourceRange is the records of one partition from From up to, not
// including, To.
type SourceRange struct {
	Topic     string
	Partition int32
	From, To  int64
}

// inSources reports whether eventID, topic/partition/offset, is a record
// of one of the ranges.
func inSources(ranges []SourceRange, eventID string) bool {
	topic, rest, ok := strings.Cut(eventID, "/")
	if !ok {
		return false
	}
	p, o, ok := strings.Cut(rest, "/")
	if !ok {
		return false
	}
	partition, err1 := strconv.ParseInt(p, 10, 32)
	offset, err2 := strconv.ParseInt(o, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	for _, r := range ranges {
		if r.Topic == topic && int64(r.Partition) == partition && offset >= r.From && offset < r.To {
			return true
		}
	}
	return false
}

func (f Filter) matches(key, eventID string, sentAt time.Time) bool {
	if len(f.Sources) > 0 && !inSources(f.Sources, eventID) {
		return false
	}
	if len(key) < len(f.Prefix) || key[:len(f.Prefix)] != f.Prefix {
		return false
	}
	if len(f.Keys) > 0 && !slices.Contains(f.Keys, key) {
		return false
	}
	return !sentAt.Before(f.Since) && (f.Until.IsZero() || sentAt.Before(f.Until))
}

// check refuses a filter that selects every entry: forgetting the whole
// ledger would resend every notification on the next delivery.
func (f Filter) check() error {
	if f.Prefix == "" && len(f.Keys) == 0 && len(f.Sources) == 0 && f.Since.IsZero() && f.Until.IsZero() {
		return errors.New("ledger forget: refusing a filter that selects every entry")
	}
	return nil
}

// Forgotten is an entry Forget removed, or would remove.
type Forgotten struct {
	Key    string
	SentAt time.Time
}
