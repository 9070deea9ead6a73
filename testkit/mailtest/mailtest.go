// Package mailtest runs a real SMTP server, Mailpit, for tests, and reads
// what it received through Mailpit's HTTP API.
package mailtest

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"
)

// BinaryEnv names the variable holding the Mailpit binary's path; make test
// builds Mailpit with scripts/mailpit.sh and sets it.
const BinaryEnv = "EVENTROUTER_TEST_MAILPIT"

// Server is a running Mailpit.
type Server struct {
	t        testing.TB
	bin      string
	args     []string
	smtpPort int
	httpPort int
	dbPath   string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// Start starts Mailpit on free loopback ports with extra flags, and stops it
// when the test ends. It skips the test when Mailpit is not available
// (fails it under CI=true).
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	bin := os.Getenv(BinaryEnv)
	if bin == "" {
		if path, err := exec.LookPath("mailpit"); err == nil {
			bin = path
		}
	}
	if bin == "" {
		msg := BinaryEnv + " is not set and mailpit is not on PATH; make test builds it (scripts/mailpit.sh)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	s := &Server{
		t: t, bin: bin, args: extra,
		smtpPort: freePort(t), httpPort: freePort(t),
		dbPath: filepath.Join(t.TempDir(), "mailpit.db"),
	}
	s.Restart()
	t.Cleanup(s.Stop)
	return s
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Host returns the SMTP host.
func (s *Server) Host() string { return "127.0.0.1" }

// Port returns the SMTP port.
func (s *Server) Port() int { return s.smtpPort }

// Stop stops Mailpit; what it received is kept for Restart.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// RestartWith stops Mailpit and starts it again on the same ports and
// database with other extra flags.
func (s *Server) RestartWith(extra ...string) {
	s.t.Helper()
	s.Stop()
	s.mu.Lock()
	s.args = extra
	s.mu.Unlock()
	s.Restart()
}

// Restart starts Mailpit again on the same ports and database, and waits
// until its API answers.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	args := append([]string{
		"--smtp", fmt.Sprintf("127.0.0.1:%d", s.smtpPort),
		"--listen", fmt.Sprintf("127.0.0.1:%d", s.httpPort),
		"--database", s.dbPath,
		"--max", "100000",
		"--disable-version-check",
		"--smtp-disable-rdns",
		"--quiet",
	}, s.args...)
	cmd := exec.Command(s.bin, args...)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start mailpit: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := s.total(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("mailpit did not answer within 30s:\n%s", out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Message is one received email.
type Message struct {
	ID        string
	MessageID string
	Subject   string
	To        []string
}

type apiAddress struct {
	Address string `json:"Address"`
}

type apiMessage struct {
	ID        string       `json:"ID"`
	MessageID string       `json:"MessageID"`
	Subject   string       `json:"Subject"`
	To        []apiAddress `json:"To"`
}

func (s *Server) get(path string, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", s.httpPort, path), nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

func (s *Server) total() (int, error) {
	var page struct {
		Total int `json:"total"`
	}
	err := s.get("/api/v1/messages?limit=1", &page)
	return page.Total, err
}

// Total returns how many emails Mailpit holds.
func (s *Server) Total() int {
	s.t.Helper()
	n, err := s.total()
	if err != nil {
		s.t.Fatalf("mailpit: %v", err)
	}
	return n
}

// Messages returns every email Mailpit holds.
func (s *Server) Messages() []Message {
	s.t.Helper()
	var all []Message
	for start := 0; ; start += 500 {
		var page struct {
			Total    int          `json:"total"`
			Messages []apiMessage `json:"messages"`
		}
		if err := s.get("/api/v1/messages?limit=500&start="+strconv.Itoa(start), &page); err != nil {
			s.t.Fatalf("mailpit: %v", err)
		}
		for _, m := range page.Messages {
			msg := Message{ID: m.ID, MessageID: m.MessageID, Subject: m.Subject}
			for _, to := range m.To {
				msg.To = append(msg.To, to.Address)
			}
			all = append(all, msg)
		}
		if len(page.Messages) == 0 || start+len(page.Messages) >= page.Total {
			return all
		}
	}
}

// Body returns an email's text and HTML bodies.
func (s *Server) Body(id string) (text, html string) {
	s.t.Helper()
	var m struct {
		Text string `json:"Text"`
		HTML string `json:"HTML"`
	}
	if err := s.get("/api/v1/message/"+id, &m); err != nil {
		s.t.Fatalf("mailpit: %v", err)
	}
	return m.Text, m.HTML
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
