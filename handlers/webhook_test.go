package handlers_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/testkit/handlertest"
)

// receiver is a webhook receiver that answers with the statuses in order
// (then 200), and keeps each request.
type receiver struct {
	mu       sync.Mutex
	statuses []int
	headers  []http.Header
	reqs     []*http.Request
	bodies   [][]byte
	times    []time.Time
}

func (rc *receiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.reqs = append(rc.reqs, r)
	rc.bodies = append(rc.bodies, body)
	rc.times = append(rc.times, time.Now())
	status := http.StatusOK
	var h http.Header
	if len(rc.statuses) > 0 {
		status, rc.statuses = rc.statuses[0], rc.statuses[1:]
		if len(rc.headers) > 0 {
			h, rc.headers = rc.headers[0], rc.headers[1:]
		}
	}
	rc.mu.Unlock()
	for k, v := range h {
		w.Header()[k] = v
	}
	w.WriteHeader(status)
	if status >= 400 {
		io.WriteString(w, "user 7 is not known here "+strings.Repeat("x", 2000))
	}
}

func (rc *receiver) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.reqs)
}

func webhook(t *testing.T, options string, s *handlertest.Services) handlers.Handler {
	t.Helper()
	return handlertest.Build(t, handlers.Registry()["webhook"], options, s)
}

func TestWebhookDeliversSigned(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	s := handlertest.NewServices(t)
	s.Env["HOOK_SECRET"] = "s3cret"
	h := webhook(t, "url: "+srv.URL+"/hooks/users?token=abc\nsecret_env: HOOK_SECRET\nheaders:\n  Authorization: Bearer t0ken\n", s)
	payload := `{"user_id": 7, "email": "seven@example.com"}`
	res := handlertest.Run(t, h, handlertest.Message(payload, handlertest.At("user-registered", 2, 41), handlertest.Key("7")))
	if !res.Acked || res.Err != nil || res.Attempts != 1 {
		t.Fatalf("got %+v; want one successful attempt", res)
	}
	if rc.count() != 1 {
		t.Fatalf("receiver got %d requests; want 1", rc.count())
	}
	r, body := rc.reqs[0], rc.bodies[0]
	if string(body) != payload {
		t.Errorf("got body %q; want the payload %q", body, payload)
	}
	// The receiver's side of the signature: HMAC-SHA256 of the exact body.
	mac := hmac.New(sha256.New, []byte("s3cret"))
	mac.Write(body)
	want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	if got := r.Header.Get(handlers.SignatureHeader); !hmac.Equal([]byte(got), []byte(want)) {
		t.Errorf("got signature %q; want %q", got, want)
	}
	for k, want := range map[string]string{
		"Idempotency-Key": "user-registered/2/41", "Authorization": "Bearer t0ken",
		"Content-Type": "application/json", "User-Agent": "eventrouter",
	} {
		if got := r.Header.Get(k); got != want {
			t.Errorf("got %s %q; want %q", k, got, want)
		}
	}
	if r.Method != http.MethodPost || r.URL.Path != "/hooks/users" || r.URL.Query().Get("token") != "abc" {
		t.Errorf("got %s %s; want POST /hooks/users?token=abc", r.Method, r.URL)
	}

	// A redelivery and a replay from the poison topic carry the same key;
	// a producer copying the header along does not make another event the
	// same one.
	handlertest.Run(t, h, handlertest.Message(payload, handlertest.At("user-registered", 3, 7),
		handlertest.Header("original_record", "user-registered/2/41")))
	if got := rc.reqs[1].Header.Get("Idempotency-Key"); got != "user-registered/3/7" {
		t.Errorf("got Idempotency-Key %q for a record with a copied original_record header; want its own user-registered/3/7", got)
	}
	rc.reqs = rc.reqs[:1]
	handlertest.Run(t, h, handlertest.Message(payload, handlertest.At("user-registered", 2, 41)))
	handlertest.Run(t, h, handlertest.Message(payload, handlertest.At("user-registered", 0, 900),
		handlertest.Header("original_record", "user-registered/2/41"), handlertest.Header("replayed_from", "user-registered.poison/0/3")))
	for i, r := range rc.reqs {
		if got := r.Header.Get("Idempotency-Key"); got != "user-registered/2/41" {
			t.Errorf("request %d: got Idempotency-Key %q; want user-registered/2/41", i, got)
		}
	}
	if got := counted(t, s, "eventrouter_webhook_responses_total", "code", "200"); got != 4 {
		t.Errorf("got eventrouter_webhook_responses_total{code=\"200\"} %v; want 4", got)
	}
}

