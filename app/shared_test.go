package app_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

// sharedLedgerDSNEnv is the variable the shared-ledger tests put the DSN in.
const sharedLedgerDSNEnv = "EVENTROUTER_TEST_LEDGER_DSN"

// sharedLedgerYAML is the ledger section of an instance that shares the
// PostgreSQL ledger at $EVENTROUTER_TEST_LEDGER_DSN. The short lease makes
// a dead owner's claims move on within seconds.
const sharedLedgerYAML = `ledger:
  kind: postgres
  postgres:
    dsn_env: ` + sharedLedgerDSNEnv + `
    lease: 6s
    statement_timeout: 2s
`

// withSharedLedger switches cfg to the shared ledger at dsn, and returns
// the options that give the daemon the DSN.
func withSharedLedger(cfg config.Config, dsn string, o app.Options) (config.Config, app.Options) {
	cfg.Ledger.Kind = "postgres"
	cfg.Ledger.Postgres.DSNEnv = sharedLedgerDSNEnv
	cfg.Ledger.Postgres.Lease = 6 * time.Second
	cfg.Ledger.Postgres.StatementTimeout = 2 * time.Second
	getenv := o.Getenv
	o.Getenv = func(k string) string {
		if k == sharedLedgerDSNEnv {
			return dsn
		}
		if getenv != nil {
			return getenv(k)
		}
		return ""
	}
	return cfg, o
}

// emailsPerUser counts Mailpit's emails by recipient.
func emailsPerUser(m *mailtest.Server) map[string]int {
	n := map[string]int{}
	for _, msg := range m.Messages() {
		for _, to := range msg.To {
			n[to]++
		}
	}
	return n
}

// TestSharedLedgerScaleOut runs three `eventrouter run` processes in one
// group on six partitions, sharing one PostgreSQL ledger and one mail
// server. One is SIGKILLed mid-stream; another is stopped and replaced, as
// a rolling deploy does. Every user gets one email. The only duplicates
// allowed are those of the crash window, between the server's acceptance
// and the ledger's record, which a takeover of the dead owner's claim
// shows in the ledger; they are counted apart, and bounded.
func TestSharedLedgerScaleOut(t *testing.T) {
	if testing.Short() {
		t.Skip("starts four processes and sends 3,000 emails")
	}
	brokers := kafkatest.Real(t)
	dsn := pgtest.DSN(t)
	bin := buildBinary(t)
	const users = 3000
	mail := mailtest.Start(t)
	r := newRoute()
	kafkatest.CreateTopic(t, brokers, r.in, 6)
	kafkatest.CreateTopic(t, brokers, r.out, 6)
	path := writeSharedConfig(t, r, smtpYAML(mail))
	env := sharedLedgerDSNEnv + "=" + dsn
	procs := []*process{
		startProcess(t, bin, path, brokers, env),
		startProcess(t, bin, path, brokers, env),
		startProcess(t, bin, path, brokers, env),
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("at failure:\n%s", kafkatest.GroupReport(brokers, r.group, r.in))
		}
	})
	waitFor(t, 2*time.Minute, "three processes in a stable group", func() bool {
		return kafkatest.GroupStable(brokers, r.group, r.in, len(procs))
	})

	produceEvents(t, brokers, r.in, 0, users/2)
	waitFor(t, 3*time.Minute, "a sixth of the emails", func() bool { return mail.Total() >= users/6 })
	procs[0].signal(syscall.SIGKILL)
	procs[0].done <- <-procs[0].done
	t.Logf("SIGKILL pid %d after %d emails", procs[0].cmd.Process.Pid, mail.Total())
	produceEvents(t, brokers, r.in, users/2, users)

	waitFor(t, 3*time.Minute, "half of the emails", func() bool { return mail.Total() >= users/2 })
	// The rolling deploy: one instance stops, its replacement starts.
	if err := procs[1].stop(t); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	t.Logf("SIGTERM pid %d after %d emails", procs[1].cmd.Process.Pid, mail.Total())
	procs = append(procs, startProcess(t, bin, path, brokers, env))

	waitFor(t, 5*time.Minute, "every user's email", func() bool { return len(emailsPerUser(mail)) >= users })
	waitForDistinct(t, brokers, r.out, users, 3*time.Minute)
	for _, p := range procs[2:] {
		if err := p.stop(t); err != nil {
			t.Errorf("SIGTERM: %v", err)
		}
	}

	perUser := emailsPerUser(mail)
	if len(perUser) != users {
		t.Errorf("%d users got an email; want all %d", len(perUser), users)
	}
	var total, window, outside int
	for addr, n := range perUser {
		total += n
		if n < 2 {
			continue
		}
		// The user of address userN@example.com has ID N.
		var id int
		if _, err := fmt.Sscanf(addr, "user%d@example.com", &id); err != nil {
			t.Fatalf("recipient %q is none of the test's users", addr)
		}
		takeovers := pgtest.QueryInt(t, dsn, "SELECT takeovers FROM eventrouter_ledger WHERE key = $1", fmt.Sprintf("welcome/%d", id))
		if takeovers == 0 {
			outside++
			t.Errorf("user %d got %d emails, and nobody took over a claim of theirs; want one email", id, n)
			continue
		}
		window += n - 1
	}
	// The SIGKILLed process holds at most max_in_flight (256) claims
	// whose emails the server may have accepted.
	if window > 256 {
		t.Errorf("%d duplicates in the crash window; want at most 256, the victim's max_in_flight", window)
	}
	takeovers := pgtest.QueryInt(t, dsn, "SELECT coalesce(sum(takeovers), 0) FROM eventrouter_ledger")
	fmt.Printf("shared ledger: 3 processes (1 SIGKILL, 1 replaced), 6 partitions, %d users: %d emails, "+
		"%d duplicates outside the crash window, %d in it (%d claims taken over from the killed process)\n",
		users, total, outside, window, takeovers)
	if n := count(t, brokers, r.poison); n != 0 {
		t.Errorf("poison topic holds %d records; want 0", n)
	}
}

