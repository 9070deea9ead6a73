package ledger

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventrouter/eventrouter/groupcommit"
	"github.com/eventrouter/eventrouter/retry"
)

// Dependency is the name under which the shared ledger reports an outage
// and an answer (see retry.Unavailable and retry.Reached): a database that
// does not answer pauses the route, as a mail server that does not does.
const Dependency = "postgres"

// SchemaVersion is the version of the tables this code reads and writes.
const SchemaVersion = 1

// migrations[v] takes the schema from version v to v+1.
var migrations = []string{
	// The entry of a sent side effect has sent_at set; until then the row
	// is a claim: owner holds it until lease_until. takeovers counts the
	// claims taken from an owner whose lease had run out (it died or lost
	// the database between claiming and recording): the only way one
	// side effect can happen twice.
	`CREATE TABLE eventrouter_ledger (
		key         text PRIMARY KEY,
		owner       text,
		lease_until timestamptz,
		claimed_at  timestamptz NOT NULL DEFAULT now(),
		takeovers   integer NOT NULL DEFAULT 0,
		event_id    text,
		channel     text,
		address     text,
		sent_at     timestamptz,
		published   boolean NOT NULL DEFAULT false
	)`,
}

// migrationLock is the advisory lock that makes instances starting at
// once migrate one after the other.
const migrationLock = 0x65764c6564676572

// PostgresConfig configures a shared ledger.
type PostgresConfig struct {
	// DSN is the connection string. It holds a password: never log it.
	DSN string
	// MaxConns bounds the connection pool.
	MaxConns int32
	// StatementTimeout bounds each statement, on the server too.
	StatementTimeout time.Duration
	// Lease is how long a claim stays another instance's after its owner
	// last renewed it. An owner renews its claims every third of it while
	// it holds them; a claim whose owner died is taken over after at most
	// Lease.
	Lease time.Duration
}

// Postgres is a ledger shared by every instance, in a PostgreSQL table.
// Claims hold a lease: a claim held by a live owner makes other claimers
// wait, and one whose owner stopped renewing it is taken over. It is safe
// for concurrent use.
type Postgres struct {
	pool  *pgxpool.Pool
	cfg   PostgresConfig
	owner string

	locks keyLocks
	// troubleAt is when a statement last failed, or when the ledger
	// opened, in Unix nanoseconds (see mayTakeOver).
	troubleAt atomic.Int64
	// claims and records group the statements of concurrent handlers.
	claims  *groupcommit.Batcher[string, claimRow]
	records *groupcommit.Batcher[recordReq, struct{}]

	mu sync.Mutex
	// held counts this process's claims by key, which the renewer keeps
	// alive until they are recorded or released.
	held map[string]int
	// unsaved holds entries whose Record failed; the renewer keeps their
	// claims and writes them.
	unsaved map[string]Entry
	// published holds marks not yet written.
	published map[string]bool
	// releases holds claims whose release failed, for the renewer to
	// delete.
	releases map[string]bool

	stop      chan struct{}
	wg        sync.WaitGroup
	closeOnce sync.Once
}