// counted returns the value of the counter name whose label is value in
// the handler's metrics.
func counted(t *testing.T, s *handlertest.Services, name, label, value string) float64 {
	t.Helper()
	families, err := s.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestWebhookUnsignedTemplate(t *testing.T) {
	rc := &receiver{}
	srv := httptest.NewServer(rc)
	defer srv.Close()
	h := webhook(t, "url: "+srv.URL+"\ntemplate: '{\"text\": {{json (printf \"user %v registered\" .Event.user_id)}}, \"id\": {{json .Record.ID}}}'\n", handlertest.NewServices(t))
	res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7}`, handlertest.At("user-registered", 0, 3)))
	if !res.Acked || res.Err != nil {
		t.Fatalf("got %+v; want success", res)
	}
	if got, want := string(rc.bodies[0]), `{"text": "user 7 registered", "id": "user-registered/0/3"}`; got != want {
		t.Errorf("got body %s; want %s", got, want)
	}
	if got := rc.reqs[0].Header.Get(handlers.SignatureHeader); got != "" {
		t.Errorf("got signature %q without a secret; want none", got)
	}
}

func TestWebhookAnswers(t *testing.T) {
	retryAfter := http.Header{"Retry-After": {"1"}}
	tests := []struct {
		name     string
		statuses []int
		headers  []http.Header
		// want
		acked, poisoned   bool
		attempts, retries int
		pauses            int
		reason            string
		minGap            time.Duration
	}{
		{name: "2xx", statuses: []int{204}, acked: true, attempts: 1},
		{name: "503 with Retry-After pauses for it", statuses: []int{503}, headers: []http.Header{retryAfter},
			acked: true, attempts: 2, pauses: 1, minGap: time.Second},
		{name: "429 with Retry-After pauses for it", statuses: []int{429}, headers: []http.Header{retryAfter},
			acked: true, attempts: 2, pauses: 1, minGap: time.Second},
		{name: "500 is retried", statuses: []int{500, 500}, acked: true, attempts: 3, retries: 2},
		{name: "502 and 504 from a proxy pause", statuses: []int{502, 504}, acked: true, attempts: 3, pauses: 2},
		{name: "5xx until retries run out poisons", statuses: []int{500, 500, 500, 500}, acked: true, poisoned: true,
			attempts: 4, retries: 3, reason: "500 Internal Server Error"},
		{name: "4xx poisons at once with status and excerpt", statuses: []int{422}, acked: true, poisoned: true,
			attempts: 1, reason: `422 Unprocessable Entity: "user 7 is not known here xxx`},
		{name: "redirect is not followed", statuses: []int{302}, acked: true, poisoned: true, attempts: 1, reason: "302 Found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := &receiver{statuses: tt.statuses, headers: tt.headers}
			srv := httptest.NewServer(rc)
			defer srv.Close()
			h := webhook(t, "url: "+srv.URL, handlertest.NewServices(t))
			res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7}`))
			if res.Acked != tt.acked || res.Poisoned != tt.poisoned || res.Attempts != tt.attempts ||
				res.Retries != tt.retries || res.Pauses != tt.pauses {
				t.Fatalf("got acked %v, poisoned %v, %d attempts, %d retries, %d pauses (err %v); want %v, %v, %d, %d, %d",
					res.Acked, res.Poisoned, res.Attempts, res.Retries, res.Pauses, res.Err, tt.acked, tt.poisoned, tt.attempts, tt.retries, tt.pauses)
			}
			if !strings.Contains(res.Reason, tt.reason) {
				t.Errorf("got reason %q; want it to contain %q", res.Reason, tt.reason)
			}
			if len(res.Reason) > 1024 {
				t.Errorf("got a reason of %d bytes; want the body's excerpt bounded", len(res.Reason))
			}
			if tt.minGap > 0 {
				if gap := rc.times[1].Sub(rc.times[0]); gap < tt.minGap {
					t.Errorf("got a second request %s after the first; want Retry-After's %s respected", gap, tt.minGap)
				}
			}
		})
	}
}

func TestWebhookReceiverDown(t *testing.T) {
	// A port with nothing listening: the receiver is down.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	h := webhook(t, "url: http://"+addr+"/hook?token=secret-token", handlertest.NewServices(t))
	res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7}`), handlertest.RunOptions{MaxPauses: 3})
	if res.Acked || res.Poisoned || res.Pauses != 3 || res.Retries != 0 {
		t.Fatalf("got acked %v, poisoned %v, %d pauses, %d retries (err %v); want the route paused 3 times, nothing acked or poisoned",
			res.Acked, res.Poisoned, res.Pauses, res.Retries, res.Err)
	}
	if strings.Contains(res.Err.Error(), "secret-token") {
		t.Errorf("error %q shows the URL's query", res.Err)
	}

	// The receiver comes back on the same address: the record goes through.
	rc := &receiver{}
	l, err = net.Listen("tcp", addr)
	if err != nil {
		t.Skipf("port %s taken meanwhile: %v", addr, err)
	}
	srv := &http.Server{Handler: rc}
	go srv.Serve(l)
	defer srv.Close()
	if res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7}`)); !res.Acked || res.Poisoned || rc.count() != 1 {
		t.Fatalf("got %+v and %d requests; want the record delivered once", res, rc.count())
	}
}

func TestWebhookTLSFailurePauses(t *testing.T) {
	// A receiver whose certificate the handler does not trust.
	rc := &receiver{}
	srv := httptest.NewTLSServer(rc)
	defer srv.Close()
	h := webhook(t, "url: "+srv.URL+"/secret-path-token", handlertest.NewServices(t))
	res := handlertest.Run(t, h, handlertest.Message(`{"user_id": 7}`))
	if res.Acked || res.Poisoned || res.Pauses != 3 || rc.count() != 0 {
		t.Fatalf("got %+v, %d requests; want the route paused, nothing acked or poisoned", res, rc.count())
	}
	if !strings.Contains(res.Err.Error(), "certificate") || strings.Contains(res.Err.Error(), "secret-path-token") {
		t.Errorf("got error %q; want the certificate named and the URL's path left out", res.Err)
	}
}

func TestWebhookOptionsRefused(t *testing.T) {
	tests := []struct{ name, options, want string }{
		{"no url", "timeout: 1s", "routes[0].options.url: is missing"},
		{"bad scheme", "url: ftp://x/y", `line 1: routes[0].options.url: must start with http:// or https://, got scheme "ftp"`},
		{"credentials in url", "url: https://u:p@x/y", "holds credentials"},
		{"unknown key", "url: http://x\nretries: 3", "line 2: routes[0].options.retries: unknown key; known: url, headers, timeout"},
		{"repeated key", "url: http://x\nurl: http://y", "line 2: routes[0].options.url: is set twice (first on line 1)"},
		{"wrong type", "url: http://x\ntimeout: soon", "line 2: routes[0].options.timeout"},
		{"reserved header", "url: http://x\nheaders:\n  Idempotency-Key: k", "line 3: routes[0].options.headers.Idempotency-Key: is set by the handler"},
		{"bad header value", "url: http://x\nheaders:\n  X-A: \"a\\nb\"", "routes[0].options.headers.X-A: has a value that is not a valid HTTP header value"},
		{"both secrets", "url: http://x\nsecret_env: A\nsecret_file: /f", "line 2: routes[0].options.secret_env: and secret_file are both set"},
		{"missing secret", "url: http://x\nsecret_env: NOT_SET_ANYWHERE", "routes[0].options.secret_env: environment variable NOT_SET_ANYWHERE is empty"},
		{"header twice", "url: http://x\nheaders:\n  X-Token: a\n  x-token: b", "routes[0].options.headers.x-token: is the header X-Token again"},
		{"empty header", "url: http://x\nheaders:\n  X-Token: \"\"", "line 3: routes[0].options.headers.X-Token: is empty"},
		{"bad template", "url: http://x\ntemplate: '{{.Payload'", "line 2: routes[0].options.template"},
		{"not a mapping", "- url", "routes[0].options: must be a mapping"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := handlertest.BuildErr(handlers.Registry()["webhook"], tt.options, handlertest.NewServices(t))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v; want an error containing %q", err, tt.want)
			}
		})
	}
}
