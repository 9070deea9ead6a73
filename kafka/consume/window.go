// Package consume decides how a partition's records may be handled
// concurrently: which records may be in flight at once under an ordering
// mode, and which offset may be committed so that a commit never passes a
// record still in flight. It is the bookkeeping of a consumer that hands
// records out without waiting for earlier acks, as Confluent's Parallel
// Consumer does; it does no I/O.
package consume

import (
	"fmt"
	"time"
)

// Ordering says which records of one partition may be in flight together.
type Ordering int

const (
	// ByKey lets records run concurrently unless they share a key: a
	// record waits while an earlier record with the same key is not
	// finished. Records without a key are ordered among themselves.
	ByKey Ordering = iota
	// ByPartition runs one record of the partition at a time.
	ByPartition
	// Unordered runs any record at once; only the in-flight bound, kept by
	// the caller, holds them back.
	Unordered
)

// ParseOrdering returns the Ordering named s: "key", "partition" or
// "unordered".
func ParseOrdering(s string) (Ordering, error) {
	switch s {
	case "key":
		return ByKey, nil
	case "partition":
		return ByPartition, nil
	case "unordered":
		return Unordered, nil
	}
	return 0, fmt.Errorf("ordering %q: want key, partition or unordered", s)
}

func (o Ordering) String() string {
	switch o {
	case ByKey:
		return "key"
	case ByPartition:
		return "partition"
	case Unordered:
		return "unordered"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}

// Window is the bookkeeping of one partition: the records added and not
// yet finished, in offset order. Records are added in offset order (gaps
// allowed, as compaction and transaction markers leave them). It is not
// safe for concurrent use; its owner serialises calls.
type Window struct {
	ordering Ordering
	// order holds the offsets added and not yet committed, ascending:
	// unfinished ones and finished ones behind an unfinished one.
	order []int64
	// added says when each offset in order was added; finished ones are
	// marked done.
	added map[int64]time.Time
	done  map[int64]bool
	// queues holds, per ordering key, the unfinished offsets in order;
	// the first is the one that may run.
	queues map[string][]int64
	// next is the offset after the last one added.
	next     int64
	inFlight int
}

// NewWindow returns the window of a partition whose next record is at
// offset next (the committed offset it resumes from).
func NewWindow(ordering Ordering, next int64) *Window {
	return &Window{
		ordering: ordering,
		added:    map[int64]time.Time{},
		done:     map[int64]bool{},
		queues:   map[string][]int64{},
		next:     next,
	}
}

// queueKey is the key a record is ordered by: its Kafka key in ByKey mode,
// one key for every record without a key, and one key for the whole
// partition in ByPartition mode. The first byte keeps a key apart from
// "no key".
func (w *Window) queueKey(key []byte) (string, bool) {
	switch w.ordering {
	case Unordered:
		return "", false
	case ByPartition:
		return "p", true
	}
	if key == nil {
		return "n", true
	}
	return "k" + string(key), true
}

// Add records the record at offset with key, at time now, and reports
// whether it may start at once; if not, Finish of the record before it in
// its order returns it. Offsets must grow from call to call.
func (w *Window) Add(offset int64, key []byte, now time.Time) (start bool, err error) {
	if offset < w.next {
		return false, fmt.Errorf("offset %d added after %d", offset, w.next-1)
	}
	w.order = append(w.order, offset)
	w.added[offset] = now
	w.next = offset + 1
	w.inFlight++
	qk, ordered := w.queueKey(key)
	if !ordered {
		return true, nil
	}
	w.queues[qk] = append(w.queues[qk], offset)
	return len(w.queues[qk]) == 1, nil
}

// Finish records that the record at offset, which had started, finished
// (acked, or poisoned). It returns the record that may start now in its
// place, if any (next >= 0), and the offset to commit: every record below
// it is finished.
func (w *Window) Finish(offset int64, key []byte) (next int64, commit int64, err error) {
	if _, ok := w.added[offset]; !ok || w.done[offset] {
		return -1, w.Commit(), fmt.Errorf("offset %d is not in flight", offset)
	}
	next = -1
	if qk, ordered := w.queueKey(key); ordered {
		q := w.queues[qk]
		if len(q) == 0 || q[0] != offset {
			return -1, w.Commit(), fmt.Errorf("offset %d finished before the records ahead of it in its order", offset)
		}
		q = q[1:]
		if len(q) == 0 {
			delete(w.queues, qk)
		} else {
			w.queues[qk] = q
			next = q[0]
		}
	}
	w.done[offset] = true
	w.inFlight--
	for len(w.order) > 0 && w.done[w.order[0]] {
		delete(w.done, w.order[0])
		delete(w.added, w.order[0])
		w.order = w.order[1:]
	}
	return next, w.Commit(), nil
}

// Commit returns the offset to commit: the lowest unfinished record, or
// the one after the last added when all are finished.
func (w *Window) Commit() int64 {
	if len(w.order) > 0 {
		return w.order[0]
	}
	return w.next
}

// InFlight returns how many records were added and not finished, waiting
// for their key or running.
func (w *Window) InFlight() int { return w.inFlight }

// Span returns how many offsets lie between the commit offset and the last
// one added: the finished-but-uncommitted records a stuck record holds
// back, plus the unfinished ones. A consumer stops fetching when it grows
// too large.
func (w *Window) Span() int { return len(w.order) }

// Oldest returns when the oldest unfinished record was added, and false
// when none is unfinished: a record stuck there shows before the lag
// grows.
func (w *Window) Oldest() (time.Time, bool) {
	if len(w.order) == 0 {
		return time.Time{}, false
	}
	return w.added[w.order[0]], true
}