// OpenPostgres connects to the database, creates or migrates the schema,
// and starts renewing the leases of the claims it will hold.
func OpenPostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	pcfg, err := pgxpool.ParseConfig(cfg.DSN)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, errors.New("ledger.postgres: the DSN does not parse as a PostgreSQL connection string or URL")
	}
	if cfg.MaxConns > 0 {
		pcfg.MaxConns = cfg.MaxConns
	}
	if cfg.StatementTimeout > 0 {
		pcfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(cfg.StatementTimeout.Milliseconds(), 10)
	}
	pcfg.ConnConfig.RuntimeParams["application_name"] = "eventrouter"
	// pgx prepares each statement once per connection, and PostgreSQL
	// then plans it once for all parameters: a plan made while the table
	// was new and empty scans the whole table for every key once it is
	// large. Planning each execution keeps the primary-key lookups.
	pcfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	pool, err := pgxpool.NewWithConfig(ctx, pcfg)
	if err != nil {
		return nil, fmt.Errorf("ledger.postgres: %w", err)
	}
	where := pcfg.ConnConfig.Host + ":" + strconv.Itoa(int(pcfg.ConnConfig.Port)) + "/" + pcfg.ConnConfig.Database
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ledger.postgres at %s: %w", where, err)
	}
	if cfg.Lease <= 0 {
		cfg.Lease = 15 * time.Second
	}
	p := &Postgres{
		pool: pool, cfg: cfg, owner: newOwner(),
		held: map[string]int{}, unsaved: map[string]Entry{}, published: map[string]bool{}, releases: map[string]bool{},
		stop: make(chan struct{}),
	}
	// Each worker holds at most one connection; the rest of the pool is
	// for renewals, marks and releases.
	workers := max(1, int(pool.Config().MaxConns)/4)
	p.claims = groupcommit.New(workers, maxBatch, p.claimBatch)
	p.records = groupcommit.New(workers, maxBatch, p.recordBatch)
	// A new instance has not seen the database for a lease yet.
	p.troubleAt.Store(time.Now().UnixNano())
	p.wg.Add(2)
	go p.renew()
	go p.flushLoop()
	return p, nil
}

// newOwner names this process in the claims it holds: the host and pid
// for whoever reads the table, and random bytes so that a restarted
// process with the same pid is another owner.
func newOwner() string {
	host, _ := os.Hostname()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(b))
}

// SchemaError says that the database cannot hold this ledger as it is:
// its schema is newer than this code knows (an instance of a newer
// eventrouter migrated it), or its encoding is not UTF8. Asking again does
// not help.
type SchemaError struct {
	Msg string
}

func (e *SchemaError) Error() string { return e.Msg }

// migrate brings the schema to SchemaVersion in one transaction, under
// an advisory lock so that instances starting at once take turns.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		// Every valid key and address is UTF-8: another encoding could
		// refuse one after its email went out.
		var enc string
		if err := tx.QueryRow(ctx, "SHOW server_encoding").Scan(&enc); err != nil {
			return fmt.Errorf("read the server encoding: %w", err)
		}
		if enc != "UTF8" {
			return &SchemaError{Msg: fmt.Sprintf("the database's encoding is %s; the ledger needs UTF8 (CREATE DATABASE ... ENCODING 'UTF8')", enc)}
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", int64(migrationLock)); err != nil {
			return fmt.Errorf("lock the schema: %w", err)
		}
		if _, err := tx.Exec(ctx, "CREATE TABLE IF NOT EXISTS eventrouter_schema (version integer NOT NULL)"); err != nil {
			return fmt.Errorf("create eventrouter_schema: %w", err)
		}
		v, err := readVersion(ctx, tx)
		if err != nil {
			return err
		}
		if v > SchemaVersion {
			return &SchemaError{Msg: fmt.Sprintf("schema version %d is newer than this eventrouter's %d: upgrade eventrouter", v, SchemaVersion)}
		}
		if v < 0 {
			if _, err := tx.Exec(ctx, "INSERT INTO eventrouter_schema (version) VALUES (0)"); err != nil {
				return fmt.Errorf("init eventrouter_schema: %w", err)
			}
			v = 0
		}
		for ; v < SchemaVersion; v++ {
			if _, err := tx.Exec(ctx, migrations[v]); err != nil {
				return fmt.Errorf("migrate the schema to version %d: %w", v+1, err)
			}
		}
		if _, err := tx.Exec(ctx, "UPDATE eventrouter_schema SET version = $1", SchemaVersion); err != nil {
			return fmt.Errorf("set the schema version: %w", err)
		}
		return nil
	})
}

