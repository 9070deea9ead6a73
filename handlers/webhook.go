package handlers

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http/httpguts"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/retry"
)

// Headers the webhook handler sets on every request.
const (
	// SignatureHeader carries "sha256=<hex HMAC-SHA256 of the exact body>"
	// under the route's secret, when it has one.
	SignatureHeader = "X-Eventrouter-Signature"
	// IdempotencyKeyHeader carries the event's stable identity (see
	// Record.ID): a receiver that dedupes on it acts once per event,
	// however often the router delivers it.
	IdempotencyKeyHeader = "Idempotency-Key"
)

// WebhookDependency names the receiver for the route's breaker.
const WebhookDependency = "webhook"

// maxExcerpt bounds the part of a refusing receiver's body kept in the
// error, and so in the poisoned record's reason.
const maxExcerpt = 512

// WebhookOptions are the options of the webhook handler.
type WebhookOptions struct {
	// URL receives a POST per event; http or https.
	URL string `yaml:"url"`
	// Headers are added to every request, such as an Authorization the
	// receiver expects. Keep secrets out of the file: use ${VAR}.
	Headers map[string]string `yaml:"headers"`
	// Timeout bounds one request, from dialling to the end of the answer.
	Timeout time.Duration `yaml:"timeout"`
	// MaxConnections bounds the connections open to the receiver.
	MaxConnections int `yaml:"max_connections"`
	// ContentType is the body's Content-Type.
	ContentType string `yaml:"content_type"`
	// Template, when set, is a Go text/template that makes the body from
	// the event instead of sending its payload as it is. It sees .Payload
	// (text), .Event (the payload decoded from JSON; nil when it is not
	// JSON) and .Record (topic, partition, offset, key, ID), and the
	// function json, which encodes a value as JSON.
	Template string `yaml:"template"`
	// SecretEnv or SecretFile hold the key that signs each body (see
	// SignatureHeader); without either, requests are not signed.
	SecretEnv  string `yaml:"secret_env"`
	SecretFile string `yaml:"secret_file"`
}

func webhookDefaults() WebhookOptions {
	return WebhookOptions{Timeout: 10 * time.Second, MaxConnections: 16, ContentType: "application/json"}
}

// reservedHeaders are set by the handler, or by net/http, and may not be
// overridden by the options.
var reservedHeaders = map[string]bool{
	"Content-Length": true, "Host": true, "Transfer-Encoding": true, "Connection": true,
	"Content-Type": true, http.CanonicalHeaderKey(SignatureHeader): true, IdempotencyKeyHeader: true,
}

// Validate checks the options once they are decoded.
func (o WebhookOptions) Validate() error {
	var errs []error
	add := func(key, format string, args ...any) {
		errs = append(errs, &config.KeyError{Key: key, Msg: fmt.Sprintf(format, args...)})
	}
	switch u, err := url.Parse(o.URL); {
	case o.URL == "":
		add("url", "is missing")
	case err != nil:
		add("url", "does not parse as a URL")
	case u.Scheme != "http" && u.Scheme != "https":
		add("url", "must start with http:// or https://, got scheme %q", u.Scheme)
	case u.Host == "":
		add("url", "has no host")
	case u.User != nil:
		add("url", "holds credentials, which would show in logs; send them in a header from the environment instead")
	}
	seen := map[string]string{}
	for _, name := range slices.Sorted(maps.Keys(o.Headers)) {
		value := o.Headers[name]
		canonical := http.CanonicalHeaderKey(name)
		other, twice := seen[canonical]
		seen[canonical] = name
		switch {
		case twice:
			add("headers."+name, "is the header %s again (header names ignore case)", other)
		case value == "":
			add("headers."+name, "is empty; remove it, or give it a value")
		case !httpguts.ValidHeaderFieldName(name):
			add("headers."+name, "is not a valid HTTP header name")
		case reservedHeaders[http.CanonicalHeaderKey(name)]:
			add("headers."+name, "is set by the handler and cannot be overridden")
		case !httpguts.ValidHeaderFieldValue(value):
			add("headers."+name, "has a value that is not a valid HTTP header value (line breaks or control characters)")
		}
	}
	if o.Timeout <= 0 {
		add("timeout", "must be positive, got %s", o.Timeout)
	}
	if o.MaxConnections < 1 {
		add("max_connections", "must be at least 1, got %d", o.MaxConnections)
	}
	if !httpguts.ValidHeaderFieldValue(o.ContentType) || o.ContentType == "" {
		add("content_type", "must be a valid Content-Type, got %q", o.ContentType)
	}
	if o.SecretEnv != "" && o.SecretFile != "" {
		add("secret_env", "and secret_file are both set; set one")
	}
	if o.Template != "" {
		if _, err := parseBody(o.Template); err != nil {
			add("template", "%v", err)
		}
	}
	return errors.Join(errs...)
}

