package ops_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventrouter/eventrouter/ops"
)

// fakeReady answers readiness with a fixed result and records the context
// each check ran with.
type fakeReady struct {
	result ops.Readiness

	mu        sync.Mutex
	calls     int
	deadlines []time.Duration
}

func (f *fakeReady) Ready(ctx context.Context) ops.Readiness {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if d, ok := ctx.Deadline(); ok {
		f.deadlines = append(f.deadlines, time.Until(d))
	}
	return f.result
}

func (f *fakeReady) Calls() (int, []time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]time.Duration(nil), f.deadlines...)
}

var (
	allOK = ops.Readiness{Ready: true, Checks: map[string]string{"kafka": "ok", "route welcome": "ok"}}
	down  = ops.Readiness{Ready: false, Checks: map[string]string{
		"kafka":         "dial tcp 127.0.0.1:9092: connect: connection refused",
		"route welcome": "ok",
	}}
)

const unauthorized = `{"error":"missing or wrong bearer token"}`

func TestHandler(t *testing.T) {
	tests := []struct {
		name          string
		token         string // the configured token; empty means none
		method, path  string
		auth          string // the Authorization header sent, if any
		ready         ops.Readiness
		wantStatus    int
		wantJSON      string // the body, compared as JSON, when set
		wantMetric    string // a line the body holds, when set
		wantChallenge bool   // a WWW-Authenticate header
		wantReadyRuns int
	}{
		{name: "healthz, no token configured", path: "/healthz", wantStatus: 200, wantJSON: `{"status":"ok"}`},
		{name: "healthz needs no token", token: "s3cret", path: "/healthz", wantStatus: 200, wantJSON: `{"status":"ok"}`},
		{name: "healthz ignores a wrong token", token: "s3cret", path: "/healthz", auth: "Bearer nope", wantStatus: 200, wantJSON: `{"status":"ok"}`},

		{name: "readyz without token", token: "s3cret", path: "/readyz", ready: allOK, wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "readyz with a wrong token", token: "s3cret", path: "/readyz", auth: "Bearer nope", ready: allOK, wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "readyz with a prefix of the token", token: "s3cret", path: "/readyz", auth: "Bearer s3cre", ready: allOK, wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "readyz with the token but not as bearer", token: "s3cret", path: "/readyz", auth: "s3cret", ready: allOK, wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "readyz with the token as basic", token: "s3cret", path: "/readyz", auth: "Basic s3cret", ready: allOK, wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "readyz with the token, ready", token: "s3cret", path: "/readyz", auth: "Bearer s3cret", ready: allOK, wantStatus: 200,
			wantJSON: `{"ready":true,"checks":{"kafka":"ok","route welcome":"ok"}}`, wantReadyRuns: 1},
		{name: "readyz with the token, not ready", token: "s3cret", path: "/readyz", auth: "Bearer s3cret", ready: down, wantStatus: 503,
			wantJSON: `{"ready":false,"checks":{"kafka":"dial tcp 127.0.0.1:9092: connect: connection refused","route welcome":"ok"}}`, wantReadyRuns: 1},
		{name: "readyz, no token configured, ready", path: "/readyz", ready: allOK, wantStatus: 200,
			wantJSON: `{"ready":true,"checks":{"kafka":"ok","route welcome":"ok"}}`, wantReadyRuns: 1},
		{name: "readyz, no token configured, not ready", path: "/readyz", ready: down, wantStatus: 503,
			wantJSON: `{"ready":false,"checks":{"kafka":"dial tcp 127.0.0.1:9092: connect: connection refused","route welcome":"ok"}}`, wantReadyRuns: 1},

		{name: "metrics without token", token: "s3cret", path: "/metrics", wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "metrics with a wrong token", token: "s3cret", path: "/metrics", auth: "Bearer nope", wantStatus: 401, wantJSON: unauthorized, wantChallenge: true},
		{name: "metrics with the token", token: "s3cret", path: "/metrics", auth: "Bearer s3cret", wantStatus: 200, wantMetric: "opstest_events_total 3"},
		{name: "metrics, no token configured", path: "/metrics", wantStatus: 200, wantMetric: "opstest_events_total 3"},

		{name: "only GET", path: "/healthz", method: http.MethodPost, wantStatus: 405},
		{name: "unknown path", token: "s3cret", path: "/debug/pprof/", auth: "Bearer s3cret", wantStatus: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			events := prometheus.NewCounter(prometheus.CounterOpts{Name: "opstest_events_total", Help: "Events seen."})
			reg.MustRegister(events)
			events.Add(3)
			ready := &fakeReady{result: tt.ready}
			srv := httptest.NewServer(ops.Handler(ops.Options{Token: tt.token, Ready: ready.Ready, Gatherer: reg}))
			t.Cleanup(srv.Close)

			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, err := http.NewRequest(method, srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatalf("%s %s: %v", method, tt.path, err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("read body: %v", err)
			}

			if resp.StatusCode != tt.wantStatus {
				t.Errorf("status = %d; want %d (body %s)", resp.StatusCode, tt.wantStatus, body)
			}
			if tt.wantJSON != "" {
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
					t.Errorf("Content-Type = %q; want application/json", ct)
				}
				var got, want any
				if err := json.Unmarshal(body, &got); err != nil {
					t.Fatalf("body %q is not JSON: %v", body, err)
				}
				if err := json.Unmarshal([]byte(tt.wantJSON), &want); err != nil {
					t.Fatalf("wantJSON: %v", err)
				}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("body = %s; want %s", body, tt.wantJSON)
				}
			}
			if tt.wantMetric != "" && !hasLine(string(body), tt.wantMetric) {
				t.Errorf("metrics body has no line %q:\n%s", tt.wantMetric, body)
			}
			challenge := resp.Header.Get("WWW-Authenticate")
			if tt.wantChallenge && challenge != `Bearer realm="eventrouter"` {
				t.Errorf("WWW-Authenticate = %q; want %q", challenge, `Bearer realm="eventrouter"`)
			}
			if !tt.wantChallenge && challenge != "" {
				t.Errorf("WWW-Authenticate = %q; want none", challenge)
			}
			// An unauthorised caller must not make the daemon run its
			// checks, which dial Kafka.
			calls, deadlines := ready.Calls()
			if calls != tt.wantReadyRuns {
				t.Errorf("readiness checks ran %d times; want %d", calls, tt.wantReadyRuns)
			}
			for _, d := range deadlines {
				if d <= 0 || d > 5*time.Second {
					t.Errorf("readiness checks ran with %s left; want a deadline of at most 5s", d)
				}
			}
			if len(deadlines) != calls {
				t.Errorf("readiness checks ran %d times without a deadline; want a deadline on every run", calls-len(deadlines))
			}
		})
	}
}

func hasLine(body, line string) bool {
	for l := range strings.Lines(body) {
		if strings.TrimSuffix(l, "\n") == line {
			return true
		}
	}
	return false
}