// readVersion returns the schema version, or -1 when none is recorded.
func readVersion(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}) (int, error) {
	var v int
	err := q.QueryRow(ctx, "SELECT version FROM eventrouter_schema").Scan(&v)
	if errors.Is(err, pgx.ErrNoRows) {
		return -1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read the schema version: %w", err)
	}
	return v, nil
}

// CheckPostgres connects to the database and reports its schema version
// without changing anything: -1 when the tables do not exist yet. It is
// for `config check --live`.
func CheckPostgres(ctx context.Context, dsn string) (version int, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return 0, errors.New("the DSN does not parse as a PostgreSQL connection string or URL")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT to_regclass('eventrouter_schema') IS NOT NULL").Scan(&exists); err != nil {
		return 0, err
	}
	if !exists {
		return -1, nil
	}
	return readVersion(ctx, conn)
}

// claimSQL claims the keys $1 for owner $2 with a lease of $3 seconds in
// one statement: for each key it inserts the claim, or takes over a claim
// whose lease ran out, or renews the owner's own. A server that restarted
// less than a lease ago lets no lease run out: its outage kept every owner
// from renewing, and each gets a whole lease to come back. $4 says the
// same from the caller's side: false while the caller itself failed to
// reach the database less than a lease ago (a failover, a network or
// pooler outage that the server's start time does not show), when the
// owners of lapsed leases may be as cut off as it was. The first branch of the
// UNION returns the keys whose claim is the caller's; the second returns
// the others' rows as they are (recorded, or another live owner's). A key
// whose row a concurrent claim committed mid-statement is in neither, and
// is asked again. Keys are claimed in order, so that batches of two
// instances lock rows in the same order and never deadlock each other.
const claimSQL = `
WITH claimed AS (
	INSERT INTO eventrouter_ledger AS l (key, owner, lease_until)
	SELECT k, $2, now() + make_interval(secs => $3) FROM unnest($1::text[]) AS k ORDER BY k
	ON CONFLICT (key) DO UPDATE
		SET owner = EXCLUDED.owner, lease_until = EXCLUDED.lease_until,
		    claimed_at = now(),
		    takeovers = l.takeovers + CASE WHEN l.owner IS DISTINCT FROM EXCLUDED.owner THEN 1 ELSE 0 END
		WHERE l.sent_at IS NULL AND (l.owner = EXCLUDED.owner OR l.lease_until IS NULL OR
			(l.lease_until < now() AND $4 AND pg_postmaster_start_time() < now() - make_interval(secs => $3)))
	RETURNING l.key, true, l.event_id, l.channel, l.address, l.sent_at, l.published,
		extract(epoch FROM l.lease_until - now())::float8
)
SELECT * FROM claimed
UNION ALL
SELECT key, false, event_id, channel, address, sent_at, published, extract(epoch FROM lease_until - now())::float8
	FROM eventrouter_ledger WHERE key = ANY($1) AND key NOT IN (SELECT key FROM claimed)`

// recordSQL stores the entries of side effects that happened, and ends
// their claims, in one statement. An entry already there stays: another
// owner recorded the same side effect first.
const recordSQL = `
INSERT INTO eventrouter_ledger AS l (key, event_id, channel, address, sent_at, published)
SELECT k, e, c, a, s, false
	FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) AS t(k, e, c, a, s) ORDER BY k
ON CONFLICT (key) DO UPDATE
	SET event_id = EXCLUDED.event_id, channel = EXCLUDED.channel, address = EXCLUDED.address,
	    sent_at = EXCLUDED.sent_at, owner = NULL, lease_until = NULL
	WHERE l.sent_at IS NULL`

// claimRow is a key's row as claimSQL returns it; present is false when
// the statement saw none.
type claimRow struct {
	present   bool
	mine      bool
	eventID   *string
	channel   *string
	address   *string
	sentAt    *time.Time
	published bool
	left      *float64
}

// maxBatch bounds the keys of one statement.
const maxBatch = 256