func parseBody(text string) (*template.Template, error) {
	return template.New("body").Option("missingkey=error").Funcs(template.FuncMap{
		"json": func(v any) (string, error) {
			b, err := json.Marshal(v)
			return string(b), err
		},
	}).Parse(text)
}

// Webhook POSTs each event to a URL. A 2xx answer is success. 429 and 503
// pause the route for the answer's Retry-After (or the breaker's wait), as
// a receiver that cannot be reached does; other 5xx, 408 and failures
// mid-request are retried; any other answer poisons the record with the
// status and an excerpt of the body. Redirects are not followed.
type Webhook struct {
	client   *http.Client
	url      string
	shown    string
	headers  http.Header
	template *template.Template
	secret   []byte
	opts     WebhookOptions
	// answers counts the receiver's answers by status code, and requests
	// that got none as "none"; nil counts nothing.
	answers *prometheus.CounterVec
}

func newWebhook(o WebhookOptions, s Services) (Handler, error) {
	secret, err := s.Secret("secret", o.SecretEnv, o.SecretFile)
	if err != nil {
		return nil, err
	}
	h, err := NewWebhook(o, []byte(secret))
	if err != nil {
		return nil, err
	}
	h.answers, err = RegisterCounter(s.Metrics(), prometheus.CounterOpts{
		Name: "eventrouter_webhook_responses_total",
		Help: "Webhook requests by the receiver's status code; code \"none\" for requests that got no answer.",
	}, "code")
	if err != nil {
		return nil, fmt.Errorf("webhook metrics: %w", err)
	}
	return h, nil
}

// NewWebhook returns the webhook handler for valid options o, signing with
// secret unless it is empty.
func NewWebhook(o WebhookOptions, secret []byte) (*Webhook, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(o.URL)
	h := &Webhook{
		url: o.URL, shown: redactURL(u), headers: http.Header{}, secret: secret, opts: o,
		client: &http.Client{
			Transport: &http.Transport{
				Proxy:                 http.ProxyFromEnvironment,
				DialContext:           (&net.Dialer{Timeout: o.Timeout, KeepAlive: 30 * time.Second}).DialContext,
				ForceAttemptHTTP2:     true,
				MaxIdleConns:          o.MaxConnections,
				MaxIdleConnsPerHost:   o.MaxConnections,
				MaxConnsPerHost:       o.MaxConnections,
				IdleConnTimeout:       90 * time.Second,
				TLSHandshakeTimeout:   o.Timeout,
				ExpectContinueTimeout: time.Second,
			},
			// A POST redirected becomes a GET: the event would be lost.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}
	// The options may set their own User-Agent.
	h.headers.Set("User-Agent", "eventrouter")
	for k, v := range o.Headers {
		h.headers.Set(k, v)
	}
	h.headers.Set("Content-Type", o.ContentType)
	if o.Template != "" {
		h.template, _ = parseBody(o.Template)
	}
	return h, nil
}

// redactURL shows scheme and host only: the path and the query may hold
// a token (Slack's and Teams' webhook URLs do).
func redactURL(u *url.URL) string {
	return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
}

// Close closes the idle connections.
func (h *Webhook) Close() error {
	h.client.CloseIdleConnections()
	return nil
}

// Handle delivers msg.
func (h *Webhook) Handle(msg *message.Message) ([]*message.Message, error) {
	rec := RecordOf(msg)
	body, err := h.body(msg, rec)
	if err != nil {
		return nil, retry.Permanent(err)
	}
	ctx, cancel := context.WithTimeout(msg.Context(), h.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.url, bytes.NewReader(body))
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("webhook %s: %w", h.shown, err))
	}
	req.Header = h.headers.Clone()
	req.Header.Set(IdempotencyKeyHeader, rec.ID)
	if len(h.secret) > 0 {
		mac := hmac.New(sha256.New, h.secret)
		mac.Write(body)
		req.Header.Set(SignatureHeader, "sha256="+hex.EncodeToString(mac.Sum(nil)))
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.count("none")
		return nil, h.failed(msg.Context(), err)
	}
	h.count(strconv.Itoa(resp.StatusCode))
	defer resp.Body.Close()
	// The receiver answered: it is up, whatever it said.
	retry.Reached(msg.Context(), WebhookDependency)
	excerpt, _ := io.ReadAll(io.LimitReader(resp.Body, maxExcerpt))
	// Read a little more, so that the connection can be used again.
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	code := resp.StatusCode
	if code >= 200 && code < 300 {
		return nil, nil
	}
	refused := fmt.Errorf("webhook %s answered %s%s", h.shown, resp.Status, showExcerpt(excerpt))
	switch {
	case code == http.StatusTooManyRequests || code == http.StatusServiceUnavailable ||
		code == http.StatusBadGateway || code == http.StatusGatewayTimeout:
		// The receiver is overloaded, or the proxy in front of it cannot
		// reach it: the route waits, as for a receiver that is down.
		return nil, retry.UnavailableFor(WebhookDependency, retryAfter(resp.Header.Get("Retry-After"), time.Now()), refused)
	case code >= 500 || code == http.StatusRequestTimeout:
		return nil, refused
	}
	return nil, retry.Permanent(refused)
}

