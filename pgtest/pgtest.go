// Package pgtest gives tests their own schema on the real PostgreSQL server
// that scripts/postgres.sh runs (make test starts it).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DSNEnv names the variable that holds the server's connection string.
const DSNEnv = "EVENTROUTER_TEST_POSTGRES"

// ScriptEnv names the variable that holds scripts/postgres.sh, for tests
// that stop and start the server.
const ScriptEnv = "EVENTROUTER_TEST_POSTGRES_SCRIPT"

// ServerDSN returns the server's connection string, or skips the test when
// none is configured (fails it under CI=true, where every test runs).
func ServerDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv(DSNEnv)
	if dsn == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set; CI runs every ledger test on a real PostgreSQL server (make test starts one)", DSNEnv)
		}
		t.Skipf("%s is not set; scripts/test.sh starts PostgreSQL and sets it", DSNEnv)
	}
	return dsn
}

// DSN creates a schema of the test's own and returns a connection string
// whose search_path is that schema, so that each test starts with no
// tables. The schema is dropped when the test ends.
func DSN(t testing.TB) string {
	t.Helper()
	server := ServerDSN(t)
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	schema := "t_" + hex.EncodeToString(b)
	Exec(t, server, "CREATE SCHEMA "+schema)
	t.Cleanup(func() { Exec(t, server, "DROP SCHEMA "+schema+" CASCADE") })
	u, err := url.Parse(server)
	if err != nil {
		t.Fatalf("%s is not a URL: %v", DSNEnv, err)
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String()
}

// Exec runs sql on dsn, failing the test on an error.
func Exec(t testing.TB, dsn, sql string, args ...any) {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// QueryInt runs sql, which returns one integer, on dsn.
func QueryInt(t testing.TB, dsn, sql string, args ...any) int64 {
	t.Helper()
	conn := connect(t, dsn)
	defer conn.Close(context.Background())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var n int64
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

func connect(t testing.TB, dsn string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	return conn
}

// Control returns funcs that stop and start the server, or skips the test
// when this run may not restart it (fails it under CI=true).
func Control(t testing.TB) (stop, start func()) {
	t.Helper()
	script := os.Getenv(ScriptEnv)
	if script == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set; make test sets it to scripts/postgres.sh", ScriptEnv)
		}
		t.Skipf("%s is not set; make test sets it to scripts/postgres.sh", ScriptEnv)
	}
	run := func(arg string) func() {
		return func() {
			if out, err := exec.Command(script, arg).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", script, arg, err, out)
			}
		}
	}
	// Whatever happens to the test, the server runs again after it.
	t.Cleanup(func() {
		if out, err := exec.Command(script, "start").CombinedOutput(); err != nil {
			t.Errorf("%s start: %v\n%s", script, err, out)
		}
	})
	return run("stop"), run("start")
}