// claimBatch runs claimSQL for keys. A key asked twice in one batch is
// claimed once, for both: the statement may touch a row only once.
func (p *Postgres) claimBatch(keys []string) ([]claimRow, []error, error) {
	rows, err := p.claimKeys(keys)
	return rows, make([]error, len(keys)), err
}

func (p *Postgres) claimKeys(keys []string) ([]claimRow, error) {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	distinct := slices.Compact(slices.Sorted(slices.Values(keys)))
	var out []claimRow
	err := retryDeadlock(func() error {
		rows, err := p.pool.Query(ctx, claimSQL, distinct, p.owner, p.cfg.Lease.Seconds(), p.mayTakeOver())
		if err != nil {
			return err
		}
		byKey := make(map[string]claimRow, len(keys))
		var key string
		var r claimRow
		_, err = pgx.ForEachRow(rows, []any{&key, &r.mine, &r.eventID, &r.channel, &r.address, &r.sentAt, &r.published, &r.left}, func() error {
			r.present = true
			byKey[key] = r
			return nil
		})
		if err != nil {
			return err
		}
		out = make([]claimRow, len(keys))
		for i, k := range keys {
			out[i] = byKey[k]
		}
		return nil
	})
	return out, p.trouble(err)
}

// storable returns s as PostgreSQL text can hold it: valid UTF-8, without
// NUL characters.
func storable(s string) string {
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "")
}

// mayTakeOver reports whether this instance has reached the database
// without a failure for a whole lease: only then can a lapsed lease be
// told from an owner that was as cut off as this instance.
func (p *Postgres) mayTakeOver() bool {
	return time.Since(time.Unix(0, p.troubleAt.Load())) >= p.cfg.Lease
}

// trouble notes a statement that failed for another reason than its
// values, and returns err.
func (p *Postgres) trouble(err error) error {
	if err != nil && !dataError(err) {
		p.troubleAt.Store(time.Now().UnixNano())
	}
	return err
}

// dataError reports whether err is the server refusing a value (SQL
// classes 22 and 23): the fault of a key or an entry, not of the server.
func dataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "23"))
}

// recordReq is one entry for recordBatch.
type recordReq struct {
	key string
	e   Entry
}

// recordBatch runs recordSQL for reqs. Of a key written twice in one
// batch (a handler's Record and the renewer's retry of it) the last entry
// is sent: the statement may touch a row only once. Entries hold only
// text the server takes (see Record), so no entry fails the others.
func (p *Postgres) recordBatch(reqs []recordReq) ([]struct{}, []error, error) {
	err := p.recordEntries(reqs)
	return make([]struct{}, len(reqs)), make([]error, len(reqs)), err
}

func (p *Postgres) recordEntries(reqs []recordReq) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	last := make(map[string]Entry, len(reqs))
	for _, r := range reqs {
		last[r.key] = r.e
	}
	var keys, events, channels, addresses []string
	var sent []time.Time
	for k, e := range last {
		keys, events, channels, addresses = append(keys, k), append(events, e.EventID), append(channels, e.Channel), append(addresses, e.Address)
		sent = append(sent, e.SentAt)
	}
	return p.trouble(retryDeadlock(func() error {
		_, err := p.pool.Exec(ctx, recordSQL, keys, events, channels, addresses, sent)
		return err
	}))
}

// retryDeadlock runs f again when the server chose its transaction as a
// deadlock's victim: nothing of it was written.
func retryDeadlock(f func() error) error {
	var err error
	for range 3 {
		err = f()
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "40P01" {
			return err
		}
	}
	return err
}

