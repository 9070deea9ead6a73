// Package ops serves what operators ask of a running daemon over HTTP:
// /healthz (is the process alive), /readyz (can it do its work) and
// /metrics (Prometheus), and the web console (package ops/console) at /.
package ops

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Readiness is the answer to "can the daemon do its work".
type Readiness struct {
	// Ready is true when every check passed.
	Ready bool `json:"ready"`
	// Checks maps each check's name to "ok" or what is wrong.
	Checks map[string]string `json:"checks"`
	// Degraded maps a check that passed to what is down that the daemon
	// can do without for now, such as one broker of three.
	Degraded map[string]string `json:"degraded,omitempty"`
}

// Options configure the handler.
type Options struct {
	// Token, if set, is the bearer token every endpoint but /healthz
	// requires.
	Token string
	// Ready runs the readiness checks.
	Ready func(ctx context.Context) Readiness
	// Gatherer serves /metrics.
	Gatherer prometheus.Gatherer
	// Console, if set, serves every other path: the web console, which
	// checks the token itself (a login, or the bearer token).
	Console http.Handler
}

// Handler returns the ops endpoints.
func Handler(opts Options) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.Handle("GET /readyz", guard(opts.Token, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		rd := opts.Ready(ctx)
		status := http.StatusOK
		if !rd.Ready {
			status = http.StatusServiceUnavailable
		}
		writeJSON(w, status, rd)
	})))
	mux.Handle("GET /metrics", guard(opts.Token, promhttp.HandlerFor(opts.Gatherer, promhttp.HandlerOpts{})))
	if opts.Console != nil {
		mux.Handle("/", opts.Console)
	}
	return mux
}

func guard(token string, h http.Handler) http.Handler {
	if token == "" {
		return h
	}
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="eventrouter"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer token"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
