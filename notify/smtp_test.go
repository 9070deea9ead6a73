package notify_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
)

const recipient = "Private.Person@example.com"

func newSMTP(t *testing.T, port int, timeout time.Duration, logs *bytes.Buffer) *notify.SMTP {
	t.Helper()
	templates, err := notify.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := notify.NewSMTP(notify.SMTPConfig{
		Host: "127.0.0.1", Port: port, TLS: "none", From: "eventrouter <welcome@example.com>", Timeout: timeout,
	}, templates, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelInfo})))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// send sends one welcome email while another message holds a breaker that
// smtp tripped, and reports whether the attempt reached the server (the
// breaker resumed).
func send(s *notify.SMTP) (err error, reached bool) {
	b := &retry.Breaker{MinWait: time.Nanosecond}
	retrying, release, done := make(chan struct{}), make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		calls := 0
		_, _ = b.Middleware(func(*message.Message) ([]*message.Message, error) {
			if calls++; calls == 1 {
				return nil, retry.Unavailable(notify.Dependency, errors.New("down"))
			}
			close(retrying)
			<-release
			return nil, nil
		})(message.NewMessage("holder", nil))
	}()
	<-retrying
	_, err = b.Middleware(func(msg *message.Message) ([]*message.Message, error) {
		return nil, s.Send(msg.Context(), notify.Message{
			Template: "welcome", UserID: events.NewUserID("42"), Email: recipient, EventID: "t/0/1", Key: "welcome/42",
		})
	})(message.NewMessage("1", nil))
	paused, _ := b.Paused()
	close(release)
	<-done
	return err, !paused
}

func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// TestSMTPAgainstMisbehavingServers sends one email to a real SMTP server
// that misbehaves in one way each, and checks what the router will do with
// the result: nothing more (sent), retry, poison or pause.
func TestSMTPAgainstMisbehavingServers(t *testing.T) {
	tests := []struct {
		name     string
		beh      *mailtest.Behaviour // nil: nothing listens
		timeout  time.Duration
		kind     string // "sent", "transient", "permanent", "unavailable"
		accepted int
		reached  bool
	}{
		{name: "well behaved", beh: &mailtest.Behaviour{}, kind: "sent", accepted: 1, reached: true},
		// go-mail reports the failed QUIT; the server has the email, so
		// sending it again would be a duplicate.
		{name: "drops the connection after accepting", beh: &mailtest.Behaviour{DropAfterAccept: true}, kind: "sent", accepted: 1, reached: true},
		// No reply to the end of DATA: the outcome is unknown, and a retry
		// is the only way not to lose the email.
		{name: "drops the connection before replying to DATA", beh: &mailtest.Behaviour{DropBeforeReply: true}, kind: "transient"},
		{name: "rejects the recipient", beh: &mailtest.Behaviour{RcptReply: "550 5.1.1 %s: recipient address rejected"}, kind: "permanent", reached: true},
		{name: "rejects the content", beh: &mailtest.Behaviour{DataReply: "554 5.7.1 message refused"}, kind: "permanent", reached: true},
		{name: "defers the content", beh: &mailtest.Behaviour{DataReply: "451 4.3.0 try again later"}, kind: "transient", reached: true},
		{name: "greets with 421", beh: &mailtest.Behaviour{Greeting: "421 4.3.2 too busy"}, kind: "unavailable"},
		{name: "answers too slowly", beh: &mailtest.Behaviour{Delay: 500 * time.Millisecond}, timeout: 200 * time.Millisecond, kind: "unavailable"},
		{name: "refuses connections", kind: "unavailable"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var port int
			var server *mailtest.Misbehaving
			if tt.beh != nil {
				server = mailtest.StartMisbehaving(t, *tt.beh)
				port = server.Port()
			} else {
				port = closedPort(t)
			}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			var logs bytes.Buffer
			s := newSMTP(t, port, timeout, &logs)
			var err error
			var reached bool
			if tt.kind == "unavailable" {
				// Through a breaker the outage would hold the message; call
				// Send directly to see the classification.
				err = s.Send(context.Background(), notify.Message{Template: "welcome", UserID: events.NewUserID("42"), Email: recipient, Key: "welcome/42"})
			} else {
				err, reached = send(s)
			}
			var got string
			switch {
			case err == nil:
				got = "sent"
			case retry.IsPermanent(err):
				got = "permanent"
			case retry.IsUnavailable(err):
				got = "unavailable"
			default:
				got = "transient"
			}
			if got != tt.kind {
				t.Errorf("Send = %v (%s); want %s", err, got, tt.kind)
			}
			if tt.kind != "unavailable" && reached != tt.reached {
				t.Errorf("attempt reached the server = %v; want %v", reached, tt.reached)
			}
			if server != nil {
				if n := len(server.Accepted()); n != tt.accepted {
					t.Errorf("server accepted %d emails; want %d", n, tt.accepted)
				}
			}
			for what, text := range map[string]string{"error": errText(err), "log": logs.String()} {
				if strings.Contains(strings.ToLower(text), strings.ToLower(recipient)) {
					t.Errorf("%s carries the recipient's address: %q", what, text)
				}
			}
			if tt.kind == "sent" && !strings.Contains(logs.String(), "email sent") {
				t.Errorf("log = %q; want an 'email sent' line", logs.String())
			}
		})
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// Send returns once the server accepted the message, without waiting for
// the goodbye: the ledger write follows at once, so the window in which a
// crash repeats the email is that write, not a slow server's QUIT. No NOOP
// or RSET round trip stands in between either.
func TestSMTPReturnsOnAcceptance(t *testing.T) {
	server := mailtest.StartMisbehaving(t, mailtest.Behaviour{StallQuit: true})
	var logs bytes.Buffer
	s := newSMTP(t, server.Port(), time.Minute, &logs)
	done := make(chan error, 1)
	go func() {
		done <- s.Send(context.Background(), notify.Message{Template: "welcome", UserID: events.NewUserID("42"), Email: recipient, Key: "welcome/42"})
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Send = %v; want nil", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Send still waits for the server's reply to QUIT (the timeout is a minute); want it to return on acceptance")
	}
	for _, verb := range server.Commands() {
		if verb == "NOOP" || verb == "RSET" {
			t.Errorf("commands = %v; want no NOOP or RSET round trip", server.Commands())
			break
		}
	}
}