// Claim takes key for the caller until release is called, and returns the
// entry recorded under key, if there is one. A claim held by a handler of
// this process, or by a live instance, makes Claim wait: until that claim
// is recorded (Claim then returns the entry), released, or its lease runs
// out, or ctx is done. An unreachable database is a retry.Unavailable
// error. A key longer than MaxKeyLen is a *KeyError.
func (p *Postgres) Claim(ctx context.Context, key string) (e Entry, found bool, release func(), err error) {
	if err := checkKey(key); err != nil {
		return Entry{}, false, nil, err
	}
	unlock, err := p.locks.lock(ctx, key)
	if err != nil {
		return Entry{}, false, nil, err
	}
	p.mu.Lock()
	e, found = p.unsaved[key]
	p.mu.Unlock()
	if found {
		return e, true, unlock, nil
	}
	// Another owner's claim is polled: first soon, as most end within an
	// email's time, then less often.
	wait := 20 * time.Millisecond
	for {
		r, err := p.claims.Do(key)
		switch {
		case err != nil:
			unlock()
			return Entry{}, false, nil, p.fail(ctx, "claim "+key, err)
		case !r.present && ctx.Err() == nil:
			// A concurrent claim committed mid-statement: ask again,
			// soon.
			time.Sleep(5 * time.Millisecond)
			continue
		case !r.present:
			unlock()
			return Entry{}, false, nil, fmt.Errorf("claim ledger key %s: %w", key, ctx.Err())
		}
		retry.Reached(ctx, Dependency)
		mine, eventID, channel, address, sentAt, published, left := r.mine, r.eventID, r.channel, r.address, r.sentAt, r.published, r.left
		if sentAt != nil {
			e := Entry{EventID: deref(eventID), Channel: deref(channel), Address: deref(address),
				SentAt: sentAt.UTC(), Published: published}
			if !e.Published {
				p.mu.Lock()
				e.Published = p.published[key]
				p.mu.Unlock()
			}
			return e, true, unlock, nil
		}
		if mine {
			p.mu.Lock()
			p.held[key]++
			delete(p.releases, key)
			p.mu.Unlock()
			return Entry{}, false, p.releaser(key, unlock), nil
		}
		d := wait
		if left != nil && *left > 0 && *left < d.Seconds() {
			// The lease runs out first: take it over then.
			d = time.Duration(*left*float64(time.Second)) + time.Millisecond
		}
		wait = min(2*wait, time.Second)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			unlock()
			return Entry{}, false, nil, fmt.Errorf("wait for ledger key %s, claimed by another instance: %w", key, ctx.Err())
		case <-t.C:
		}
	}
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// releaser returns the release of a claim that is the caller's. A claim
// released without a Record (the side effect failed) is deleted, so that
// another instance need not wait out its lease; one whose Record failed
// stays, renewed, until the entry is written.
func (p *Postgres) releaser(key string, unlock func()) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			defer unlock()
			p.mu.Lock()
			wasHeld := p.held[key] > 0
			if wasHeld {
				if p.held[key]--; p.held[key] == 0 {
					delete(p.held, key)
				}
			}
			_, unsaved := p.unsaved[key]
			p.mu.Unlock()
			if !wasHeld || unsaved {
				return
			}
			// Under the key's lock, so that no claim of this process
			// is deleted with it.
			if err := p.deleteClaim(key); err != nil {
				// The renewer tries again; until then the claim is not
				// renewed, and at worst runs out with its lease.
				p.mu.Lock()
				p.releases[key] = true
				p.mu.Unlock()
			}
		})
	}
}

// deleteClaim deletes this process's unrecorded claim of key.
func (p *Postgres) deleteClaim(key string) error {
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	_, err := p.pool.Exec(ctx, "DELETE FROM eventrouter_ledger WHERE key = $1 AND owner = $2 AND sent_at IS NULL", key, p.owner)
	return err
}

// timeout bounds a statement made outside any message's context.
func (p *Postgres) timeout() time.Duration {
	if p.cfg.StatementTimeout > 0 {
		return p.cfg.StatementTimeout
	}
	return 5 * time.Second
}

