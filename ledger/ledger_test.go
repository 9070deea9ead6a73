package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

// store is what the handlers and the router use of a ledger; every
// implementation passes the same contract tests.
type store interface {
	Claim(ctx context.Context, key string) (ledger.Entry, bool, func(), error)
	Record(ctx context.Context, key string, e ledger.Entry) error
	MarkPublished(key string) error
	Forget(ctx context.Context, f ledger.Filter, dryRun bool) ([]ledger.Forgotten, error)
	Close() error
}

// kind opens one implementation: open returns a ledger, and reopen one on
// the same storage, as a restarted process does.
type kind struct {
	name string
	// storage returns a fresh storage for a test, and an opener of it.
	storage func(t *testing.T) func(t *testing.T) store
}

func kinds() []kind {
	return []kind{
		{"bbolt", func(t *testing.T) func(t *testing.T) store {
			path := filepath.Join(t.TempDir(), "sub", "ledger.db")
			return func(t *testing.T) store {
				l, err := ledger.Open(path)
				if err != nil {
					t.Fatalf("Open = %v", err)
				}
				return l
			}
		}},
		{"postgres", func(t *testing.T) func(t *testing.T) store {
			dsn := pgtest.DSN(t)
			return func(t *testing.T) store { return openPostgres(t, dsn, time.Minute) }
		}},
	}
}

func openPostgres(t *testing.T, dsn string, lease time.Duration) *ledger.Postgres {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := ledger.OpenPostgres(ctx, ledger.PostgresConfig{DSN: dsn, MaxConns: 4, StatementTimeout: 5 * time.Second, Lease: lease})
	if err != nil {
		t.Fatalf("OpenPostgres = %v", err)
	}
	return l
}

// each runs test against every implementation, on a ledger of its own
// that is closed when the test ends.
func each(t *testing.T, test func(t *testing.T, l store, reopen func(t *testing.T) store)) {
	for _, k := range kinds() {
		t.Run(k.name, func(t *testing.T) {
			open := k.storage(t)
			l := open(t)
			closed := false
			t.Cleanup(func() {
				if !closed {
					_ = l.Close()
				}
			})
			test(t, l, func(t *testing.T) store {
				if err := l.Close(); err != nil {
					t.Fatalf("Close = %v", err)
				}
				closed = true
				l2 := open(t)
				t.Cleanup(func() { _ = l2.Close() })
				return l2
			})
		})
	}
}

func TestLedgerSurvivesReopen(t *testing.T) {
	each(t, func(t *testing.T, l store, reopen func(t *testing.T) store) {
		ctx := context.Background()
		_, found, release, err := l.Claim(ctx, "welcome/1")
		if err != nil || found {
			t.Fatalf("Claim = found %v, %v; want a new claim", found, err)
		}
		sentAt := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		if err := l.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email", Address: "a@example.com", SentAt: sentAt}); err != nil {
			t.Fatalf("Record = %v", err)
		}
		release()
		if err := l.MarkPublished("welcome/1"); err != nil {
			t.Fatalf("MarkPublished = %v", err)
		}
		e, _, release, _ := l.Claim(ctx, "welcome/1")
		release()
		if !e.Published {
			t.Error("Claim after MarkPublished: Published = false; want true before the mark is written")
		}
		if err := l.MarkPublished("welcome/absent"); err != nil {
			t.Fatalf("MarkPublished(absent) = %v; want nil", err)
		}

		l = reopen(t)
		got, found, release, err := l.Claim(ctx, "welcome/1")
		if err != nil {
			t.Fatal(err)
		}
		release()
		want := ledger.Entry{EventID: "t/0/1", Channel: "email", Address: "a@example.com", SentAt: sentAt, Published: true}
		if !found || got != want {
			t.Errorf("Claim(welcome/1) after reopen = %+v, %v; want %+v, true", got, found, want)
		}
		_, found, release, err = l.Claim(ctx, "welcome/absent")
		if err != nil || found {
			t.Errorf("Claim(welcome/absent) = found %v, %v; want a new claim (a mark makes no entry)", found, err)
		}
		release()
	})
}