// writeSharedConfig writes the config of `eventrouter run` processes that
// share the PostgreSQL ledger.
func writeSharedConfig(t *testing.T, r route, extra string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	raw := fmt.Sprintf("kafka:\n  brokers: [unused:9092]\n%slog:\n  level: debug\n%s%s", sharedLedgerYAML, r.yaml(), extra)
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The same users registered on two partitions at the same moment, each
// partition consumed by another instance: each user gets one email.
func TestSameUserOnTwoPartitionsSendsOnce(t *testing.T) {
	brokers := kafkatest.Real(t)
	dsn := pgtest.DSN(t)
	const users = 300
	r := newRoute()
	kafkatest.CreateTopic(t, brokers, r.in, 2)
	notifier := &recorder{}
	for range 2 {
		cfg, opts := withSharedLedger(testConfig(t, brokers, r, ""), dsn, app.Options{Notifier: notifier})
		startDaemon(t, cfg, opts)
	}
	waitFor(t, 2*time.Minute, "two instances in a stable group", func() bool {
		return kafkatest.GroupStable(brokers, r.group, r.in, 2)
	})
	// Other keys than the user ID, as a producer keying by request does.
	var wg sync.WaitGroup
	for p := range int32(2) {
		var recs []kafkatest.Record
		for i := range users {
			rec := event(i, userEmail(i))
			rec.Key = fmt.Appendf(nil, "request-%d-%d", p, i)
			recs = append(recs, rec)
		}
		wg.Go(func() {
			if _, err := sendTo(brokers, r.in, p, time.Now(), recs); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// The second event of a user announces the email again, or, once the
	// first announcement is marked, skips it: the committed offsets say
	// when both partitions are done.
	waitFor(t, 2*time.Minute, "both events of every user handled", func() bool {
		return committed(t, brokers, r.group, r.in, 0) >= users && committed(t, brokers, r.group, r.in, 1) >= users
	})
	sent := map[string]int{}
	for _, m := range notifier.Sent() {
		sent[m.Email]++
	}
	for i := range users {
		if n := sent[userEmail(i)]; n != 1 {
			t.Errorf("user %d registered on both partitions got %d emails; want 1", i, n)
		}
	}
	if n := len(notifier.Sent()); n != users {
		t.Errorf("%d emails for %d users on two partitions; want %d", n, users, users)
	}
}

// The ledger's database stopped for 20 s mid-stream: the route pauses and
// /readyz says why, nothing is poisoned, nothing sent twice, and every
// email goes out once the database is back.
func TestLedgerDatabaseOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("stops the database for 20 s")
	}
	brokers := kafkatest.Real(t)
	dsn, stopDB, startDB := pgtest.Private(t)
	const users = 600
	r := newRoute()
	notifier := &recorder{}
	cfg, opts := withSharedLedger(testConfig(t, brokers, r, opsYAML), dsn, opsOptions(app.Options{Notifier: notifier}))
	d := startDaemon(t, cfg, opts)
	base := "http://" + d.OpsAddr()
	produceEvents(t, brokers, r.in, 0, users/2)
	waitFor(t, consumeTimeout, "a third of the emails", func() bool { return len(notifier.Sent()) >= users/3 })

	stopDB()
	down := time.Now()
	produceEvents(t, brokers, r.in, users/2, users)
	var sawLedgerDown bool
	// The outage lasts 20 s, whatever the daemon does (its length is
	// what is tested); readiness is read twice a second all along.
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for ; time.Since(down) < 20*time.Second; <-tick.C {
		code, body := get(t, base+"/readyz", true)
		var rd struct {
			Checks map[string]string `json:"checks"`
		}
		_ = json.Unmarshal([]byte(body), &rd)
		if code == http.StatusServiceUnavailable && strings.HasPrefix(rd.Checks["ledger"], "database does not answer") {
			sawLedgerDown = true
		}
	}
	if !sawLedgerDown {
		t.Error("/readyz never reported the ledger's database down during the 20 s outage")
	}
	sentWhileDown := len(notifier.Sent())
	startDB()
	t.Logf("database down for 20 s; %d emails before it came back", sentWhileDown)

	waitForDistinct(t, brokers, r.out, users, 3*time.Minute)
	waitFor(t, consumeTimeout, "ready again", func() bool { c, _ := get(t, base+"/readyz", true); return c == http.StatusOK })
	sent := map[string]int{}
	for _, m := range notifier.Sent() {
		sent[m.Email]++
	}
	for i := range users {
		if n := sent[userEmail(i)]; n != 1 {
			t.Errorf("user %d got %d emails across the database outage; want 1", i, n)
		}
	}
	if n := count(t, brokers, r.poison); n != 0 {
		t.Errorf("poison topic holds %d records after the database outage; want 0", n)
	}
	fmt.Printf("ledger database down 20 s: %d users, %d emails, 0 poisoned\n", users, len(notifier.Sent()))
}

// A daemon that starts before its database waits for it; one given a
// wrong password stops at once, without printing it.
func TestSharedLedgerAtStart(t *testing.T) {
	brokers := kafkatest.Real(t)
	dsn, stopDB, startDB := pgtest.Private(t)
	r := newRoute()

	stopDB()
	cfg, opts := withSharedLedger(testConfig(t, brokers, r, ""), dsn, app.Options{Notifier: &recorder{}})
	logs := &syncBuffer{}
	d, err := app.New(cfg, slog.New(slog.NewTextHandler(logs, nil)), opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	waitFor(t, 30*time.Second, "the daemon to wait for its database", func() bool {
		return strings.Contains(logs.String(), "shared ledger not reachable yet")
	})
	startDB()
	select {
	case <-d.Running():
	case err := <-done:
		done <- err
		t.Fatalf("daemon stopped instead of waiting for its database: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("daemon not running 60s after its database came back")
	}

	wrong := strings.Replace(dsn, "eventrouter:eventrouter@", "eventrouter:hunter2@", 1)
	cfg, opts = withSharedLedger(testConfig(t, brokers, r, ""), wrong, app.Options{Notifier: &recorder{}})
	d2, err := app.New(cfg, slog.New(slog.NewTextHandler(logs, nil)), opts)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = d2.Run(context.Background())
	if err == nil || time.Since(start) > 20*time.Second {
		t.Errorf("Run with a wrong password = %v after %s; want an error at once", err, time.Since(start))
	}
	if err != nil && strings.Contains(err.Error()+logs.String(), "hunter2") {
		t.Errorf("the password is in the error or the log: %v", err)
	}
}