// fail wraps a database error. A value the server refuses is the
// record's fault, and permanent; every other failure but the caller's own
// cancellation is an outage that pauses the route and never poisons the
// record.
func (p *Postgres) fail(ctx context.Context, what string, err error) error {
	err = fmt.Errorf("ledger %s: %w", what, err)
	switch {
	case ctx.Err() != nil:
		// The caller's cancellation, so that the record is not poisoned:
		// it comes again after the restart or the rebalance.
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	case dataError(err):
		return retry.Permanent(err)
	}
	return retry.Unavailable(Dependency, err)
}

// Record stores e under key and ends the caller's claim. It runs even when
// ctx is cancelled: the side effect happened. When the write fails, e is
// kept in memory (Unsaved), so that a retry in this process finds it and
// the claim stays this process's; the renewer writes it once the database
// is back, and the error is retry.Unavailable.
func (p *Postgres) Record(ctx context.Context, key string, e Entry) error {
	if err := checkKey(key); err != nil {
		return err
	}
	// The side effect happened: nothing in its entry may make the write
	// fail now. PostgreSQL text holds valid UTF-8 without NUL.
	e.EventID, e.Channel, e.Address = storable(e.EventID), storable(e.Channel), storable(e.Address)
	e.Unsaved = true
	p.mu.Lock()
	p.unsaved[key] = e
	p.mu.Unlock()
	if err := p.write(key, e); err != nil {
		return p.fail(context.WithoutCancel(ctx), "record "+key, err)
	}
	retry.Reached(ctx, Dependency)
	return nil
}

// write stores an unsaved entry, and forgets it once it is written.
func (p *Postgres) write(key string, e Entry) error {
	if _, err := p.records.Do(recordReq{key: key, e: e}); err != nil {
		return err
	}
	p.forget(key, e)
	return nil
}

// MarkPublished notes that the event announcing key's side effect was
// published. Marks are written together by the renewer, a few times a
// second, or at Close: a lost mark only makes a redelivery announce the
// side effect again, under the same identity.
func (p *Postgres) MarkPublished(key string) error {
	p.mu.Lock()
	p.published[key] = true
	p.mu.Unlock()
	return nil
}

// markInterval is how often marks and unsaved entries are written, and
// how soon a failed renewal is tried again.
const markInterval = 200 * time.Millisecond

// renew keeps the claims this process holds alive, every third of the
// lease and, after a failure, every markInterval, until Close. It runs
// apart from flush, so that writing entries never delays a renewal.
func (p *Postgres) renew() {
	defer p.wg.Done()
	t := time.NewTimer(p.cfg.Lease / 3)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		// The next renewal is due a third of a lease after this one
		// started, as the leases it grants count from then.
		start := time.Now()
		next := markInterval
		if err := p.renewLeases(); err == nil {
			next = time.Until(start.Add(p.cfg.Lease / 3))
		}
		t.Reset(next)
	}
}

// flushLoop writes the unsaved entries, the published marks and the
// failed releases every markInterval, until Close.
func (p *Postgres) flushLoop() {
	defer p.wg.Done()
	t := time.NewTicker(markInterval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			_ = p.flush()
		}
	}
}

