package app_test

import (
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
)

func smtpYAML(m *mailtest.Server) string { return smtpAt(m.Host(), m.Port()) }

func userEmail(i int) string { return fmt.Sprintf("user%d@example.com", i) }

// recipients returns the sorted recipients of everything Mailpit holds, and
// how many emails there were.
func recipients(m *mailtest.Server) (distinct []string, total int) {
	seen := map[string]bool{}
	msgs := m.Messages()
	for _, msg := range msgs {
		for _, to := range msg.To {
			if !seen[to] {
				seen[to] = true
				distinct = append(distinct, to)
			}
		}
	}
	sort.Strings(distinct)
	return distinct, len(msgs)
}

func wantRecipients(n int) []string {
	var want []string
	for i := range n {
		want = append(want, userEmail(i))
	}
	sort.Strings(want)
	return want
}

func TestWelcomeEmailsOncePerUser(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 1000
		mail := mailtest.Start(t)
		r := newRoute()
		d := startDaemon(t, testConfig(t, k.Brokers, r, smtpYAML(mail)), app.Options{})
		produceEvents(t, k.Brokers, r.in, 0, users)
		// The same registration published again sends no second email.
		kafkatest.Produce(t, k.Brokers, r.in, event(0, userEmail(0)), event(1, userEmail(1)))

		waitFor(t, 3*time.Minute, "1000 emails", func() bool { return mail.Total() >= users })
		waitFor(t, consumeTimeout, "the repeated registrations handled", func() bool {
			return committed(t, k.Brokers, r.group, r.in, 0) >= users+2
		})
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		got, total := recipients(mail)
		if total != users || strings.Join(got, ",") != strings.Join(wantRecipients(users), ",") {
			t.Fatalf("mailpit holds %d emails to %d addresses; want exactly %d, one to each user", total, len(got), users)
		}
		if n := count(t, k.Brokers, r.out); n != users {
			t.Errorf("notification-sent holds %d records; want %d", n, users)
		}

		msgs := mail.Messages()
		text, html := mail.Body(msgs[0].ID)
		if msgs[0].Subject != "Welcome aboard!" || !strings.Contains(text, msgs[0].To[0]) || !strings.Contains(html, "<h1>Welcome aboard!</h1>") {
			t.Errorf("email = subject %q, text %q; want the welcome template for %s", msgs[0].Subject, text, msgs[0].To[0])
		}
		if !strings.HasSuffix(msgs[0].MessageID, "@example.com") {
			t.Errorf("Message-ID = %q; want a stable id at the sender's domain", msgs[0].MessageID)
		}
	})
}

func TestRejectedRecipientIsPoisonedWithReply(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		mail := mailtest.Start(t, "--smtp-allowed-recipients", `@example\.com$`)
		r := newRoute()
		startDaemon(t, testConfig(t, k.Brokers, r, smtpYAML(mail)), app.Options{})
		kafkatest.Produce(t, k.Brokers, r.in, event(1, "someone@blocked.test"), event(2, userEmail(2)))

		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, 1, consumeTimeout)
		if len(poisoned) != 1 {
			t.Fatalf("got %d poison records; want the rejected recipient's event", len(poisoned))
		}
		reason, _ := kafkatest.Header(poisoned[0], middleware.ReasonForPoisonedKey)
		if !strings.Contains(reason, "rejected") || !strings.Contains(reason, "55") {
			t.Errorf("reason_poisoned = %q; want the server's 5xx reply", reason)
		}
		if got := kafkatest.Consume(t, k.Brokers, r.out, 1, consumeTimeout); len(got) != 1 {
			t.Fatalf("the next event yielded %d notification-sent; want 1", len(got))
		}
		if n := mail.Total(); n != 1 {
			t.Errorf("mailpit holds %d emails; want 1", n)
		}
	})
}

func TestMailServerOutagePoisonsNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("stops the mail server for 30 s")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 100
		mail := mailtest.Start(t)
		r := newRoute()
		d := startDaemon(t, testConfig(t, k.Brokers, r, smtpYAML(mail)), app.Options{})
		produceEvents(t, k.Brokers, r.in, 0, users/2)
		waitFor(t, consumeTimeout, "the first half delivered", func() bool { return mail.Total() >= users/2 })

		mail.Stop()
		produceEvents(t, k.Brokers, r.in, users/2, users)
		time.Sleep(30 * time.Second)
		if !strings.Contains(d.logs.String(), "route paused") {
			t.Errorf("no 'route paused' in the log during the outage")
		}
		mail.Restart()

		waitFor(t, 2*time.Minute, "every email after the outage", func() bool { return mail.Total() >= users })
		waitFor(t, consumeTimeout, "every notification-sent", func() bool { return count(t, k.Brokers, r.out) >= users })
		if err := d.stop(); err != nil {
			t.Fatalf("stop: %v", err)
		}
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records after a mail server outage; want 0", n)
		}
		got, total := recipients(mail)
		if total != users || len(got) != users {
			t.Errorf("mailpit holds %d emails to %d addresses; want %d", total, len(got), users)
		}
	})
}

func TestSIGKILLWhileSendingEmails(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the daemon several times")
	}
	bin := buildBinary(t)
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users = 300
		mail := mailtest.Start(t)
		r := newRoute()
		// Bounds the emails a kill can catch between the server's
		// acceptance and the ledger write.
		r.maxInFlight = 8
		// One ledger across the restarts, as one instance keeps it.
		path := writeConfig(t, r, filepath.Join(t.TempDir(), "ledger.db"), smtpYAML(mail))
		produceEvents(t, k.Brokers, r.in, 0, users)

		p := startProcess(t, bin, path, k.Brokers)
		for kill := 1; kill <= 3; kill++ {
			target := kill * users / 4
			waitFor(t, 2*time.Minute, fmt.Sprintf("%d emails", target), func() bool { return mail.Total() >= target })
			p.signal(9)
			<-p.done
			t.Logf("SIGKILL %d after %d emails", kill, mail.Total())
			p = startProcess(t, bin, path, k.Brokers)
		}
		waitFor(t, 3*time.Minute, "every user's email", func() bool {
			got, _ := recipients(mail)
			return len(got) >= users
		})
		if err := p.stop(t); err != nil {
			t.Fatalf("stop: %v", err)
		}
		got, total := recipients(mail)
		if strings.Join(got, ",") != strings.Join(wantRecipients(users), ",") {
			t.Errorf("%d users got an email; want all %d", len(got), users)
		}
		// The ledger records an email right after the server accepted it;
		// only a kill inside that window (one group-committed fsync, well
		// under a millisecond here, against the SMTP exchange before it)
		// sends it again. At most max_in_flight records are in flight, so
		// each kill can repeat at most that many emails.
		if dups := total - len(got); dups > 3*r.maxInFlight {
			t.Errorf("%d duplicate emails over 3 kills; want at most %d, max_in_flight per kill", dups, 3*r.maxInFlight)
		}
		fmt.Printf("SIGKILL x3 while sending on %s: %d users, %d emails, %d duplicates\n", k.Name, users, total, total-len(got))
	})
}
