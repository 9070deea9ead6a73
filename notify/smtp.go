package notify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"regexp"
	"strings"
	"sync"
	"time"

	gomail "github.com/wneessen/go-mail"
	"github.com/wneessen/go-mail/smtp"

	"github.com/eventrouter/eventrouter/retry"
)

// SMTPConfig says how to reach the mail server.
type SMTPConfig struct {
	// Host and Port address the server.
	Host string
	Port int
	// TLS is "none", "starttls" (required) or "implicit" (TLS from the
	// first byte, as on port 465).
	TLS string
	// Username and Password authenticate, when Username is set.
	Username string
	Password string
	// From is the sender, such as "Example <noreply@example.com>".
	From string
	// Timeout bounds one delivery, from dialling to the server's reply.
	Timeout time.Duration
	// MaxConnections bounds the connections open at once; default 1.
	MaxConnections int
}

// idleTimeout is how long an idle connection is kept for the next email.
// Servers close idle connections after some minutes (RFC 5321 asks for at
// least five); a connection the server closed anyway is noticed at the
// next MAIL FROM, before anything was sent, and replaced.
const idleTimeout = 30 * time.Second

// SMTP delivers notifications as email, over a pool of connections that
// it keeps open between emails.
type SMTP struct {
	cfg       SMTPConfig
	opts      []gomail.Option
	domain    string
	templates *Templates
	logger    *slog.Logger

	// slots holds a token per email being sent, each on a connection of
	// its own: it bounds the connections open at once.
	slots chan struct{}
	// idle holds connections kept for the next email, most recent last.
	mu     sync.Mutex
	idle   []*conn
	closed bool
	// quits counts the goodbyes under way, for Close.
	quits sync.WaitGroup
}

// conn is one connection to the server.
type conn struct {
	client *gomail.Client
	smtp   *smtp.Client
	used   time.Time
}

// Dependency is the name under which the SMTP notifier reports an outage
// and a reply (see retry.Unavailable and retry.Reached).
const Dependency = "smtp"

// NewSMTP checks cfg and returns a notifier that logs each email it
// delivers to logger. It makes no connection; Close closes those it made.
func NewSMTP(cfg SMTPConfig, templates *Templates, logger *slog.Logger) (*SMTP, error) {
	from, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("smtp from %q: %w", cfg.From, err)
	}
	opts := []gomail.Option{gomail.WithPort(cfg.Port), gomail.WithTimeout(cfg.Timeout),
		// No NOOP before a message and no RSET after it: round trips
		// that check nothing (a connection the server dropped fails at MAIL
		// FROM, before anything is sent), and the RSET would stand between
		// the server's acceptance and the ledger write. A new MAIL FROM
		// after a finished transaction needs no RSET (RFC 5321 4.1.4).
		gomail.WithoutNoop(), gomail.WithoutRset()}
	switch cfg.TLS {
	case "none":
		opts = append(opts, gomail.WithTLSPolicy(gomail.NoTLS))
	case "starttls":
		opts = append(opts, gomail.WithTLSPolicy(gomail.TLSMandatory))
	case "implicit":
		opts = append(opts, gomail.WithSSL())
	default:
		return nil, fmt.Errorf("smtp tls %q: want none, starttls or implicit", cfg.TLS)
	}
	if cfg.Username != "" {
		opts = append(opts, gomail.WithSMTPAuth(gomail.SMTPAuthAutoDiscover),
			gomail.WithUsername(cfg.Username), gomail.WithPassword(cfg.Password))
	}
	domain := from.Address[strings.LastIndexByte(from.Address, '@')+1:]
	return &SMTP{cfg: cfg, opts: opts, domain: domain, templates: templates, logger: logger,
		slots: make(chan struct{}, max(cfg.MaxConnections, 1))}, nil
}

// Channel returns "email".
func (*SMTP) Channel() string { return "email" }

// Send renders m and delivers it. A refused connection, a timeout or a 421
// reply is retry.Unavailable: the server is down, and the route waits for
// it. Another 4xx reply is transient. A 5xx reply to the recipient or the
// content is retry.Permanent, with the server's reply as the reason.
//
// Send returns as soon as the server has accepted the message (its reply
// to the end of DATA): the email is sent, and the caller records it at
// once. The connection is kept for the next email; one that the server
// dropped right after the acceptance changes nothing: the next email finds
// it closed at MAIL FROM, before sending anything, and dials again. Only
// an error before the acceptance can lead to a second attempt. Errors
// never carry the recipient's address.
func (s *SMTP) Send(ctx context.Context, m Message) error {
	subject, text, html, err := s.templates.Render(m)
	if err != nil {
		return retry.Permanent(err)
	}
	msg := gomail.NewMsg()
	if err := msg.From(s.cfg.From); err != nil {
		return retry.Permanent(fmt.Errorf("smtp from: %w", err))
	}
	if err := msg.To(m.Email); err != nil {
		return retry.Permanent(fmt.Errorf("recipient address of user %s is not valid", m.UserID))
	}
	msg.Subject(subject)
	msg.SetBodyString(gomail.TypeTextPlain, text)
	msg.AddAlternativeString(gomail.TypeTextHTML, html)
	msg.SetDate()
	// The same notification always has the same Message-ID, so a copy sent
	// again after a crash can be recognised as one.
	sum := sha256.Sum256([]byte(m.Key))
	messageID := hex.EncodeToString(sum[:16]) + "@" + s.domain
	msg.SetMessageIDWithValue(messageID)

	select {
	case s.slots <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("smtp: waiting for a connection: %w", ctx.Err())
	}
	defer func() { <-s.slots }()
	c, reused := s.take()
	for {
		if c == nil {
			if c, err = s.dial(ctx, m.Email); err != nil {
				return err
			}
		}
		err = c.client.SendWithSMTPClient(c.smtp, msg)
		if msg.IsDelivered() || !reused || !stale(err) {
			break
		}
		// The server closed the idle connection before this email's MAIL
		// FROM: nothing was sent, so a new connection may send it.
		s.logger.Debug("smtp connection was closed by the server; dialling a new one", "err", redact(err, m.Email).Error())
		s.quit(c, m.Email)
		c, reused = nil, false
	}
	if msg.IsDelivered() {
		s.put(c)
		retry.Reached(ctx, Dependency)
		s.logger.LogAttrs(ctx, slog.LevelInfo, "email sent",
			slog.String("template", m.Template), slog.String("user_id", m.UserID.String()),
			slog.String("message_id", messageID))
		s.logger.LogAttrs(ctx, slog.LevelDebug, "email recipient", slog.String("user_id", m.UserID.String()), slog.String("email", m.Email))
		return nil
	}
	// After a failed transaction the connection's state is not worth
	// trusting.
	s.quit(c, m.Email)
	var se *gomail.SendError
	if errors.As(err, &se) && se.ErrorCode() > 0 {
		// The server answered: it is up, whatever it said.
		retry.Reached(ctx, Dependency)
	}
	return classify(redact(err, m.Email), s.cfg.Host, s.cfg.Port)
}