// renewLeases extends every claim this process holds, in one statement
// that locks the rows in key order, as claims do, so that it never
// deadlocks with another instance's claims.
func (p *Postgres) renewLeases() error {
	p.mu.Lock()
	keys := make([]string, 0, len(p.held)+len(p.unsaved))
	for k := range p.held {
		keys = append(keys, k)
	}
	for k := range p.unsaved {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	if len(keys) == 0 {
		// Holding nothing, it still asks: an outage it did not notice
		// would let it take over claims whose owners were cut off too.
		return p.trouble(p.pool.Ping(ctx))
	}
	return p.trouble(retryDeadlock(func() error {
		_, err := p.pool.Exec(ctx, `UPDATE eventrouter_ledger l SET lease_until = now() + make_interval(secs => $3)
			FROM (SELECT key FROM eventrouter_ledger WHERE owner = $1 AND sent_at IS NULL AND key = ANY($2)
				ORDER BY key FOR UPDATE) s
			WHERE l.key = s.key`, p.owner, keys, p.cfg.Lease.Seconds())
		return err
	}))
}

// flush writes the unsaved entries in one statement, then the published
// marks, then retries the releases that failed; what fails stays for the
// next flush. An entry the server refuses outright is dropped: it can
// never be written.
func (p *Postgres) flush() error {
	p.mu.Lock()
	var entries []recordReq
	for k, e := range p.unsaved {
		entries = append(entries, recordReq{key: k, e: e})
	}
	marks := slices.Sorted(maps.Keys(p.published))
	releases := slices.Collect(maps.Keys(p.releases))
	p.mu.Unlock()
	var errs []error
	if len(entries) > 0 {
		_, perEntry, err := p.recordBatch(entries)
		for i, r := range entries {
			e := err
			if e == nil {
				e = perEntry[i]
			}
			switch {
			case e == nil:
				p.forget(r.key, r.e)
			case dataError(e):
				p.forget(r.key, r.e)
				errs = append(errs, fmt.Errorf("ledger record %s, refused: %w", r.key, e))
			default:
				errs = append(errs, fmt.Errorf("ledger record %s: %w", r.key, e))
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	if len(marks) > 0 {
		err := retryDeadlock(func() error {
			_, err := p.pool.Exec(ctx, `UPDATE eventrouter_ledger l SET published = true
				FROM (SELECT key FROM eventrouter_ledger WHERE key = ANY($1) AND sent_at IS NOT NULL AND NOT published
					ORDER BY key FOR UPDATE) s
				WHERE l.key = s.key`, marks)
			return err
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("ledger mark published: %w", err))
		} else {
			p.mu.Lock()
			for _, k := range marks {
				delete(p.published, k)
			}
			p.mu.Unlock()
		}
	}
	for _, key := range releases {
		// The key's lock keeps a new claim of this process from being
		// deleted with the old one; a key in use now is left for later.
		lctx, lcancel := context.WithTimeout(ctx, 10*time.Millisecond)
		unlock, err := p.locks.lock(lctx, key)
		lcancel()
		if err != nil {
			continue
		}
		p.mu.Lock()
		_, again := p.held[key]
		_, sent := p.unsaved[key]
		p.mu.Unlock()
		// Claimed again since, or sent since: the row is no longer the
		// released claim.
		if again || sent || p.deleteClaim(key) == nil {
			p.mu.Lock()
			delete(p.releases, key)
			p.mu.Unlock()
		}
		unlock()
	}
	return errors.Join(errs...)
}

// forget drops an unsaved entry once it is written (or can never be), and
// its claim.
func (p *Postgres) forget(key string, e Entry) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.unsaved[key] == e {
		delete(p.unsaved, key)
	}
	delete(p.held, key)
}

// Forget removes the entries f selects, so that the next delivery of
// their events does the side effect again, and returns them, oldest first;
// with dryRun it removes nothing. Daemons may run meanwhile: a claim not
// yet recorded is never removed.
func (p *Postgres) Forget(ctx context.Context, f Filter, dryRun bool) ([]Forgotten, error) {
	if err := f.check(); err != nil {
		return nil, err
	}
	// An event ID that is not topic/partition/offset (a producer's UUID,
	// from before origins) is in no range.
	where := `left(key, length($1)) = $1 AND (cardinality($2::text[]) = 0 OR key = ANY($2))
		AND sent_at IS NOT NULL AND sent_at >= $3 AND ($4::timestamptz IS NULL OR sent_at < $4)
		AND (cardinality($5::text[]) = 0 OR CASE WHEN event_id ~ '^[^/]+/[0-9]{1,9}/[0-9]{1,18}$' THEN EXISTS (
			SELECT 1 FROM unnest($5::text[], $6::int[], $7::bigint[], $8::bigint[]) AS r(t, p, f, u)
			WHERE split_part(event_id, '/', 1) = r.t AND split_part(event_id, '/', 2)::int = r.p
				AND split_part(event_id, '/', 3)::bigint >= r.f AND split_part(event_id, '/', 3)::bigint < r.u)
			ELSE false END)`
	sql := "DELETE FROM eventrouter_ledger WHERE " + where + " RETURNING key, sent_at"
	if dryRun {
		sql = "SELECT key, sent_at FROM eventrouter_ledger WHERE " + where
	}
	var until *time.Time
	if !f.Until.IsZero() {
		until = &f.Until
	}
	keys := f.Keys
	if keys == nil {
		keys = []string{}
	}
	topics, parts, froms, tos := []string{}, []int32{}, []int64{}, []int64{}
	for _, r := range f.Sources {
		topics, parts, froms, tos = append(topics, r.Topic), append(parts, r.Partition), append(froms, r.From), append(tos, r.To)
	}
	rows, err := p.pool.Query(ctx, sql, f.Prefix, keys, f.Since, until, topics, parts, froms, tos)
	if err != nil {
		return nil, fmt.Errorf("ledger forget: %w", err)
	}
	var out []Forgotten
	var fg Forgotten
	if _, err := pgx.ForEachRow(rows, []any{&fg.Key, &fg.SentAt}, func() error {
		fg.SentAt = fg.SentAt.UTC()
		out = append(out, fg)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("ledger forget: %w", err)
	}
	slices.SortFunc(out, func(a, b Forgotten) int { return a.SentAt.Compare(b.SentAt) })
	return out, nil
}

// Ping checks that the database answers, within ctx.
func (p *Postgres) Ping(ctx context.Context) error {
	return p.pool.Ping(ctx)
}

// Close writes pending entries and marks, and closes the pool. It waits
// for up to half a lease, renewing their claims, for entries whose Record
// failed to be written and for claims still held to be recorded or
// released (a handler the router stopped waiting for may still finish
// its send). What is left then is lost: its claim runs out, and another
// instance may repeat its side effect; the error says how many. Close may
// be called more than once.
func (p *Postgres) Close() error {
	var err error
	p.closeOnce.Do(func() {
		close(p.stop)
		p.wg.Wait()
		deadline := time.Now().Add(p.cfg.Lease / 2)
		for {
			err = p.flush()
			p.mu.Lock()
			unsaved, held := len(p.unsaved), len(p.held)
			p.mu.Unlock()
			if unsaved+held == 0 || time.Now().After(deadline) {
				if unsaved+held > 0 {
					err = fmt.Errorf("%d ledger entries of side effects that happened could not be written, and %d claims were still held; "+
						"another instance may repeat them: %w", unsaved, held, err)
				}
				break
			}
			_ = p.renewLeases()
			time.Sleep(markInterval)
		}
		p.claims.Close()
		p.records.Close()
		p.pool.Close()
	})
	return err
}

// Lookup returns the entry recorded under key, if its side effect went
// out; a claim still under way is not one.
func (p *Postgres) Lookup(key string) (Entry, bool, error) {
	p.mu.Lock()
	if e, ok := p.unsaved[key]; ok {
		p.mu.Unlock()
		return e, true, nil
	}
	p.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), p.timeout())
	defer cancel()
	var e Entry
	var eventID, channel, address *string
	var sentAt *time.Time
	err := p.pool.QueryRow(ctx, `SELECT event_id, channel, address, sent_at, published FROM eventrouter_ledger
		WHERE key = $1 AND sent_at IS NOT NULL`, key).Scan(&eventID, &channel, &address, &sentAt, &e.Published)
	if errors.Is(err, pgx.ErrNoRows) {
		return Entry{}, false, nil
	}
	if err != nil {
		return Entry{}, false, fmt.Errorf("ledger lookup %s: %w", key, err)
	}
	e.EventID, e.Channel, e.Address, e.SentAt = deref(eventID), deref(channel), deref(address), sentAt.UTC()
	return e, true, nil
}
