// Package ledger records side effects that must happen once per cause,
// such as a welcome email per user, in an embedded durable store (bbolt).
//
// What it guarantees: whoever does a side effect first claims its key
// (Claim), so two handlers in one process never both do it; the entry is
// written, and fsynced, right after the side effect succeeded, before the
// message is acked. A crash after the side effect and before that write (a
// window of one local disk write) can repeat the side effect once; every
// other redelivery finds the entry and skips it. An entry whose write
// failed is kept in memory, so that a retry in the same process does not
// repeat the side effect; it is written with the next successful write of
// any key, or at Close.
//
// Writes are group-committed: Records that arrive while a transaction is
// being written share the next one, and its fsync; each returns once its
// own entry is on disk.
//
// The mark that the announcing event was published is cheaper: it is kept
// in memory and written with the next entry, or at Close, so each side
// effect costs one fsync, not two. A crash can lose the last marks; a
// repeated event then publishes its announcement again, with the same
// identity, which consumers drop.
package ledger

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	bolt "go.etcd.io/bbolt"
)

var bucket = []byte("effects")

// Entry says that a side effect happened, and what caused it.
type Entry struct {
	// EventID identifies the event that caused the side effect.
	EventID string `json:"event_id"`
	// Channel is how the side effect was carried out, such as "email".
	Channel string `json:"channel"`
	// Address is where it went, such as the email address, so that the
	// event announcing it names the address actually used.
	Address string `json:"address,omitempty"`
	// SentAt is when it succeeded.
	SentAt time.Time `json:"sent_at"`
	// Published says that the event announcing it was published.
	Published bool `json:"published"`
	// Unsaved says that the side effect happened but its entry is not on
	// disk yet: Record failed. Such an entry lives in memory only.
	Unsaved bool `json:"-"`
}

// MaxKeyLen bounds a key. bbolt refuses keys over 32 KiB, and a failure to
// record after the side effect is what the ledger exists to avoid, so keys
// are checked before it.
const MaxKeyLen = 1024

// KeyError says that a key cannot be stored. Nothing was claimed.
type KeyError struct {
	Key string
}

func (e *KeyError) Error() string {
	switch {
	case e.Key == "":
		return "ledger key is empty"
	case len(e.Key) > MaxKeyLen:
		return fmt.Sprintf("ledger key of %d bytes is longer than the limit of %d", len(e.Key), MaxKeyLen)
	}
	return "ledger key is not UTF-8 text without NUL characters"
}

// checkKey refuses the keys bbolt or PostgreSQL would refuse (PostgreSQL
// text holds no NUL and only valid UTF-8): a write that cannot succeed
// must fail before the side effect, not after it.
func checkKey(key string) error {
	if key == "" || len(key) > MaxKeyLen || !utf8.ValidString(key) || strings.IndexByte(key, 0) >= 0 {
		return &KeyError{Key: key}
	}
	return nil
}

// Ledger is an open ledger file. It is safe for concurrent use.
type Ledger struct {
	db *bolt.DB

	mu sync.Mutex
	// published holds marks not yet written.
	published map[string]bool
	// unsaved holds entries whose Record failed, by key.
	unsaved map[string]Entry
	// locks holds the claimed keys.
	locks keyLocks

	// Group commit (see commit): cmu guards the flush counts, and commits
	// waits on it for a flush to finish.
	cmu      sync.Mutex
	commits  *sync.Cond
	started  uint64
	finished uint64
	lastErr  error
}

// maxPendingMarks bounds the marks kept in memory before they are written
// on their own.
const maxPendingMarks = 1024

