package handlers_test

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"

	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/testkit/handlertest"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

func audit(t *testing.T, dsn, options string) handlers.Handler {
	t.Helper()
	s := handlertest.NewServices(t)
	s.Env["AUDIT_DSN"] = dsn
	return handlertest.Build(t, handlers.Registry()["audit"], "dsn_env: AUDIT_DSN\n"+options, s)
}

func TestAuditOneRowPerRecord(t *testing.T) {
	dsn := pgtest.DSN(t)
	h := audit(t, dsn, "max_batch: 64")
	const events, redelivered, workers = 10000, 2500, 32
	// Every record once, and a quarter of them again, as a redelivery
	// after a rebalance or a restart would bring them, all at once.
	offsets := make(chan int64)
	go func() {
		for i := range int64(events) {
			offsets <- i
		}
		for i := range int64(redelivered) {
			offsets <- i * 4
		}
		close(offsets)
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failed []string
	for range workers {
		wg.Go(func() {
			for off := range offsets {
				p := int32(off % 6)
				msg := handlertest.Message(fmt.Sprintf(`{"user_id": %d, "email": "u%d@example.com"}`, off, off),
					handlertest.At("user-registered", p, off), handlertest.Key(fmt.Sprint(off)), handlertest.Header("source", "test"))
				if res := handlertest.Run(t, h, msg); !res.Acked || res.Poisoned || res.Attempts != 1 {
					mu.Lock()
					failed = append(failed, fmt.Sprintf("offset %d: %+v", off, res))
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if len(failed) > 0 {
		t.Fatalf("%d records failed, first: %s", len(failed), failed[0])
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_audit"); got != events {
		t.Errorf("got %d rows; want %d, one per record", got, events)
	}
	// The seed's "audit logs and analytics" in plain SQL.
	if got := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM eventrouter_audit
		WHERE topic = 'user-registered' AND payload->>'email' LIKE '%@example.com' AND headers->>'source' = 'test'
		AND key = convert_to((payload->>'user_id'), 'UTF8') AND received_at IS NOT NULL AND record_time IS NOT NULL`); got != events {
		t.Errorf("got %d rows with JSON payload, key, headers and times; want %d", got, events)
	}
}

func TestAuditPayloadsAndRefusedRows(t *testing.T) {
	dsn := pgtest.DSN(t)
	h := audit(t, dsn, "")
	tests := []struct {
		name, payload     string
		poisoned          bool
		jsonRows, rawRows int64
	}{
		{"json", `{"user_id": 1}`, false, 1, 0},
		{"not json", `hello, world`, false, 0, 1},
		{"json with NUL escape kept as bytes", `{"a": "\u0000"}`, false, 0, 1},
		{"json jsonb refuses kept as bytes", `{"a": "\ud800"}`, false, 0, 1},
		{"json of invalid UTF-8 kept as bytes", "{\"a\": \"\xff\"}", false, 0, 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := handlertest.Run(t, h, handlertest.Message(tt.payload, handlertest.At("audit-payloads", 0, int64(i))))
			if res.Poisoned != tt.poisoned || !res.Acked {
				t.Fatalf("got %+v; want poisoned %v", res, tt.poisoned)
			}
			if tt.poisoned && !strings.Contains(res.Reason, "audit table") {
				t.Errorf("got reason %q; want the table's refusal", res.Reason)
			}
			json := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM eventrouter_audit WHERE "offset" = $1 AND payload IS NOT NULL`, i)
			raw := pgtest.QueryInt(t, dsn, `SELECT count(*) FROM eventrouter_audit WHERE "offset" = $1 AND payload_raw = $2::bytea`, i, []byte(tt.payload))
			if json != tt.jsonRows || raw != tt.rawRows {
				t.Errorf("got %d JSON and %d raw rows; want %d and %d", json, raw, tt.jsonRows, tt.rawRows)
			}
		})
	}
}

func TestAuditDatabaseDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := audit(t, "postgres://audit:pw@"+addr+"/audit?connect_timeout=2", "")
	res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 1}`, handlertest.At("t", 0, 1)))
	if res.Acked || res.Poisoned || res.Pauses != 3 {
		t.Fatalf("got %+v; want the route paused, nothing acked or poisoned", res)
	}
	if strings.Contains(res.Err.Error(), ":pw@") {
		t.Errorf("error %q shows the password", res.Err)
	}
}

func TestAuditOptionsRefused(t *testing.T) {
	tests := []struct{ name, options, want string }{
		{"no dsn", "table: t", "routes[0].options.dsn_env: is missing"},
		{"bad table", "dsn_env: X\ntable: \"a; DROP TABLE b\"", `line 2: routes[0].options.table: "a; DROP TABLE b" is not a table name`},
		{"bad batch", "dsn_env: X\nmax_batch: 0", "line 2: routes[0].options.max_batch: must be between 1 and 10000"},
		{"dsn not set", "dsn_env: AUDIT_NOT_SET", "routes[0].options.dsn_env: environment variable AUDIT_NOT_SET is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := handlertest.NewServices(t)
			s.Env["X"] = "postgres://a@127.0.0.1:1/b"
			_, err := handlertest.BuildErr(handlers.Registry()["audit"], tt.options, s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v; want an error containing %q", err, tt.want)
			}
		})
	}
}

// TestAuditBatchWithRefusedRows writes good records and records whose JSON
// jsonb refuses at once, so that they share batches: every record gets
// its row, the refused ones with their payload as bytes.
func TestAuditBatchWithRefusedRows(t *testing.T) {
	dsn := pgtest.DSN(t)
	h := audit(t, dsn, "max_connections: 1\nmax_batch: 64")
	const records = 200
	var wg sync.WaitGroup
	results := make([]handlertest.Result, records)
	for i := range records {
		payload := fmt.Sprintf(`{"user_id": %d}`, i)
		if i%10 == 0 {
			payload = fmt.Sprintf(`{"user_id": %d, "name": "\ud800"}`, i)
		}
		wg.Go(func() {
			results[i] = handlertest.Run(t, h, handlertest.Message(payload, handlertest.At("mixed", 0, int64(i))))
		})
	}
	wg.Wait()
	for i, res := range results {
		if !res.Acked || res.Poisoned {
			t.Errorf("record %d: got %+v; want it written", i, res)
		}
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_audit WHERE payload IS NOT NULL"); got != records*9/10 {
		t.Errorf("got %d rows with a JSON payload; want %d", got, records*9/10)
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM eventrouter_audit WHERE payload_raw IS NOT NULL"); got != records/10 {
		t.Errorf("got %d rows with a raw payload; want %d", got, records/10)
	}
}

// TestAuditInsertOnlyRole writes to a table made beforehand, as a role that
// may insert into it (and read it, which ON CONFLICT needs) but not create tables.
func TestAuditInsertOnlyRole(t *testing.T) {
	dsn := pgtest.DSN(t)
	// A first handler, as the owner, makes the table.
	owner := audit(t, dsn, "table: owned_audit")
	if res := handlertest.Run(t, owner, handlertest.Message(`{}`, handlertest.At("t", 0, 0))); !res.Acked || res.Poisoned {
		t.Fatalf("got %+v; want the owner's record written", res)
	}
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	schema := u.Query().Get("search_path")
	role := "inserter_" + schema
	pgtest.Exec(t, dsn, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD 'pw'", role))
	t.Cleanup(func() {
		pgtest.Exec(t, dsn, fmt.Sprintf("DROP OWNED BY %s", role))
		pgtest.Exec(t, dsn, fmt.Sprintf("DROP ROLE %s", role))
	})
	pgtest.Exec(t, dsn, fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s", schema, role))
	pgtest.Exec(t, dsn, fmt.Sprintf("GRANT INSERT, SELECT ON %s.owned_audit TO %s", schema, role))
	u.User = url.UserPassword(role, "pw")
	h := audit(t, u.String(), "table: owned_audit")
	if res := handlertest.Run(t, h, handlertest.Message(`{}`, handlertest.At("t", 0, 1))); !res.Acked || res.Poisoned || res.Pauses != 0 {
		t.Fatalf("got %+v; want the record written by the insert-only role", res)
	}
	if got := pgtest.QueryInt(t, dsn, "SELECT count(*) FROM owned_audit"); got != 2 {
		t.Errorf("got %d rows; want 2", got)
	}
}
