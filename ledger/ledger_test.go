package ledger_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/ledger"
)

func TestLedgerSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "ledger.db")
	l, err := ledger.Open(path)
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	sentAt := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	if err := l.Record("welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email", SentAt: sentAt}); err != nil {
		t.Fatalf("Record = %v", err)
	}
	if err := l.MarkPublished("welcome/1"); err != nil {
		t.Fatalf("MarkPublished = %v", err)
	}
	if e, _, _ := l.Lookup("welcome/1"); !e.Published {
		t.Error("Lookup after MarkPublished: Published = false; want true before the mark is written")
	}
	if err := l.MarkPublished("welcome/absent"); err != nil {
		t.Fatalf("MarkPublished(absent) = %v; want nil", err)
	}
	if _, err := ledger.Open(path); err == nil || !strings.Contains(err.Error(), "another process holds it") {
		t.Errorf("second Open = %v; want a clear lock error", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	l, err = ledger.Open(path)
	if err != nil {
		t.Fatalf("reopen = %v", err)
	}
	defer l.Close()
	got, found, err := l.Lookup("welcome/1")
	want := ledger.Entry{EventID: "t/0/1", Channel: "email", SentAt: sentAt, Published: true}
	if err != nil || !found || got != want {
		t.Errorf("Lookup(welcome/1) = %+v, %v, %v; want %+v, true, nil", got, found, err, want)
	}
	if _, found, _ := l.Lookup("welcome/2"); found {
		t.Error("Lookup(welcome/2) found an entry; want none")
	}
}

func openLedger(t *testing.T) *ledger.Ledger {
	t.Helper()
	l, err := ledger.Open(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatalf("Open = %v", err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l
}

// Two handlers of one user's registration must never both send: the
// second claim waits until the first is released, and then sees its entry.
func TestClaimIsExclusive(t *testing.T) {
	l := openLedger(t)
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
	if err := l.Record("welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email", Address: "a@example.com"}); err != nil {
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
}

func TestClaimHonoursContext(t *testing.T) {
	l := openLedger(t)
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
}

func TestKeyLengthIsBounded(t *testing.T) {
	l := openLedger(t)
	long := "welcome/" + strings.Repeat("9", ledger.MaxKeyLen)
	var ke *ledger.KeyError
	if _, _, _, err := l.Claim(context.Background(), long); !errors.As(err, &ke) {
		t.Errorf("Claim of a %d-byte key = %v; want a *ledger.KeyError", len(long), err)
	}
	if err := l.Record(long, ledger.Entry{}); !errors.As(err, &ke) {
		t.Errorf("Record of a %d-byte key = %v; want a *ledger.KeyError", len(long), err)
	}
	if err := l.Record("", ledger.Entry{}); !errors.As(err, &ke) {
		t.Errorf("Record of an empty key = %v; want a *ledger.KeyError", err)
	}
	if _, _, release, err := l.Claim(context.Background(), long[:ledger.MaxKeyLen]); err != nil {
		t.Errorf("Claim of a %d-byte key = %v; want nil", ledger.MaxKeyLen, err)
	} else {
		release()
	}
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
	if err := l.Record("welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email"}); err == nil {
		t.Fatal("Record on a closed ledger = nil; want an error")
	}
	e, found, err := l.Lookup("welcome/1")
	if err != nil || !found || !e.Unsaved || e.EventID != "t/0/1" {
		t.Errorf("Lookup after a failed Record = %+v, %v, %v; want the entry, Unsaved", e, found, err)
	}
}