// Open opens or creates the ledger at path. Only one process can hold it;
// a second fails after a second instead of waiting.
func Open(path string) (*Ledger, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, fmt.Errorf("create ledger directory: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{
		Timeout: time.Second,
		// As etcd runs bbolt: the free list is rebuilt when the file is
		// opened instead of written with every commit, which makes each
		// commit (and its fsync) smaller; the hash-map free list keeps
		// allocation cheap as the file grows.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		// Address space only: growing the map makes every transaction
		// wait, and a large initial map spares the first doublings.
		InitialMmapSize: 64 << 20,
	})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("open ledger %s: another process holds it (each instance needs its own ledger.path)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open ledger %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucket)
		return err
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("init ledger %s: %w", path, err)
	}
	l := &Ledger{db: db, published: map[string]bool{}, unsaved: map[string]Entry{}}
	l.commits = sync.NewCond(&l.cmu)
	return l, nil
}

// Close writes pending entries and marks, and closes the file.
func (l *Ledger) Close() error {
	err := l.db.Update(l.flush)
	if cerr := l.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Claim takes key for the caller until release is called, and returns the
// entry recorded under key, if there is one. A second Claim of the same key
// waits until the first is released, or ctx is done. A key longer than
// MaxKeyLen is a *KeyError.
func (l *Ledger) Claim(ctx context.Context, key string) (e Entry, found bool, release func(), err error) {
	if err := checkKey(key); err != nil {
		return Entry{}, false, nil, err
	}
	release, err = l.locks.lock(ctx, key)
	if err != nil {
		return Entry{}, false, nil, err
	}
	e, found, err = l.Lookup(key)
	if err != nil {
		release()
		return Entry{}, false, nil, err
	}
	return e, found, release, nil
}

// Lookup returns the entry for key, if there is one.
func (l *Ledger) Lookup(key string) (Entry, bool, error) {
	l.mu.Lock()
	if e, ok := l.unsaved[key]; ok {
		l.mu.Unlock()
		return e, true, nil
	}
	l.mu.Unlock()
	var e Entry
	var found bool
	err := l.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucket).Get([]byte(key))
		if raw == nil {
			return nil
		}
		found = true
		return json.Unmarshal(raw, &e)
	})
	if err != nil {
		return Entry{}, false, fmt.Errorf("ledger lookup %s: %w", key, err)
	}
	if found && !e.Published {
		l.mu.Lock()
		e.Published = l.published[key]
		l.mu.Unlock()
	}
	return e, found, nil
}

// Record stores e under key. ctx is not used: a side effect that happened
// is recorded even when its message is being cancelled. When the write fails, e is kept in memory
// (Unsaved) so that Lookup and Claim still find it, and the error says so.
func (l *Ledger) Record(_ context.Context, key string, e Entry) error {
	if err := checkKey(key); err != nil {
		return err
	}
	// An entry that cannot be encoded would fail every later write.
	if _, err := json.Marshal(e); err != nil {
		return fmt.Errorf("encode ledger entry %s: %w", key, err)
	}
	// In memory first: if the write fails, the entry stays there, found
	// by Lookup, and is written by the next successful write or Close.
	e.Unsaved = true
	l.mu.Lock()
	l.unsaved[key] = e
	l.mu.Unlock()
	err := l.commit()
	l.mu.Lock()
	pending := l.unsaved[key] == e
	l.mu.Unlock()
	if !pending {
		// Written, by this flush or another's.
		return nil
	}
	if err == nil {
		err = errors.New("not written")
	}
	return fmt.Errorf("ledger record %s: %w", key, err)
}

// commit returns once a flush that started after the call has finished,
// and that flush's error. It runs the flush itself when none is under way;
// otherwise it waits for the running one and then takes the next. A flush
// writes every pending entry, so Records that arrive while one is under
// way share the next transaction and its fsync (group commit), and each
// still returns only once its entry is on disk.
func (l *Ledger) commit() error {
	l.cmu.Lock()
	defer l.cmu.Unlock()
	ticket := l.started + 1
	for l.finished < ticket {
		if l.started == l.finished {
			l.started++
			l.cmu.Unlock()
			err := l.db.Update(l.flush)
			l.cmu.Lock()
			l.finished++
			l.lastErr = err
			l.commits.Broadcast()
			continue
		}
		l.commits.Wait()
	}
	return l.lastErr
}

