package console_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/ops/console"
)

// fakeSource is a Source with one route and two poisoned records.
type fakeSource struct {
	mu       sync.Mutex
	replayed []console.Ref
}

func (f *fakeSource) Routes() []console.Route {
	return []console.Route{{Name: "welcome", Handler: "notification", Topic: "user-registered", Group: "g", PoisonTopic: "user-registered.poison",
		State: "paused", Cause: "smtp server refused", Handled: 10, Poisoned: 2,
		Errors: []console.Error{{Time: time.Now(), CorrelationID: "corr-1", Record: "user-registered/0/3", Message: "boom"}}}}
}

func (f *fakeSource) Partitions(context.Context, string) ([]console.Partition, error) {
	return []console.Partition{{Partition: 0, Committed: 8, End: 12, Lag: 4, Owned: true}}, nil
}

func (f *fakeSource) Poisoned(_ context.Context, _ string, q console.Query) ([]console.Poisoned, error) {
	all := []console.Poisoned{
		{Ref: console.Ref{Partition: 0, Offset: 2}, Reason: "event: not a JSON object", Payload: "hello"},
		{Ref: console.Ref{Partition: 0, Offset: 1}, Reason: "550 no such user", Payload: "{}"},
	}
	var out []console.Poisoned
	for _, p := range all {
		if strings.Contains(p.Reason, q.Reason) {
			out = append(out, p)
		}
	}
	return out, nil
}

func (f *fakeSource) Replay(_ context.Context, _ string, refs []console.Ref) (int, []string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.replayed = append(f.replayed, refs...)
	return len(refs), nil, nil
}

func (f *fakeSource) Sent(_ context.Context, user string) ([]console.Sent, error) {
	if user == "7" {
		return []console.Sent{{Template: "welcome", EventID: "user-registered/0/1", Channel: "email", Published: true}}, nil
	}
	return nil, nil
}

func start(t *testing.T, opts console.Options) (*httptest.Server, *fakeSource, *strings.Builder) {
	t.Helper()
	src := &fakeSource{}
	logs := &strings.Builder{}
	opts.Source = src
	opts.Logger = slog.New(slog.NewTextHandler(&lockedWriter{w: logs}, nil))
	c, err := console.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c)
	t.Cleanup(func() { srv.Close(); c.Close() })
	return srv, src, logs
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func browser(t *testing.T) *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, Timeout: 10 * time.Second}
}

func fetch(t *testing.T, c *http.Client, method, u string, form url.Values) (int, string) {
	t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodPost {
		resp, err = c.PostForm(u, form)
	} else {
		resp, err = c.Get(u)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func TestConsoleWithToken(t *testing.T) {
	srv, src, logs := start(t, console.Options{Token: "tok"})
	c := browser(t)
	code, body := fetch(t, c, http.MethodGet, srv.URL+"/poison/welcome", nil)
	if code != http.StatusOK || !strings.Contains(body, `name="token"`) {
		t.Fatalf("got %d without logging in; want the login page:\n%s", code, body)
	}
	if code, body = fetch(t, c, http.MethodPost, srv.URL+"/login", url.Values{"token": {"wrong"}, "next": {"/"}}); code != http.StatusUnauthorized {
		t.Fatalf("got %d for a wrong token; want 401\n%s", code, body)
	}
	code, body = fetch(t, c, http.MethodPost, srv.URL+"/login", url.Values{"token": {"tok"}, "next": {"/poison/welcome"}})
	if code != http.StatusOK || !strings.Contains(body, "550 no such user") || !strings.Contains(body, "actions allowed") {
		t.Fatalf("got %d after logging in; want the poison explorer with actions:\n%s", code, body)
	}
	u, _ := url.Parse(srv.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if ck.Name == console.SessionCookie && ck.Value == "" {
			t.Error("empty session cookie")
		}
	}
	csrf := csrfField.FindStringSubmatch(body)[1]

	// Without the CSRF token, nothing happens.
	if code, _ := fetch(t, c, http.MethodPost, srv.URL+"/poison/welcome/replay", url.Values{"ref": {"0/2"}, "confirm": {"yes"}}); code != http.StatusForbidden {
		t.Errorf("got %d for a replay without the CSRF token; want 403", code)
	}
	// A replay asks first, with the count, then replays.
	code, body = fetch(t, c, http.MethodPost, srv.URL+"/poison/welcome/replay", url.Values{"csrf": {csrf}, "all": {"1"}, "reason": {"JSON"}})
	if code != http.StatusOK || !strings.Contains(body, "Replay 1 record(s)") {
		t.Fatalf("got %d; want a confirmation for 1 record:\n%s", code, body)
	}
	// The confirmation carries the records it counted.
	if !strings.Contains(body, `name="ref" value="0/2"`) {
		t.Fatalf("the confirmation does not carry record 0/2:\n%s", body)
	}
	code, body = fetch(t, c, http.MethodPost, srv.URL+"/poison/welcome/replay", url.Values{"csrf": {csrf}, "all": {"1"}, "reason": {"JSON"}, "ref": {"0/2"}, "confirm": {"yes"}})
	if code != http.StatusOK || !strings.Contains(body, "Replayed 1 of 1 record(s)") {
		t.Fatalf("got %d; want the replay done:\n%s", code, body)
	}
	if len(src.replayed) != 1 || src.replayed[0] != (console.Ref{Partition: 0, Offset: 2}) {
		t.Errorf("replayed %v; want 0/2", src.replayed)
	}
	if !strings.Contains(logs.String(), "console action") || !strings.Contains(logs.String(), "replayed=1") {
		t.Errorf("log %q; want the action with who did it", logs.String())
	}
	// A script may use the bearer token instead.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/routes/welcome", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("got %v %v with the bearer token; want 200", resp, err)
	}
	resp.Body.Close()
}

func TestConsoleWithoutToken(t *testing.T) {
	tests := []struct {
		name    string
		allow   bool
		want    int
		replays int
	}{
		{"read-only", false, http.StatusForbidden, 0},
		{"actions allowed", true, http.StatusOK, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv, src, _ := start(t, console.Options{AllowActions: tt.allow})
			c := browser(t)
			code, body := fetch(t, c, http.MethodGet, srv.URL+"/poison/welcome", nil)
			if code != http.StatusOK {
				t.Fatalf("got %d; want 200", code)
			}
			if got := strings.Contains(body, "Replay…"); got != tt.allow {
				t.Errorf("got replay buttons %v; want %v", got, tt.allow)
			}
			csrf := csrfField.FindStringSubmatch(body)
			if csrf == nil {
				// A read-only page has no form; the session still has a token.
				code, body = fetch(t, c, http.MethodGet, srv.URL+"/", nil)
				csrf = []string{"", ""}
			}
			code, _ = fetch(t, c, http.MethodPost, srv.URL+"/poison/welcome/replay", url.Values{"csrf": {csrf[1]}, "ref": {"0/1"}, "confirm": {"yes"}})
			if tt.allow && code != tt.want || !tt.allow && code != http.StatusForbidden {
				t.Errorf("got %d for a replay; want %d", code, tt.want)
			}
			if len(src.replayed) != tt.replays {
				t.Errorf("replayed %d; want %d", len(src.replayed), tt.replays)
			}
		})
	}
}

