package ledger_test

import (
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
