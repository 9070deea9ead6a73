package ledger_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
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
	// Close stops the renewals and leaves the claim, as a SIGKILL does;
	// it says so.
	if err := a.Close(); err == nil || !strings.Contains(err.Error(), "1 claims were still held") {
		t.Fatalf("Close with a claim held = %v; want it to say so", err)
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
	waitFor(t, 10*time.Second, "the unrecorded entry in the table once it is back", func() bool {
		return pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_ledger WHERE key = 'welcome/1' AND sent_at IS NOT NULL") == 1
	})
}

// waitFor checks cond on a ticker until it holds, or fails the test after
// timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// outage keeps a server away for d: the outage's length is what the
// caller tests, not a wait for anything to happen.
func outage(d time.Duration) { <-time.After(d) }

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
	// Longer than the lease: every lease_until is in the past when the
	// server is back.
	outage(lease + time.Second)
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

// Whatever an entry holds, its write cannot fail once the side effect
// happened: text PostgreSQL refuses (a NUL) is made storable.
func TestEntryTextIsStorable(t *testing.T) {
	dsn := pgtest.DSN(t)
	l := openPostgres(t, dsn, time.Minute)
	defer l.Close()
	ctx := context.Background()
	_, _, release, err := l.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	if err := l.Record(ctx, "welcome/1", ledger.Entry{EventID: "t/0/\xff1", Address: "nul\x00@example.com", SentAt: time.Now()}); err != nil {
		t.Fatalf("Record of an entry with a NUL and invalid UTF-8 = %v; want nil", err)
	}
	if n := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_ledger WHERE address = 'nul@example.com' AND event_id = 't/0/\uFFFD1'"); n != 1 {
		t.Errorf("stored entries with the cleaned text: %d; want 1", n)
	}
}

// proxy forwards TCP connections to a server, and can cut them all, as a
// network outage between an instance and its database does.
type proxy struct {
	t      *testing.T
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  []net.Conn
}

func newProxy(t *testing.T, target string) *proxy {
	p := &proxy{t: t, target: target}
	p.listen("127.0.0.1:0")
	t.Cleanup(p.down)
	return p
}

func (p *proxy) listen(addr string) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(s, c); s.Close() }()
			go func() { _, _ = io.Copy(c, s); c.Close() }()
		}
	}()
}

// down closes the listener and every connection through it.
func (p *proxy) down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// up listens again on the same address.
func (p *proxy) up() { p.listen(p.addr) }

// via returns dsn pointed at the proxy.
func (p *proxy) via(t *testing.T, dsn string) string {
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = p.addr
	return u.String()
}

// A network outage longer than the lease, with the server up all along:
// the instance that was cut off does not take over the lapsed claims of
// owners that were cut off with it, before they could renew.
func TestNetworkOutageLongerThanTheLeaseKeepsClaims(t *testing.T) {
	dsn := pgtest.DSN(t)
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	const lease = 3 * time.Second
	pa, pb := newProxy(t, u.Host), newProxy(t, u.Host)
	a := openPostgres(t, pa.via(t, dsn), lease)
	defer a.Close()
	b := openPostgres(t, pb.via(t, dsn), lease)
	defer b.Close()
	ctx := context.Background()
	_, _, release, err := a.Claim(ctx, "welcome/1")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	pa.down()
	pb.down()
	outage(lease + time.Second)
	// b comes back first; a a moment later, as reconnects go.
	pb.up()
	wctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if _, _, rel, err := b.Claim(wctx, "welcome/1"); err == nil {
		rel()
		t.Fatal("b took over a's lapsed claim right after an outage both had")
	}
	pa.up()
	wctx2, cancel2 := context.WithTimeout(ctx, 2*time.Second)
	defer cancel2()
	if _, _, rel, err := b.Claim(wctx2, "welcome/1"); !errors.Is(err, context.DeadlineExceeded) {
		if err == nil {
			rel()
		}
		t.Fatalf("Claim once a is back = %v; want it to wait for a, which renews", err)
	}
}
