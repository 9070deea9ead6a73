package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/groupcommit"
	"github.com/eventrouter/eventrouter/retry"
)

// AuditDependency names the audit database for the route's breaker.
const AuditDependency = "postgres"

// AuditOptions are the options of the audit handler.
type AuditOptions struct {
	// DSNEnv or DSNFile hold the PostgreSQL connection string (it holds a
	// password, so it never sits in the file).
	DSNEnv  string `yaml:"dsn_env"`
	DSNFile string `yaml:"dsn_file"`
	// Table is the table the events go to, created when missing; it may
	// name its schema, as schema.table.
	Table string `yaml:"table"`
	// MaxConnections bounds the connections to the database; each runs
	// one batch at a time.
	MaxConnections int `yaml:"max_connections"`
	// MaxBatch bounds the records written by one INSERT.
	MaxBatch int `yaml:"max_batch"`
	// StatementTimeout bounds each statement on the server.
	StatementTimeout time.Duration `yaml:"statement_timeout"`
}

func auditDefaults() AuditOptions {
	return AuditOptions{Table: "eventrouter_audit", MaxConnections: 4, MaxBatch: 256, StatementTimeout: 5 * time.Second}
}

var tableName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$]{0,62}(\.[A-Za-z_][A-Za-z0-9_$]{0,62})?$`)

// Validate checks the options once they are decoded.
func (o AuditOptions) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	switch {
	case o.DSNEnv == "" && o.DSNFile == "":
		add("dsn_env", "is missing; set dsn_env or dsn_file to the PostgreSQL connection string")
	case o.DSNEnv != "" && o.DSNFile != "":
		add("dsn_env", "and dsn_file are both set; set one")
	}
	if !tableName.MatchString(o.Table) {
		add("table", "%q is not a table name: letters, digits and _, at most 63 of them, optionally after schema.", o.Table)
	}
	if o.MaxConnections < 1 || o.MaxConnections > 64 {
		add("max_connections", "must be between 1 and 64, got %d", o.MaxConnections)
	}
	if o.MaxBatch < 1 || o.MaxBatch > 10000 {
		add("max_batch", "must be between 1 and 10000, got %d", o.MaxBatch)
	}
	if o.StatementTimeout <= 0 {
		add("statement_timeout", "must be positive, got %s", o.StatementTimeout)
	}
	return errors.Join(errs...)
}

// Audit appends every record of its topic to a PostgreSQL table, once per
// record: the table's key is (topic, partition, offset), so redeliveries,
// rewinds and a restart after a crash add no row. Records handled at once
// are written in batches, one INSERT for many. The payload is stored as
// JSONB when it is JSON, and as bytes otherwise; the headers as JSONB.
//
// A database that cannot be reached pauses the route; a row the server
// refuses (class 22, such as text it cannot store) poisons its record alone.
type Audit struct {
	pool    *pgxpool.Pool
	table   string
	batch   *groupcommit.Batcher[auditRow, struct{}]
	timeout time.Duration
	now     func() time.Time

	mu    sync.Mutex
	ready bool
}

type auditRow struct {
	topic      string
	partition  int32
	offset     int64
	key        []byte
	headers    []byte
	payload    []byte
	raw        []byte
	recordTime *time.Time
	received   time.Time
}

func newAudit(o AuditOptions, s Services) (Handler, error) {
	dsn, err := s.Secret("dsn", o.DSNEnv, o.DSNFile)
	if err != nil {
		return nil, err
	}
	return NewAudit(o, dsn, s.Now)
}

// NewAudit returns the audit handler for valid options o, writing to the
// database at dsn. It connects on the first record.
func NewAudit(o AuditOptions, dsn string, now func() time.Time) (*Audit, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's message can quote the DSN, password included.
		return nil, &config.KeyError{Key: "dsn", Msg: "does not parse as a PostgreSQL connection string or URL"}
	}
	pcfg.MaxConns = int32(o.MaxConnections)
	pcfg.MinConns = 0
	pcfg.ConnConfig.RuntimeParams["statement_timeout"] = strconv.FormatInt(o.StatementTimeout.Milliseconds(), 10)
	pcfg.ConnConfig.RuntimeParams["application_name"] = "eventrouter-audit"
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return nil, fmt.Errorf("audit database: %w", err)
	}
	schema, name, qualified := strings.Cut(o.Table, ".")
	ident := pgx.Identifier{schema}
	if qualified {
		ident = pgx.Identifier{schema, name}
	}
	a := &Audit{pool: pool, table: ident.Sanitize(), now: now,
		// The server's timeout, and the time to reach it and answer.
		timeout: 2*o.StatementTimeout + 5*time.Second}
	a.batch = groupcommit.New(o.MaxConnections, o.MaxBatch, a.write)
	return a, nil
}

// Close waits for the batches under way and closes the connections.
func (a *Audit) Close() error {
	a.batch.Close()
	a.pool.Close()
	return nil
}

// Handle appends msg's record to the table.
func (a *Audit) Handle(msg *message.Message) ([]*message.Message, error) {
	rec := RecordOf(msg)
	row := auditRow{topic: rec.Topic, partition: rec.Partition, offset: rec.Offset, key: rec.Key, received: a.now().UTC()}
	if rec.Topic == "" {
		return nil, retry.Permanent(errors.New("audit: the message names no Kafka record"))
	}
	if !rec.Timestamp.IsZero() {
		t := rec.Timestamp.UTC()
		row.recordTime = &t
	}
	headers := make(map[string]string, len(msg.Metadata))
	for k, v := range msg.Metadata {
		// PostgreSQL's JSONB holds no NUL.
		headers[strings.ReplaceAll(k, "\x00", "")] = strings.ReplaceAll(v, "\x00", "")
	}
	row.headers, _ = json.Marshal(headers)
	if utf8.Valid(msg.Payload) && json.Valid(msg.Payload) && !bytes.Contains(msg.Payload, []byte(`\u0000`)) {
		row.payload = msg.Payload
	} else {
		row.raw = msg.Payload
	}
	if _, err := a.batch.Do(row); err != nil {
		if errors.Is(err, groupcommit.ErrClosed) {
			// The daemon is stopping: the record is not acked, and comes
			// again after the restart.
			return nil, fmt.Errorf("%w: audit handler closed: %w", context.Canceled, err)
		}
		return nil, err
	}
	retry.Reached(msg.Context(), AuditDependency)
	return nil, nil
}

const auditInsert = `INSERT INTO %s (topic, "partition", "offset", key, headers, payload, payload_raw, record_time, received_at)
SELECT * FROM unnest($1::text[], $2::integer[], $3::bigint[], $4::bytea[], $5::jsonb[], $6::jsonb[], $7::bytea[], $8::timestamptz[], $9::timestamptz[])
ON CONFLICT (topic, "partition", "offset") DO NOTHING`

// write inserts rows in one statement. When the server refuses a value,
// each row is tried alone, so that only the bad ones fail.
func (a *Audit) write(rows []auditRow) ([]struct{}, []error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), a.timeout)
	defer cancel()
	if err := a.ensureTable(ctx); err != nil {
		return nil, nil, a.fail(err)
	}
	err := a.insert(ctx, rows)
	if err == nil || !dataError(err) {
		return make([]struct{}, len(rows)), make([]error, len(rows)), a.fail(err)
	}
	errs := make([]error, len(rows))
	for i := range rows {
		errs[i] = a.fail(a.insertAlone(ctx, rows[i]))
	}
	return make([]struct{}, len(rows)), errs, nil
}

// insertAlone inserts one row; when the server refuses its JSON payload
// (text jsonb cannot hold, such as a lone surrogate escape), it keeps the
// payload as bytes instead, so that the record is audited all the same.
func (a *Audit) insertAlone(ctx context.Context, row auditRow) error {
	err := a.insert(ctx, []auditRow{row})
	if err == nil || !dataError(err) || row.payload == nil {
		return err
	}
	row.raw, row.payload = row.payload, nil
	return a.insert(ctx, []auditRow{row})
}

func (a *Audit) insert(ctx context.Context, rows []auditRow) error {
	n := len(rows)
	topics, parts, offsets := make([]string, n), make([]int32, n), make([]int64, n)
	keys, headers, payloads, raws := make([][]byte, n), make([]*string, n), make([]*string, n), make([][]byte, n)
	times, received := make([]*time.Time, n), make([]time.Time, n)
	for i, r := range rows {
		topics[i], parts[i], offsets[i], keys[i], raws[i] = r.topic, r.partition, r.offset, r.key, r.raw
		h := string(r.headers)
		headers[i] = &h
		if r.payload != nil {
			p := string(r.payload)
			payloads[i] = &p
		}
		times[i], received[i] = r.recordTime, r.received
	}
	_, err := a.pool.Exec(ctx, fmt.Sprintf(auditInsert, a.table), topics, parts, offsets, keys, headers, payloads, raws, times, received)
	return err
}

// ensureTable creates the table once per process, when it is missing.
func (a *Audit) ensureTable(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.ready {
		return nil
	}
	// A table made beforehand needs no CREATE privilege on its schema,
	// which a role that may only INSERT lacks.
	var exists bool
	if err := a.pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", a.table).Scan(&exists); err != nil {
		return fmt.Errorf("look up table %s: %w", a.table, err)
	}
	if exists {
		a.ready = true
		return nil
	}
	_, err := a.pool.Exec(ctx, fmt.Sprintf(`CREATE TABLE IF NOT EXISTS %s (
	topic text NOT NULL,
	"partition" integer NOT NULL,
	"offset" bigint NOT NULL,
	key bytea,
	headers jsonb NOT NULL,
	payload jsonb,
	payload_raw bytea,
	record_time timestamptz,
	received_at timestamptz NOT NULL,
	PRIMARY KEY (topic, "partition", "offset")
)`, a.table))
	if err != nil {
		var pgErr *pgconn.PgError
		// Two instances creating it at once: one wins, and the table is there.
		if !errors.As(err, &pgErr) || pgErr.Code != "23505" && pgErr.Code != "42P07" {
			return fmt.Errorf("create table %s: %w", a.table, err)
		}
	}
	a.ready = true
	return nil
}

// fail classifies a database error: a value the server refuses is the
// record's fault and permanent; anything else is an outage that pauses
// the route and poisons nothing.
func (a *Audit) fail(err error) error {
	if err == nil {
		return nil
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42P01" {
		// Dropped while we ran: create it again on the next try.
		a.mu.Lock()
		a.ready = false
		a.mu.Unlock()
	}
	err = fmt.Errorf("audit table %s: %w", a.table, err)
	if dataError(err) {
		return retry.Permanent(err)
	}
	return retry.Unavailable(AuditDependency, err)
}

func dataError(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "22")
}
