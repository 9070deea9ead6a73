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
	"strings"
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
	return need(t, DSNEnv, "scripts/test.sh starts PostgreSQL and sets it")
}

// need returns the variable env, or, when it is empty, skips the test
// (fails it under CI=true, where every test runs), saying how to set it.
func need(t testing.TB, env, how string) string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is not set; CI runs every test on a real PostgreSQL server: %s", env, how)
		}
		t.Skipf("%s is not set; %s", env, how)
	}
	return v
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

// Private starts a PostgreSQL server of the test's own with
// scripts/postgres.sh, for tests that stop and start it, and returns its
// connection string and funcs that stop and start it. The server is
// stopped and its data removed when the test ends. Without the script it
// skips the test (fails it under CI=true).
func Private(t testing.TB) (dsn string, stop, start func()) {
	t.Helper()
	script := need(t, ScriptEnv, "make test sets it to scripts/postgres.sh")
	// Not t.TempDir: the server runs as the postgres user when the tests
	// run as root, and must reach its directory.
	dir, err := os.MkdirTemp("", "eventrouter-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "POSTGRES_STATE_DIR="+dir, "POSTGRES_PORT=")
	run := func(arg string) string {
		cmd := exec.Command(script, arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", script, arg, err, out)
		}
		return string(out)
	}
	t.Cleanup(func() {
		cmd := exec.Command(script, "stop")
		cmd.Env = env
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s stop: %v\n%s", script, err, out)
		}
		_ = os.RemoveAll(dir)
	})
	run("start")
	return strings.TrimSpace(run("dsn")), func() { run("stop") }, func() { run("start") }
}

// Count runs sql, which returns one integer, on dsn, and returns its
// error rather than failing the test: for conditions polled while a table
// may not exist yet.
func Count(dsn, sql string, args ...any) (int64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	var n int64
	err = conn.QueryRow(ctx, sql, args...).Scan(&n)
	return n, err
}