// flush writes in tx every entry whose write is pending, then the pending
// published marks; they leave memory only once tx commits.
func (l *Ledger) flush(tx *bolt.Tx) error {
	l.mu.Lock()
	entries := maps.Clone(l.unsaved)
	l.mu.Unlock()
	b := tx.Bucket(bucket)
	for key, e := range entries {
		e.Unsaved = false
		raw, err := json.Marshal(e)
		if err != nil {
			return fmt.Errorf("encode ledger entry %s: %w", key, err)
		}
		if err := b.Put([]byte(key), raw); err != nil {
			return err
		}
	}
	tx.OnCommit(func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		for key, e := range entries {
			if l.unsaved[key] == e {
				delete(l.unsaved, key)
			}
		}
	})
	return l.flushMarks(tx)
}

// MarkPublished notes that the event announcing key's side effect was
// published. The mark is written with the next Record, or at Close.
func (l *Ledger) MarkPublished(key string) error {
	l.mu.Lock()
	l.published[key] = true
	full := len(l.published) >= maxPendingMarks
	l.mu.Unlock()
	if !full {
		return nil
	}
	if err := l.db.Update(l.flush); err != nil {
		return fmt.Errorf("ledger mark published: %w", err)
	}
	return nil
}

// flushMarks writes the pending marks in tx; they leave memory only once
// tx commits, which bbolt's Update does before it returns.
func (l *Ledger) flushMarks(tx *bolt.Tx) error {
	l.mu.Lock()
	keys := make([]string, 0, len(l.published))
	for k := range l.published {
		keys = append(keys, k)
	}
	l.mu.Unlock()
	b := tx.Bucket(bucket)
	for _, key := range keys {
		raw := b.Get([]byte(key))
		if raw == nil {
			continue
		}
		var e Entry
		if err := json.Unmarshal(raw, &e); err != nil || e.Published {
			// An entry that does not decode keeps its bytes: one bad entry
			// must not make every later write fail.
			continue
		}
		e.Published = true
		updated, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(key), updated); err != nil {
			return err
		}
	}
	tx.OnCommit(func() {
		l.mu.Lock()
		for _, k := range keys {
			delete(l.published, k)
		}
		l.mu.Unlock()
	})
	return nil
}

// Forget removes the entries f selects, so that the next delivery of
// their events does the side effect again, and returns them, oldest first;
// with dryRun it removes nothing. Only a process that holds the file can
// forget: stop the daemon first.
func (l *Ledger) Forget(_ context.Context, f Filter, dryRun bool) ([]Forgotten, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	var out []Forgotten
	update := l.db.Update
	if dryRun {
		update = l.db.View
	}
	err := update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		c := b.Cursor()
		var keys [][]byte
		for k, v := c.Seek([]byte(f.Prefix)); k != nil && strings.HasPrefix(string(k), f.Prefix); k, v = c.Next() {
			var e Entry
			if json.Unmarshal(v, &e) != nil || !f.matches(string(k), e.EventID, e.SentAt) {
				continue
			}
			out = append(out, Forgotten{Key: string(k), SentAt: e.SentAt})
			keys = append(keys, append([]byte(nil), k...))
		}
		if dryRun {
			return nil
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("ledger forget: %w", err)
	}
	slices.SortFunc(out, func(a, b Forgotten) int { return a.SentAt.Compare(b.SentAt) })
	return out, nil
}

type keyContextKey struct{}

// WithKey returns a context that carries the ledger key of the side effect
// a produced message announces, so that whoever publishes the message can
// mark the entry published.
func WithKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, keyContextKey{}, key)
}

// KeyFrom returns the ledger key WithKey put in ctx.
func KeyFrom(ctx context.Context) (string, bool) {
	key, ok := ctx.Value(keyContextKey{}).(string)
	return key, ok
}
