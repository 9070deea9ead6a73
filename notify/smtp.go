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
	"time"

	gomail "github.com/wneessen/go-mail"

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
}

// SMTP delivers notifications as email.
type SMTP struct {
	cfg       SMTPConfig
	opts      []gomail.Option
	domain    string
	templates *Templates
	logger    *slog.Logger
}

// Dependency is the name under which the SMTP notifier reports an outage
// and a reply (see retry.Unavailable and retry.Reached).
const Dependency = "smtp"

// NewSMTP checks cfg and returns a notifier that dials the server for each
// email and logs each email it delivers to logger. It makes no connection.
func NewSMTP(cfg SMTPConfig, templates *Templates, logger *slog.Logger) (*SMTP, error) {
	from, err := mail.ParseAddress(cfg.From)
	if err != nil {
		return nil, fmt.Errorf("smtp from %q: %w", cfg.From, err)
	}
	opts := []gomail.Option{gomail.WithPort(cfg.Port), gomail.WithTimeout(cfg.Timeout),
		// One message per connection: a NOOP before it and an RSET after it
		// are round trips that check nothing, and the RSET would stand
		// between the server's acceptance and the ledger write.
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
	return &SMTP{cfg: cfg, opts: opts, domain: domain, templates: templates, logger: logger}, nil
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
// once. The goodbye (QUIT) follows in the background, bounded by the
// timeout; its failure, such as a connection dropped right after the
// acceptance, changes nothing. Errors never carry the recipient's address.
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

	client, err := gomail.NewClient(s.cfg.Host, s.opts...)
	if err != nil {
		return fmt.Errorf("smtp client: %w", err)
	}
	dialCtx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	conn, err := client.DialToSMTPClientWithContext(dialCtx)
	if err != nil {
		return classify(redact(fmt.Errorf("dial failed: %w", err), m.Email), s.cfg.Host, s.cfg.Port)
	}
	err = client.SendWithSMTPClient(conn, msg)
	go func() {
		if err := client.CloseWithSMTPClient(conn); err != nil {
			s.logger.Debug("smtp goodbye failed", "err", redact(err, m.Email).Error())
		}
	}()
	if msg.IsDelivered() {
		retry.Reached(ctx, Dependency)
		s.logger.LogAttrs(ctx, slog.LevelInfo, "email sent",
			slog.String("template", m.Template), slog.String("user_id", m.UserID.String()),
			slog.String("message_id", messageID))
		s.logger.LogAttrs(ctx, slog.LevelDebug, "email recipient", slog.String("user_id", m.UserID.String()), slog.String("email", m.Email))
		return nil
	}
	var se *gomail.SendError
	if errors.As(err, &se) && se.ErrorCode() > 0 {
		// The server answered: it is up, whatever it said.
		retry.Reached(ctx, Dependency)
	}
	return classify(redact(err, m.Email), s.cfg.Host, s.cfg.Port)
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