// dial opens a connection.
func (s *SMTP) dial(ctx context.Context, email string) (*conn, error) {
	client, err := gomail.NewClient(s.cfg.Host, s.opts...)
	if err != nil {
		return nil, fmt.Errorf("smtp client: %w", err)
	}
	dialCtx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	sc, err := client.DialToSMTPClientWithContext(dialCtx)
	if err != nil {
		return nil, classify(redact(fmt.Errorf("dial failed: %w", err), email), s.cfg.Host, s.cfg.Port)
	}
	return &conn{client: client, smtp: sc}, nil
}

// take returns the most recently used idle connection, if one is fresh
// enough; it closes the stale ones.
func (s *SMTP) take() (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed && len(s.idle) > 0 {
		c := s.idle[len(s.idle)-1]
		s.idle = s.idle[:len(s.idle)-1]
		if time.Since(c.used) < idleTimeout {
			return c, true
		}
		s.quitLocked(c, "")
	}
	return nil, false
}

// put keeps c for the next email.
func (s *SMTP) put(c *conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		s.quitLocked(c, "")
		return
	}
	c.used = time.Now()
	s.idle = append(s.idle, c)
}

// quit says goodbye on c in the background, bounded by the timeout: its
// failure, such as a connection the server already dropped, changes
// nothing.
func (s *SMTP) quit(c *conn, email string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.quitLocked(c, email)
}

func (s *SMTP) quitLocked(c *conn, email string) {
	s.quits.Add(1)
	go func() {
		defer s.quits.Done()
		if err := c.client.CloseWithSMTPClient(c.smtp); err != nil {
			s.logger.Debug("smtp goodbye failed", "err", redact(err, email).Error())
		}
	}()
}

// Close says goodbye on the idle connections and waits for every goodbye
// under way. Emails still being sent keep their connections until they
// return, and those are closed then.
func (s *SMTP) Close() error {
	s.mu.Lock()
	s.closed = true
	for _, c := range s.idle {
		s.quitLocked(c, "")
	}
	s.idle = nil
	s.mu.Unlock()
	s.quits.Wait()
	return nil
}

// stale reports whether err says that a connection kept open was closed
// before the email's MAIL FROM was accepted: nothing of the email was
// sent.
func stale(err error) bool {
	var se *gomail.SendError
	if !errors.As(err, &se) {
		return false
	}
	// Many servers answer the first command on a connection they timed
	// out with 421 before they close it.
	return se.Reason == gomail.ErrConnCheck || se.Reason == gomail.ErrSMTPMailFrom && (se.ErrorCode() == 0 || se.ErrorCode() == 421)
}

// redacted is an error whose text has the recipient's address taken out;
// it still wraps the original, so its kind can be told.
type redacted struct {
	err  error
	text string
}

func (r *redacted) Error() string { return r.text }

func (r *redacted) Unwrap() error { return r.err }

// redact takes the address out of err's text: mail servers quote the
// recipient in their replies, and the text becomes a log line and a poison
// reason.
func redact(err error, address string) error {
	if err == nil || address == "" {
		return err
	}
	re := regexp.MustCompile(`(?i)` + regexp.QuoteMeta(address))
	text := err.Error()
	if !re.MatchString(text) {
		return err
	}
	return &redacted{err: err, text: re.ReplaceAllString(text, "<recipient>")}
}

func classify(err error, host string, port int) error {
	if err == nil {
		return nil
	}
	var se *gomail.SendError
	if !errors.As(err, &se) || se.Reason == gomail.ErrConnCheck || se.ErrorCode() == 421 {
		// Dial, TLS and authentication failures, timeouts, and "service
		// not available": the server, or our access to it, is down.
		return retry.Unavailable(Dependency, fmt.Errorf("smtp server %s:%d: %w", host, port, err))
	}
	code := se.ErrorCode()
	switch {
	case code >= 500 && (se.Reason == gomail.ErrSMTPRcptTo || se.Reason == gomail.ErrSMTPData || se.Reason == gomail.ErrSMTPDataClose):
		return retry.Permanent(fmt.Errorf("smtp server rejected the email: %w", err))
	case code >= 500:
		// A rejected sender or a refused command affects every email: a
		// configuration problem, not this message's.
		return retry.Unavailable(Dependency, fmt.Errorf("smtp server %s:%d refused: %w", host, port, err))
	default:
		return fmt.Errorf("smtp server %s:%d: %w", host, port, err)
	}
}
