package ledger

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// An entry whose write failed is written by the next write of any key, or
// at Close, so that a restart still finds it and sends nothing again.
func TestUnsavedEntriesAreWrittenLater(t *testing.T) {
	tests := []struct {
		name  string
		later func(l *Ledger) error
	}{
		{"by the next Record", func(l *Ledger) error {
			if err := l.Record(context.Background(), "welcome/2", Entry{EventID: "t/0/2"}); err != nil {
				return err
			}
			return l.Close()
		}},
		{"at Close", func(l *Ledger) error { return l.Close() }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "ledger.db")
			l, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			// As a Record whose write failed leaves it.
			l.unsaved["welcome/1"] = Entry{EventID: "t/0/1", Address: "one@example.com", Unsaved: true}
			if err := tt.later(l); err != nil {
				t.Fatal(err)
			}
			l, err = Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			e, found, err := l.Lookup("welcome/1")
			if err != nil || !found || e.Unsaved || e.Address != "one@example.com" {
				t.Errorf("Lookup after reopen = %+v, %v, %v; want the entry, saved", e, found, err)
			}
		})
	}
}

// One entry that does not decode must not make every later write fail.
func TestUndecodableEntryDoesNotBlockWrites(t *testing.T) {
	l, err := Open(filepath.Join(t.TempDir(), "ledger.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucket).Put([]byte("welcome/bad"), []byte("{")) }); err != nil {
		t.Fatal(err)
	}
	l.published["welcome/bad"] = true
	if err := l.Record(context.Background(), "welcome/1", Entry{EventID: "t/0/1"}); err != nil {
		t.Errorf("Record with an undecodable entry's mark pending = %v; want nil", err)
	}
}

// Records that arrive together share a transaction and its fsync, and
// each returns only once its entry is on disk.
func TestConcurrentRecordsShareCommits(t *testing.T) {
	const n = 64
	path := filepath.Join(t.TempDir(), "ledger.db")
	l, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	start := make(chan struct{})
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			<-start
			errs <- l.Record(context.Background(), fmt.Sprintf("welcome/%d", i), Entry{EventID: fmt.Sprintf("t/0/%d", i)})
		}()
	}
	close(start)
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Errorf("Record = %v; want nil", err)
		}
	}
	l.cmu.Lock()
	commits := l.finished
	l.cmu.Unlock()
	if commits >= n {
		t.Errorf("%d concurrent Records took %d commits; want fewer, shared", n, commits)
	}
	t.Logf("%d concurrent Records, %d commits", n, commits)
	// Durable: a new handle on the file sees every entry.
	if err := l.db.Close(); err != nil {
		t.Fatal(err)
	}
	l, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := 0; i < n; i++ {
		if _, found, err := l.Lookup(fmt.Sprintf("welcome/%d", i)); err != nil || !found {
			t.Errorf("welcome/%d after reopen: found %v, %v; want found", i, found, err)
		}
	}
}
