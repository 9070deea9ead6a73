package consume_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/kafka/consume"
)

var t0 = time.Date(2026, 11, 25, 0, 0, 0, 0, time.UTC)

type rec struct {
	offset int64
	key    []byte
}

func k(s string) []byte { return []byte(s) }

func TestWindowStartsByOrdering(t *testing.T) {
	records := []rec{{10, k("a")}, {11, k("b")}, {12, k("a")}, {13, nil}, {14, nil}, {15, k("")}}
	tests := []struct {
		ordering consume.Ordering
		want     []bool // start at Add, per record
	}{
		// Same key waits; no key waits for no key; an empty key is a key.
		{consume.ByKey, []bool{true, true, false, true, false, true}},
		{consume.ByPartition, []bool{true, false, false, false, false, false}},
		{consume.Unordered, []bool{true, true, true, true, true, true}},
	}
	for _, tt := range tests {
		t.Run(tt.ordering.String(), func(t *testing.T) {
			w := consume.NewWindow(tt.ordering, 10)
			var got []bool
			for _, r := range records {
				start, err := w.Add(r.offset, r.key, t0)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, start)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("starts = %v; want %v", got, tt.want)
			}
		})
	}
}

func TestWindowCommitsOnlyBelowUnfinished(t *testing.T) {
	w := consume.NewWindow(consume.ByKey, 100)
	for _, r := range []rec{{100, k("a")}, {101, k("b")}, {103, k("a")}, {104, k("c")}} { // 102 is a gap
		if _, err := w.Add(r.offset, r.key, t0.Add(time.Duration(r.offset)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		offset     int64
		key        []byte
		next, want int64
	}{
		{101, k("b"), -1, 100}, // 100 still runs
		{104, k("c"), -1, 100},
		{100, k("a"), 103, 103}, // a's next starts; the gap at 102 is passed
		{103, k("a"), -1, 105},
	}
	for _, s := range steps {
		next, commit, err := w.Finish(s.offset, s.key)
		if err != nil || next != s.next || commit != s.want {
			t.Errorf("Finish(%d) = next %d, commit %d, %v; want next %d, commit %d", s.offset, next, commit, err, s.next, s.want)
		}
	}
	if w.InFlight() != 0 || w.Span() != 0 {
		t.Errorf("in flight %d, span %d; want 0 and 0", w.InFlight(), w.Span())
	}
	if _, ok := w.Oldest(); ok {
		t.Error("Oldest reports a record; want none")
	}
}

func TestWindowRefusesMisuse(t *testing.T) {
	w := consume.NewWindow(consume.ByKey, 5)
	if _, err := w.Add(4, nil, t0); err == nil {
		t.Error("Add below the window's start = nil error; want one")
	}
	_, _ = w.Add(5, k("a"), t0)
	_, _ = w.Add(6, k("a"), t0)
	if _, _, err := w.Finish(6, k("a")); err == nil {
		t.Error("Finish of a record waiting behind its key = nil error; want one")
	}
	if _, _, err := w.Finish(9, k("a")); err == nil {
		t.Error("Finish of an offset never added = nil error; want one")
	}
	if _, _, err := w.Finish(5, k("a")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := w.Finish(5, k("a")); err == nil {
		t.Error("second Finish of one offset = nil error; want one")
	}
}

func TestWindowOldest(t *testing.T) {
	w := consume.NewWindow(consume.Unordered, 0)
	_, _ = w.Add(0, nil, t0)
	_, _ = w.Add(1, nil, t0.Add(time.Second))
	_, _, _ = w.Finish(0, nil)
	if got, ok := w.Oldest(); !ok || !got.Equal(t0.Add(time.Second)) {
		t.Errorf("Oldest = %s, %v; want %s", got, ok, t0.Add(time.Second))
	}
}

// TestWindowModel drives windows with random keys, gaps and completion
// orders, as a consumer with many handlers would, and checks the promises
// against a simple model: a key's records run one at a time in offset
// order, nothing starts twice or never, and the commit offset never passes
// an unfinished record.
func TestWindowModel(t *testing.T) {
	for _, ordering := range []consume.Ordering{consume.ByKey, consume.ByPartition, consume.Unordered} {
		for seed := uint64(0); seed < 200; seed++ {
			rng := rand.New(rand.NewPCG(seed, 1))
			w := consume.NewWindow(ordering, 0)
			keyOf := map[int64][]byte{}
			var running []int64 // started, not finished
			unfinished := map[int64]bool{}
			lastStarted := map[string]int64{}
			start := func(off int64) {
				running = append(running, off)
				if ordering != consume.Unordered {
					qk := string(keyOf[off]) + fmt.Sprint(keyOf[off] == nil)
					if ordering == consume.ByPartition {
						qk = ""
					}
					if prev, ok := lastStarted[qk]; ok && (prev >= off || unfinished[prev]) {
						t.Fatalf("%s seed %d: offset %d started while %d of its order ran or came later", ordering, seed, off, prev)
					}
					lastStarted[qk] = off
				}
			}
			var off int64
			for step := 0; step < 300; step++ {
				if rng.IntN(3) > 0 || len(running) == 0 {
					off += 1 + int64(rng.IntN(2)) // gaps now and then
					var key []byte
					if n := rng.IntN(6); n > 0 {
						key = k(fmt.Sprint(n))
					}
					keyOf[off] = key
					unfinished[off] = true
					ok, err := w.Add(off, key, t0)
					if err != nil {
						t.Fatal(err)
					}
					if ok {
						start(off)
					}
					continue
				}
				i := rng.IntN(len(running))
				done := running[i]
				running = slices.Delete(running, i, i+1)
				delete(unfinished, done)
				next, commit, err := w.Finish(done, keyOf[done])
				if err != nil {
					t.Fatalf("%s seed %d: %v", ordering, seed, err)
				}
				if next >= 0 {
					start(next)
				}
				for u := range unfinished {
					if commit > u {
						t.Fatalf("%s seed %d: commit %d passes unfinished %d", ordering, seed, commit, u)
					}
				}
				if w.InFlight() != len(unfinished) {
					t.Fatalf("%s seed %d: InFlight = %d; want %d", ordering, seed, w.InFlight(), len(unfinished))
				}
			}
			// Drain: everything started eventually, and the commit reaches
			// the end.
			for len(running) > 0 {
				done := running[0]
				running = running[1:]
				delete(unfinished, done)
				next, _, err := w.Finish(done, keyOf[done])
				if err != nil {
					t.Fatalf("%s seed %d: %v", ordering, seed, err)
				}
				if next >= 0 {
					start(next)
				}
			}
			if len(unfinished) != 0 {
				t.Fatalf("%s seed %d: %d records never started", ordering, seed, len(unfinished))
			}
			if got := w.Commit(); got != off+1 {
				t.Fatalf("%s seed %d: final commit %d; want %d", ordering, seed, got, off+1)
			}
		}
	}
}

func TestParseOrdering(t *testing.T) {
	for _, o := range []consume.Ordering{consume.ByKey, consume.ByPartition, consume.Unordered} {
		if got, err := consume.ParseOrdering(o.String()); err != nil || got != o {
			t.Errorf("ParseOrdering(%q) = %v, %v; want %v", o.String(), got, err, o)
		}
	}
	if _, err := consume.ParseOrdering("Key"); err == nil {
		t.Error(`ParseOrdering("Key") = nil error; want one`)
	}
}
