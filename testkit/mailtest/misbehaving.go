package mailtest

import (
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"
)

// Behaviour says how a Misbehaving server treats each connection. The zero
// value is a well-behaved server.
type Behaviour struct {
	// Greeting replaces the "220" greeting, such as "421 busy".
	Greeting string
	// RcptReply replaces the "250" reply to RCPT TO; "%s" in it is
	// replaced by the recipient, as real servers quote it.
	RcptReply string
	// DataReply replaces the "250" reply to the end of DATA. Only a 250
	// reply counts the message as accepted.
	DataReply string
	// DropAfterAccept closes the connection right after the 250 to DATA,
	// so the client's next command (RSET or QUIT) fails.
	DropAfterAccept bool
	// DropBeforeReply closes the connection after the message's final "."
	// without any reply: the client cannot tell whether it was accepted.
	DropBeforeReply bool
	// Delay is waited before every reply.
	Delay time.Duration
	// StallQuit never answers QUIT: the client waits until its timeout, or
	// the server is closed.
	StallQuit bool
	// AcceptDelay, if set, says how long to wait before accepting a
	// message for the recipient, such as to make some users slow.
	AcceptDelay func(rcpt string) time.Duration
	// ReuseReply, if set, answers a second MAIL FROM on one connection
	// and then closes it, as servers that timed out an idle connection
	// answer "421 idle timeout".
	ReuseReply string
}

// Accepted is a message a Misbehaving server answered 250 to.
type Accepted struct {
	// To is the recipient.
	To string
	// MessageID is the Message-ID header.
	MessageID string
}

// Misbehaving is a small SMTP server written for tests that need a server
// to fail in ways a well-behaved one never does.
type Misbehaving struct {
	ln  net.Listener
	beh Behaviour

	mu       sync.Mutex
	accepted []Accepted
	conns    int
	open     map[net.Conn]struct{}
	verbs    []string
	wg       sync.WaitGroup
	closed   chan struct{}
}

// StartMisbehaving starts a server that behaves as b on a free loopback
// port, and stops it when the test ends.
func StartMisbehaving(t testing.TB, b Behaviour) *Misbehaving {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &Misbehaving{ln: ln, beh: b, closed: make(chan struct{}), open: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.serve()
	t.Cleanup(s.Close)
	return s
}

// Host returns the SMTP host.
func (s *Misbehaving) Host() string { return "127.0.0.1" }

// Port returns the SMTP port.
func (s *Misbehaving) Port() int { return s.ln.Addr().(*net.TCPAddr).Port }

// Close stops the server, closes the connections it still has, as a
// server that goes away does, and waits for them to end.
func (s *Misbehaving) Close() {
	select {
	case <-s.closed:
	default:
		close(s.closed)
	}
	_ = s.ln.Close()
	s.mu.Lock()
	for c := range s.open {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// Commands returns the SMTP commands the server received, in order.
func (s *Misbehaving) Commands() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.verbs...)
}

// Accepted returns the messages the server answered 250 to, in order.
func (s *Misbehaving) Accepted() []Accepted {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Accepted(nil), s.accepted...)
}

// Connections returns how many connections the server took.
func (s *Misbehaving) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns
}

func (s *Misbehaving) serve() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns++
		s.open[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.open, c)
				s.mu.Unlock()
				c.Close()
			}()
			_ = c.SetDeadline(time.Now().Add(time.Minute))
			s.session(textproto.NewConn(c))
		}()
	}
}

func (s *Misbehaving) reply(tc *textproto.Conn, line string) error {
	if s.beh.Delay > 0 {
		time.Sleep(s.beh.Delay) // the misbehaviour under test: a slow server
	}
	return tc.PrintfLine("%s", line)
}

func or(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// session speaks just enough SMTP for go-mail: EHLO, MAIL, RCPT, DATA,
// RSET, NOOP and QUIT.
func (s *Misbehaving) session(tc *textproto.Conn) {
	greeting := or(s.beh.Greeting, "220 misbehaving ESMTP")
	if s.reply(tc, greeting) != nil || !strings.HasPrefix(greeting, "2") {
		return
	}
	var rcpt string
	mails := 0
	for {
		line, err := tc.ReadLine()
		if err != nil {
			return
		}
		verb := strings.ToUpper(strings.Fields(line + " x")[0])
		s.mu.Lock()
		s.verbs = append(s.verbs, verb)
		s.mu.Unlock()
		switch verb {
		case "EHLO":
			err = s.reply(tc, "250-misbehaving\r\n250-8BITMIME\r\n250 SMTPUTF8")
		case "HELO", "NOOP", "RSET":
			err = s.reply(tc, "250 ok")
		case "MAIL":
			rcpt = ""
			if mails++; mails > 1 && s.beh.ReuseReply != "" {
				_ = s.reply(tc, s.beh.ReuseReply)
				return
			}
			err = s.reply(tc, "250 ok")
		case "RCPT":
			rcpt = strings.Trim(line[strings.IndexByte(line, ':')+1:], " <>")
			err = s.reply(tc, or(strings.ReplaceAll(s.beh.RcptReply, "%s", "<"+rcpt+">"), "250 ok"))
		case "DATA":
			if err = s.reply(tc, "354 go ahead"); err != nil {
				return
			}
			body, rerr := tc.ReadDotLines()
			if rerr != nil {
				return
			}
			if s.beh.DropBeforeReply {
				return
			}
			if s.beh.AcceptDelay != nil {
				select {
				case <-time.After(s.beh.AcceptDelay(rcpt)): // the misbehaviour under test
				case <-s.closed:
					return
				}
			}
			dataReply := or(s.beh.DataReply, "250 accepted")
			accepted := strings.HasPrefix(dataReply, "250")
			if accepted {
				// Counted before the reply, so a test that saw the client
				// finish also sees the count.
				s.mu.Lock()
				s.accepted = append(s.accepted, Accepted{To: rcpt, MessageID: header(body, "Message-Id")})
				s.mu.Unlock()
			}
			if err = s.reply(tc, dataReply); err != nil || (accepted && s.beh.DropAfterAccept) {
				return
			}
		case "QUIT":
			if s.beh.StallQuit {
				<-s.closed
				return
			}
			_ = s.reply(tc, "221 bye")
			return
		default:
			err = s.reply(tc, fmt.Sprintf("502 %s not implemented", verb))
		}
		if err != nil {
			return
		}
	}
}

func header(lines []string, name string) string {
	for _, l := range lines {
		if l == "" {
			break
		}
		if k, v, ok := strings.Cut(l, ":"); ok && strings.EqualFold(k, name) {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
