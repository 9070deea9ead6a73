package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/pgtest"
	"github.com/eventrouter/eventrouter/retry"
)

// A claim whose owner is alive, and renews it, is never taken: another
// instance waits for its entry.
func TestLiveOwnersClaimHolds(t *testing.T) {
	dsn := pgtest.DSN(t)
	a := openPostgres(t, dsn, time.Second)
	defer a.Close()
	b := openPostgres(t, dsn, time.Second)
	defer b.Close()
	ctx := context.Background()
	_, _, release, err := a.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	// Three leases long: only renewals keep the claim a's.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, _, _, err := b.Claim(wctx, "welcome/1"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim of a live owner's key = %v; want it to wait until the deadline", err)
	}
	got := make(chan error, 1)
	go func() {
		e, found, release, err := b.Claim(ctx, "welcome/1")
		if err == nil {
			release()
			if !found || e.EventID != "t/0/1" {
				err = fmt.Errorf("found %v, entry %+v; want a's entry", found, e)
			}
		}
		got <- err
	}()
	if err := a.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", Channel: "email", SentAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	release()
	select {
	case err := <-got:
		if err != nil {
			t.Errorf("Claim once a recorded: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Claim still waits 10s after the owner recorded")
	}
}

// A claim whose owner stopped renewing it (it died) is taken over once its
// lease runs out, and the takeover is counted in the row.
func TestDeadOwnersClaimIsTakenOver(t *testing.T) {
	dsn := pgtest.DSN(t)
	a := openPostgres(t, dsn, time.Second)
	if _, _, _, err := a.Claim(context.Background(), "welcome/1"); err != nil {
		t.Fatal(err)
	}
	// Close stops the renewals and leaves the claim, as a SIGKILL does.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := openPostgres(t, dsn, time.Second)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, found, release, err := b.Claim(ctx, "welcome/1")
	if err != nil || found {
		t.Fatalf("Claim of a dead owner's key = found %v, %v; want the claim", found, err)
	}
	defer release()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("takeover took %s; want about the 1s lease", d)
	}
	if n := pgtest.QueryInt(t, dsn, "SELECT takeovers FROM eventrouter_ledger WHERE key = 'welcome/1'"); n != 1 {
		t.Errorf("takeovers = %d; want 1", n)
	}
}

// Many handlers in three instances race for the same keys: each side
// effect happens once.
func TestConcurrentInstancesSendOnce(t *testing.T) {
	dsn := pgtest.DSN(t)
	var ls []*ledger.Postgres
	for range 3 {
		l := openPostgres(t, dsn, 5*time.Second)
		defer l.Close()
		ls = append(ls, l)
	}
	const keys, handlers = 20, 6
	var sent [keys]atomic.Int32
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, l := range ls {
		for range handlers {
			wg.Go(func() {
				for k := range keys {
					key := fmt.Sprintf("welcome/%d", k)
					_, found, release, err := l.Claim(ctx, key)
					if err != nil {
						t.Error(err)
						return
					}
					if !found {
						sent[k].Add(1)
						if err := l.Record(ctx, key, ledger.Entry{EventID: key, SentAt: time.Now()}); err != nil {
							t.Error(err)
						}
					}
					release()
				}
			})
		}
	}
	wg.Wait()
	for k := range keys {
		if n := sent[k].Load(); n != 1 {
			t.Errorf("key %d sent %d times by 3 instances x %d handlers; want once", k, n, handlers)
		}
	}
}

func TestSchemaIsVersioned(t *testing.T) {
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	if v, err := ledger.CheckPostgres(ctx, dsn); err != nil || v != -1 {
		t.Errorf("CheckPostgres before the first start = %d, %v; want -1, nil", v, err)
	}
	l := openPostgres(t, dsn, time.Minute)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if v, err := ledger.CheckPostgres(ctx, dsn); err != nil || v != ledger.SchemaVersion {
		t.Errorf("CheckPostgres after a start = %d, %v; want %d, nil", v, err, ledger.SchemaVersion)
	}
	// A second start migrates nothing and keeps the entries.
	openPostgres(t, dsn, time.Minute).Close()
	pgtest.Exec(t, dsn, "UPDATE eventrouter_schema SET version = 99")
	_, err := ledger.OpenPostgres(ctx, ledger.PostgresConfig{DSN: dsn})
	if err == nil || !strings.Contains(err.Error(), "schema version 99 is newer") {
		t.Errorf("OpenPostgres on a newer schema = %v; want a refusal naming the version", err)
	}
}