// Forget removes exactly the entries of a template sent in a time range
// (or of named keys), and a dry run removes nothing; claims are not
// entries and stay.
func TestForgetIsNarrow(t *testing.T) {
	each(t, func(t *testing.T, l store, _ func(t *testing.T) store) {
		ctx := context.Background()
		t0 := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		for i, key := range []string{"welcome/1", "welcome/2", "welcome/3", "other/2"} {
			_, _, release, err := l.Claim(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if err := l.Record(ctx, key, ledger.Entry{EventID: fmt.Sprintf("t/0/%d", i+1), SentAt: t0.Add(time.Duration(i) * time.Hour)}); err != nil {
				t.Fatal(err)
			}
			release()
		}
		_, _, releaseClaim, err := l.Claim(ctx, "welcome/4")
		if err != nil {
			t.Fatal(err)
		}
		defer releaseClaim()
		keys := func(fs []ledger.Forgotten) string {
			var ks []string
			for _, f := range fs {
				ks = append(ks, f.Key)
			}
			return strings.Join(ks, ",")
		}
		tests := []struct {
			name string
			f    ledger.Filter
			want string
		}{
			{"since", ledger.Filter{Prefix: "welcome/", Since: t0.Add(time.Hour)}, "welcome/2,welcome/3"},
			{"range", ledger.Filter{Prefix: "welcome/", Since: t0, Until: t0.Add(2 * time.Hour)}, "welcome/1,welcome/2"},
			{"keys", ledger.Filter{Prefix: "welcome/", Keys: []string{"welcome/3", "other/2"}}, "welcome/3"},
			{"sources", ledger.Filter{Prefix: "welcome/", Sources: []ledger.SourceRange{{Topic: "t", Partition: 0, From: 2, To: 4}}}, "welcome/2,welcome/3"},
		}
		for _, tt := range tests {
			got, err := l.Forget(ctx, tt.f, true)
			if err != nil || keys(got) != tt.want {
				t.Errorf("Forget(%s, dry run) = %s, %v; want %s", tt.name, keys(got), err, tt.want)
			}
		}
		if _, err := l.Forget(ctx, ledger.Filter{}, true); err == nil {
			t.Error("Forget with an empty filter = nil; want a refusal")
		}
		got, err := l.Forget(ctx, tests[0].f, false)
		if err != nil || keys(got) != "welcome/2,welcome/3" {
			t.Fatalf("Forget(since) = %s, %v; want welcome/2,welcome/3", keys(got), err)
		}
		for key, want := range map[string]bool{"welcome/1": true, "welcome/2": false, "welcome/3": false, "other/2": true} {
			_, found, release, err := l.Claim(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			release()
			if found != want {
				t.Errorf("after Forget, %s found = %v; want %v", key, found, want)
			}
		}
	})
}

func TestSecondOpenOfAFileFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := ledger.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := ledger.Open(path); err == nil || !strings.Contains(err.Error(), "another process holds it") {
		t.Errorf("second Open = %v; want a clear lock error", err)
	}
}

// Two handlers of one user's registration must never both send: the
// second claim waits until the first is released, and then sees its entry.
func TestClaimIsExclusive(t *testing.T) {
	each(t, func(t *testing.T, l store, _ func(t *testing.T) store) {
		ctx := context.Background()
		_, found, release, err := l.Claim(ctx, "welcome/1")
		if err != nil || found {
			t.Fatalf("first Claim = found %v, %v; want a new claim", found, err)
		}
		second := make(chan ledger.Entry)
		go func() {
			e, found, release2, err := l.Claim(ctx, "welcome/1")
			if err != nil || !found {
				t.Errorf("second Claim = found %v, %v; want the first claim's entry", found, err)
			}
			if release2 != nil {
				release2()
			}
			second <- e
		}()
		// A claim of another key does not wait for this one.
		_, _, releaseOther, err := l.Claim(ctx, "welcome/2")
		if err != nil {
			t.Fatalf("Claim(welcome/2) = %v", err)
		}
		releaseOther()
		select {
		case <-second:
			t.Fatal("second Claim of welcome/1 returned while the first held it")
		default:
		}
		if err := l.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email", Address: "a@example.com"}); err != nil {
			t.Fatal(err)
		}
		release()
		release() // a second release is harmless
		select {
		case e := <-second:
			if e.Address != "a@example.com" {
				t.Errorf("second Claim's entry address = %q; want a@example.com", e.Address)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("second Claim still waits after the first was released")
		}
	})
}

// A claim released without a record (the send failed) lets the next
// claimer make its own.
func TestReleasedClaimIsFree(t *testing.T) {
	each(t, func(t *testing.T, l store, _ func(t *testing.T) store) {
		ctx := context.Background()
		_, _, release, err := l.Claim(ctx, "welcome/1")
		if err != nil {
			t.Fatal(err)
		}
		release()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, found, release, err := l.Claim(wctx, "welcome/1")
		if err != nil || found {
			t.Fatalf("Claim after a release = found %v, %v; want a new claim", found, err)
		}
		release()
	})
}

func TestClaimHonoursContext(t *testing.T) {
	each(t, func(t *testing.T, l store, _ func(t *testing.T) store) {
		_, _, release, err := l.Claim(context.Background(), "welcome/1")
		if err != nil {
			t.Fatal(err)
		}
		defer release()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, _, _, err := l.Claim(ctx, "welcome/1"); !errors.Is(err, context.Canceled) {
			t.Errorf("Claim of a held key with a cancelled context = %v; want context.Canceled", err)
		}
	})
}

func TestKeyLengthIsBounded(t *testing.T) {
	each(t, func(t *testing.T, l store, _ func(t *testing.T) store) {
		ctx := context.Background()
		long := "welcome/" + strings.Repeat("9", ledger.MaxKeyLen)
		var ke *ledger.KeyError
		if _, _, _, err := l.Claim(ctx, long); !errors.As(err, &ke) {
			t.Errorf("Claim of a %d-byte key = %v; want a *ledger.KeyError", len(long), err)
		}
		if err := l.Record(ctx, long, ledger.Entry{}); !errors.As(err, &ke) {
			t.Errorf("Record of a %d-byte key = %v; want a *ledger.KeyError", len(long), err)
		}
		if err := l.Record(ctx, "", ledger.Entry{}); !errors.As(err, &ke) {
			t.Errorf("Record of an empty key = %v; want a *ledger.KeyError", err)
		}
		if _, _, release, err := l.Claim(ctx, long[:ledger.MaxKeyLen]); err != nil {
			t.Errorf("Claim of a %d-byte key = %v; want nil", ledger.MaxKeyLen, err)
		} else {
			release()
		}
	})
}

// An entry whose write failed is still found, so that a retry does not
// send the email again.
func TestFailedRecordIsRemembered(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := ledger.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// The file is closed: every write fails.
	if err := l.Record(context.Background(), "welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email"}); err == nil {
		t.Fatal("Record on a closed ledger = nil; want an error")
	}
	e, found, err := l.Lookup("welcome/1")
	if err != nil || !found || !e.Unsaved || e.EventID != "t/0/1" {
		t.Errorf("Lookup after a failed Record = %+v, %v, %v; want the entry, Unsaved", e, found, err)
	}
}