func (h *Webhook) count(code string) {
	if h.answers != nil {
		h.answers.WithLabelValues(code).Inc()
	}
}

// failed classifies a request that got no answer: a receiver that cannot
// be reached pauses the route; one that failed mid-request is retried.
func (h *Webhook) failed(ctx context.Context, err error) error {
	err = fmt.Errorf("webhook %s: %w", h.shown, stripURL(err))
	if ctx.Err() != nil {
		// The subscriber is closing: not the receiver's fault.
		return fmt.Errorf("%w: %w", ctx.Err(), err)
	}
	var opErr *net.OpError
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var alert tls.AlertError
	var recordErr tls.RecordHeaderError
	switch {
	case errors.As(err, &dnsErr), errors.As(err, &opErr) && (opErr.Op == "dial" || opErr.Op == "proxyconnect"):
		// Nothing answers at the address.
		return retry.Unavailable(WebhookDependency, err)
	case errors.As(err, &certErr), errors.As(err, &alert), errors.As(err, &recordErr):
		// The TLS handshake failed: a certificate or a setting to fix on
		// one side, not in the event. The route waits for it.
		return retry.Unavailable(WebhookDependency, err)
	}
	// A timeout or a connection dropped mid-request is retried, then
	// poisoned: pausing the route for it would let one request that always
	// times out hold every other record back.
	return err
}

// stripURL drops the URL net/http puts in its errors: it may hold a token.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// body returns what is posted for msg.
func (h *Webhook) body(msg *message.Message, rec Record) ([]byte, error) {
	if h.template == nil {
		return msg.Payload, nil
	}
	var event any
	if err := json.Unmarshal(msg.Payload, &event); err != nil {
		event = nil
	}
	var b bytes.Buffer
	err := h.template.Execute(&b, struct {
		Payload string
		Event   any
		Record  Record
	}{string(msg.Payload), event, rec})
	if err != nil {
		return nil, fmt.Errorf("webhook template: %w", err)
	}
	return b.Bytes(), nil
}

// retryAfter reads a Retry-After header, in seconds or as an HTTP date;
// 0 when it is missing or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(min(s, int(retry.MaxAfter/time.Second))) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(t.Sub(now), 0)
	}
	return 0
}

// showExcerpt quotes the start of a body for an error, in valid UTF-8.
func showExcerpt(b []byte) string {
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		return ""
	}
	return fmt.Sprintf(": %q", strings.ToValidUTF8(string(b), "\uFFFD"))
}