// A database that fails is an outage, never the record's fault; an entry
// it did not take is kept, found by a retry, and written once it works.
func TestDatabaseFailureIsAnOutage(t *testing.T) {
	dsn := pgtest.DSN(t)
	l := openPostgres(t, dsn, time.Minute)
	defer l.Close()
	ctx := context.Background()
	_, _, release, err := l.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dsn, "ALTER TABLE eventrouter_ledger RENAME TO moved")
	if err := l.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", SentAt: time.Now()}); !retry.IsUnavailable(err) {
		t.Errorf("Record while the table is gone = %v; want retry.Unavailable", err)
	}
	release()
	if _, _, _, err := l.Claim(ctx, "welcome/2"); !retry.IsUnavailable(err) {
		t.Errorf("Claim while the table is gone = %v; want retry.Unavailable", err)
	}
	e, found, release, err := l.Claim(ctx, "welcome/1")
	if err != nil || !found || !e.Unsaved {
		t.Fatalf("Claim of the unrecorded entry = %+v, %v, %v; want it found, Unsaved", e, found, err)
	}
	release()
	pgtest.Exec(t, dsn, "ALTER TABLE moved RENAME TO eventrouter_ledger")
	deadline := time.Now().Add(10 * time.Second)
	for pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_ledger WHERE key = 'welcome/1' AND sent_at IS NOT NULL") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the unrecorded entry is not in the table 10s after it is back")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A database outage longer than the lease lets no claim of a live owner go:
// the restarted server gives every owner a whole lease to renew.
func TestOutageLongerThanTheLeaseKeepsClaims(t *testing.T) {
	dsn, stopDB, startDB := pgtest.Private(t)
	const lease = 3 * time.Second
	a := openPostgres(t, dsn, lease)
	defer a.Close()
	b := openPostgres(t, dsn, lease)
	defer b.Close()
	ctx := context.Background()
	_, _, release, err := a.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	stopDB()
	down := time.Now()
	// Longer than the lease: every lease_until is in the past when the
	// server is back.
	for time.Since(down) < lease+time.Second {
		time.Sleep(100 * time.Millisecond)
	}
	startDB()
	wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, found, releaseB, err := b.Claim(wctx, "welcome/1")
	if err == nil {
		releaseB()
		t.Fatalf("Claim right after the outage = found %v; want it to wait for the live owner", found)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Claim right after the outage = %v; want it to wait until the deadline", err)
	}
	if err := a.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", SentAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	release()
	e, found, releaseB, err := b.Claim(ctx, "welcome/1")
	if err != nil || !found || e.EventID != "t/0/1" {
		t.Fatalf("Claim once the owner recorded = %+v, %v, %v; want a's entry", e, found, err)
	}
	releaseB()
}

// Close with the database gone tries the unwritten entries for half a
// lease, then says how many side effects another instance may repeat; a
// closed ledger refuses calls without panicking.
func TestCloseReportsUnwrittenEntries(t *testing.T) {
	dsn, stopDB, _ := pgtest.Private(t)
	l := openPostgres(t, dsn, 3*time.Second)
	ctx := context.Background()
	_, _, release, err := l.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	stopDB()
	if err := l.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/1", SentAt: time.Now()}); !retry.IsUnavailable(err) {
		t.Errorf("Record with the database down = %v; want retry.Unavailable", err)
	}
	release()
	if err := l.Close(); err == nil || !strings.Contains(err.Error(), "1 ledger entries") {
		t.Errorf("Close with an unwritten entry = %v; want it to say 1 entry could not be written", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close = %v; want nil", err)
	}
	if _, _, _, err := l.Claim(ctx, "welcome/2"); err == nil {
		t.Error("Claim on a closed ledger = nil; want an error")
	}
}

// A value the server refuses is the record's own fault: permanent, and it
// fails only its own call, not the others grouped with it.
func TestRefusedEntryFailsAlone(t *testing.T) {
	dsn := pgtest.DSN(t)
	l := openPostgres(t, dsn, time.Minute)
	defer l.Close()
	ctx := context.Background()
	const n = 32
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			key := fmt.Sprintf("welcome/%d", i)
			_, _, release, err := l.Claim(ctx, key)
			if err != nil {
				errs[i] = err
				return
			}
			defer release()
			addr := fmt.Sprintf("user%d@example.com", i)
			if i == 7 {
				addr = "nul\x00@example.com" // text holds no NUL
			}
			errs[i] = l.Record(ctx, key, ledger.Entry{EventID: key, Address: addr, SentAt: time.Now()})
		})
	}
	wg.Wait()
	for i, err := range errs {
		switch {
		case i == 7 && !retry.IsPermanent(err):
			t.Errorf("Record of an address with a NUL = %v; want a permanent error", err)
		case i != 7 && err != nil:
			t.Errorf("Record %d = %v; want nil", i, err)
		}
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_ledger WHERE sent_at IS NOT NULL"); got != n-1 {
		t.Errorf("%d entries written; want %d", got, n-1)
	}
}