// TestSMTPKeepsConnectionsOpen sends emails one after the other over the
// pool: a well-behaved server sees one connection for all of them; a server
// that drops each connection right after accepting, or answers 421 to the
// next MAIL FROM on it, gets each email exactly once, each on a new
// connection, since the closed connection is noticed at MAIL FROM before
// anything of the next email was sent. Close says goodbye on the idle
// connection.
func TestSMTPKeepsConnectionsOpen(t *testing.T) {
	tests := []struct {
		name      string
		beh       mailtest.Behaviour
		wantConns int
	}{
		{"well behaved", mailtest.Behaviour{}, 1},
		{"drops the connection after accepting", mailtest.Behaviour{DropAfterAccept: true}, 5},
		{"times out kept connections with 421", mailtest.Behaviour{ReuseReply: "421 idle timeout, closing"}, 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := mailtest.StartMisbehaving(t, tt.beh)
			var logs bytes.Buffer
			s := newSMTP(t, server.Port(), 10*time.Second, &logs)
			const emails = 5
			for i := range emails {
				user := strconv.Itoa(i)
				if err := s.Send(context.Background(), notify.Message{Template: "welcome", UserID: events.NewUserID(user), Email: recipient, Key: "welcome/" + user}); err != nil {
					t.Fatalf("Send %d = %v; want nil", i, err)
				}
			}
			if got := len(server.Accepted()); got != emails {
				t.Errorf("got %d emails accepted; want %d", got, emails)
			}
			if got := server.Connections(); got != tt.wantConns {
				t.Errorf("got %d connections; want %d", got, tt.wantConns)
			}
			if err := s.Close(); err != nil {
				t.Fatalf("Close = %v", err)
			}
			if cmds := server.Commands(); tt.wantConns == 1 && cmds[len(cmds)-1] != "QUIT" {
				t.Errorf("got commands ending %v; want QUIT after Close", cmds[len(cmds)-1:])
			}
		})
	}
}

// TestSMTPBoundsConnections sends from many goroutines at once: no more
// connections are open than MaxConnections.
func TestSMTPBoundsConnections(t *testing.T) {
	server := mailtest.StartMisbehaving(t, mailtest.Behaviour{Delay: 5 * time.Millisecond})
	templates, err := notify.LoadTemplates("")
	if err != nil {
		t.Fatal(err)
	}
	s, err := notify.NewSMTP(notify.SMTPConfig{
		Host: "127.0.0.1", Port: server.Port(), TLS: "none", From: "eventrouter <welcome@example.com>",
		Timeout: 10 * time.Second, MaxConnections: 3,
	}, templates, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const emails = 30
	errs := make(chan error, emails)
	for i := range emails {
		go func() {
			user := strconv.Itoa(i)
			errs <- s.Send(context.Background(), notify.Message{Template: "welcome", UserID: events.NewUserID(user), Email: recipient, Key: "welcome/" + user})
		}()
	}
	for range emails {
		if err := <-errs; err != nil {
			t.Fatalf("Send = %v", err)
		}
	}
	if got := len(server.Accepted()); got != emails {
		t.Errorf("got %d emails accepted; want %d", got, emails)
	}
	if got := server.Connections(); got > 3 {
		t.Errorf("got %d connections; want at most 3", got)
	}
}