func TestConsoleRefusesOtherSites(t *testing.T) {
	srv, src, _ := start(t, console.Options{AllowActions: true, Hosts: []string{"router.internal"}})
	u, _ := url.Parse(srv.URL)
	_, port, _ := strings.Cut(u.Host, ":")
	tests := []struct {
		name, host, origin, site string
		method                   string
		want                     int
	}{
		{"IP address", u.Host, "", "", http.MethodGet, http.StatusOK},
		{"localhost", "localhost:" + port, "", "", http.MethodGet, http.StatusOK},
		{"a configured name", "router.internal:" + port, "", "", http.MethodGet, http.StatusOK},
		{"a rebound name", "attacker.example:" + port, "", "", http.MethodGet, http.StatusMisdirectedRequest},
		{"a post from another origin", u.Host, "http://localhost:3000", "", http.MethodPost, http.StatusForbidden},
		{"a post another site makes", u.Host, "", "cross-site", http.MethodPost, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+"/poison/welcome/replay", strings.NewReader("ref=0/1&confirm=yes"))
			if tt.method == http.MethodGet {
				req, _ = http.NewRequest(tt.method, srv.URL+"/", nil)
			}
			req.Host = tt.host
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.origin != "" {
				req.Header.Set("Origin", tt.origin)
			}
			if tt.site != "" {
				req.Header.Set("Sec-Fetch-Site", tt.site)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("got %d; want %d", resp.StatusCode, tt.want)
			}
		})
	}
	if len(src.replayed) != 0 {
		t.Errorf("replayed %v; want nothing", src.replayed)
	}
}

func TestSafeNext(t *testing.T) {
	srv, _, _ := start(t, console.Options{Token: "tok"})
	c := browser(t)
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	for _, next := range []string{"//evil.example/", "/\t/evil.example", "/%09/evil.example", "https://evil.example/", "/\\evil.example", "/routes/welcome?x=1"} {
		resp, err := c.PostForm(srv.URL+"/login", url.Values{"token": {"tok"}, "next": {next}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		loc := resp.Header.Get("Location")
		onSite := strings.HasPrefix(loc, "/") && !strings.HasPrefix(loc, "//") &&
			!strings.ContainsAny(loc, "\t\n\r\\") && !strings.Contains(loc, "://")
		if !onSite || next == "/routes/welcome?x=1" && loc != next {
			t.Errorf("next %q: redirected to %q; want a path of this server", next, loc)
		}
	}
}

func TestConsolePages(t *testing.T) {
	srv, _, _ := start(t, console.Options{})
	c := browser(t)
	for _, tt := range []struct{ path, want string }{
		{"/", "smtp server refused"},
		{"/routes/welcome", "corr-1"},
		{"/ledger?user=7", "user-registered/0/1"},
		{"/ledger?user=8", "Nothing was sent to user 8."},
		{"/poison/welcome?since=later", "neither a duration"},
	} {
		code, body := fetch(t, c, http.MethodGet, srv.URL+tt.path, nil)
		if code != http.StatusOK || !strings.Contains(body, tt.want) {
			t.Errorf("GET %s: got %d; want %q in:\n%s", tt.path, code, tt.want, body)
		}
	}
	if code, _ := fetch(t, c, http.MethodGet, srv.URL+"/routes/nope", nil); code != http.StatusNotFound {
		t.Errorf("got %d for an unknown route; want 404", code)
	}
	// The page's own refresh gets its live part only.
	req, _ := http.NewRequest(http.MethodGet, srv.URL+"/", nil)
	req.Header.Set("X-Console-Partial", "1")
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(b), "<html") || !strings.Contains(string(b), "data-route=\"welcome\"") {
		t.Errorf("got partial %q; want the routes table alone", b)
	}
}
