package app_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
)

// TestSIGKILLWithSlowKeysInFlight kills the daemon while the emails of
// slow users are in flight and the fast users behind them on the same
// partition are done, then starts it again. The commit never passed the
// lowest unfinished record, so the restart handles every record from
// there: no user is skipped, and the fast users done before the kill are
// not emailed again (the ledger).
func TestSIGKILLWithSlowKeysInFlight(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the daemon")
	}
	bin := buildBinary(t)
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const (
			users = 300
			// Every slowEvery-th user, from user 5 on, is slow.
			slowEvery = 20
			slowDelay = 15 * time.Second
		)
		slow := func(i int) bool { return i%slowEvery == 5 }
		mail := mailtest.StartMisbehaving(t, mailtest.Behaviour{AcceptDelay: func(rcpt string) time.Duration {
			if strings.HasPrefix(rcpt, "slow") {
				return slowDelay
			}
			return 0
		}})
		r := newRoute()
		// Slow emails hold a connection each; the fast ones need their own.
		smtp := strings.Replace(smtpAt(mail.Host(), mail.Port()), "timeout: 5s", "timeout: 30s\n    max_connections: 32", 1)
		path := writeConfig(t, r, filepath.Join(t.TempDir(), "ledger.db"), smtp)
		// One partition (auto-created), user i at offset i.
		var recs []kafkatest.Record
		for i := range users {
			email := fmt.Sprintf("user%d@example.com", i)
			if slow(i) {
				email = fmt.Sprintf("slow%d@example.com", i)
			}
			recs = append(recs, event(i, email))
		}
		kafkatest.Produce(t, k.Brokers, r.in, recs...)

		p := startProcess(t, bin, path, k.Brokers)
		fast := users - users/slowEvery
		// Announced means sent and recorded in the ledger.
		waitFor(t, 2*time.Minute, "every fast user's notification-sent", func() bool { return count(t, k.Brokers, r.out) >= int64(fast) })
		// And a commit since (auto-commit runs every second): the one that
		// must stop below the first slow user.
		waitFor(t, slowDelay/2, "a commit", func() bool { return committed(t, k.Brokers, r.group, r.in, 0) > 0 })
		p.signal(syscall.SIGKILL)
		<-p.done
		committedAtKill := committed(t, k.Brokers, r.group, r.in, 0)
		acceptedAtKill := map[string]bool{}
		for _, a := range mail.Accepted() {
			acceptedAtKill[a.To] = true
		}
		// The lowest record still unfinished at the kill: the first slow
		// user whose email the server had not accepted.
		lowest := int64(-1)
		for i := range users {
			if slow(i) && !acceptedAtKill[fmt.Sprintf("slow%d@example.com", i)] {
				lowest = int64(i)
				break
			}
		}
		if lowest < 0 {
			t.Fatal("every slow email was accepted before the kill; the kill came too late to test anything")
		}
		if committedAtKill > lowest {
			t.Fatalf("got offset %d committed at the kill; want at most %d, the lowest record in flight", committedAtKill, lowest)
		}
		t.Logf("SIGKILL with offset %d in flight, %d committed, %d emails accepted", lowest, committedAtKill, len(acceptedAtKill))

		p = startProcess(t, bin, path, k.Brokers)
		total, distinct := waitForDistinct(t, k.Brokers, r.out, users, 3*time.Minute)
		if err := p.stop(t); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if distinct != users {
			t.Errorf("got notification-sent for %d users; want %d", distinct, users)
		}
		perUser := map[string]int{}
		for _, a := range mail.Accepted() {
			perUser[a.To]++
		}
		if len(perUser) != users {
			t.Errorf("got emails to %d users; want all %d: a record behind the one in flight was skipped", len(perUser), users)
		}
		// Only an email that was in flight at the kill (a slow one, whose
		// acceptance the server counted as the client died) can come twice;
		// every fast user was done and recorded before it.
		for to, n := range perUser {
			if n > 1 && !strings.HasPrefix(to, "slow") {
				t.Errorf("got %d emails to fast user %s; want 1: it was recorded before the kill", n, to)
			}
			if n > 2 {
				t.Errorf("got %d emails to %s; want at most 2", n, to)
			}
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records; want 0", n)
		}
		t.Logf("%d notification-sent for %d users", total, distinct)
	})
}
