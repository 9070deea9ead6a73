// Package console is the operators' web console, served by the ops
// server at /: every route's state, rates and lag, a route's partitions and
// last errors, the poison topic's records with replay, and a ledger lookup.
// Pages are rendered on the server and refresh themselves by polling; the
// assets are embedded, so nothing is fetched from elsewhere.
package console

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"fmt"
	"html/template"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Options configure the console.
type Options struct {
	// Source is what the console shows and does.
	Source Source
	// Token, when set, is asked for once; the session then lives in a
	// cookie. Without it, the console is read-only unless AllowActions.
	Token string
	// AllowActions lets a console without a token replay records.
	AllowActions bool
	// Logger receives a line for every action and login.
	Logger *slog.Logger
	// Now returns the current time; default time.Now.
	Now func() time.Time
	// SampleEvery is how often the rates are sampled; default 10s. The
	// charts cover the last 15 minutes.
	SampleEvery time.Duration
	// Refresh is how often a page reloads its data; default 2s.
	Refresh time.Duration
	// Hosts are the names, beside IP addresses and localhost, that
	// requests may use in their Host header: a page of another site that
	// rebinds its name to this address is refused.
	Hosts []string
}

// Console is the web console's handler.
type Console struct {
	opts     Options
	pages    map[string]*template.Template
	mux      *http.ServeMux
	sessions *sessions
	history  *history
	stop     chan struct{}
	done     chan struct{}
}

// SessionCookie is the name of the console's session cookie.
const SessionCookie = "eventrouter_console"

// New returns the console and starts sampling the routes' counters; Close
// stops it.
func New(opts Options) (*Console, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.SampleEvery <= 0 {
		opts.SampleEvery = 10 * time.Second
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 2 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Console{
		opts: opts, pages: map[string]*template.Template{}, mux: http.NewServeMux(),
		sessions: newSessions(opts.Now), stop: make(chan struct{}), done: make(chan struct{}),
		history: newHistory(int(15 * time.Minute / opts.SampleEvery)),
	}
	funcs := template.FuncMap{
		"when":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05Z") },
		"ago":   func(d time.Duration) string { return d.Round(time.Second).String() },
		"spark": spark,
		"query": url.QueryEscape,
	}
	for _, page := range []string{"overview", "route", "poison", "confirm", "done", "ledger", "login"} {
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", "templates/"+page+".html")
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", page, err)
		}
		c.pages[page] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	c.mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	c.mux.HandleFunc("GET /login", c.loginPage)
	c.mux.HandleFunc("POST /login", c.login)
	c.mux.HandleFunc("POST /logout", c.session(c.logout))
	c.mux.HandleFunc("GET /{$}", c.session(c.overview))
	c.mux.HandleFunc("GET /routes/{route}", c.session(c.route))
	c.mux.HandleFunc("GET /poison/{route}", c.session(c.poison))
	c.mux.HandleFunc("POST /poison/{route}/replay", c.session(c.replay))
	c.mux.HandleFunc("GET /poison/{route}/replayed", c.session(c.replayed))
	c.mux.HandleFunc("GET /ledger", c.session(c.ledger))
	c.sample()
	go c.sampleLoop()
	return c, nil
}

// Close stops sampling.
func (c *Console) Close() {
	close(c.stop)
	<-c.done
}

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Referrer-Policy", "same-origin")
	if !c.hostAllowed(r.Host) {
		c.opts.Logger.Warn("console request refused: unknown host name", "remote", r.RemoteAddr)
		http.Error(w, "this host name is not one the console answers to; add it to ops.console.hosts", http.StatusMisdirectedRequest)
		return
	}
	if r.Method == http.MethodPost && !sameOrigin(r) {
		c.opts.Logger.Warn("console request refused: posted from another origin", "remote", r.RemoteAddr, "path", r.URL.Path)
		http.Error(w, "a change must come from the console's own pages", http.StatusForbidden)
		return
	}
	c.mux.ServeHTTP(w, r)
}

// hostAllowed refuses Host headers of other sites, against DNS rebinding:
// a name that resolves to this address but is not one of its own.
func (c *Console) hostAllowed(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if host == "" || net.ParseIP(host) != nil || strings.EqualFold(host, "localhost") {
		return true
	}
	for _, h := range c.opts.Hosts {
		if strings.EqualFold(h, host) {
			return true
		}
	}
	return false
}

// sameOrigin says a POST came from the console's own pages: browsers send
// Sec-Fetch-Site, or at least Origin, with every POST. A client that sends
// neither (curl with the bearer token) is no browser a page can drive.
func sameOrigin(r *http.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "same-origin", "none":
		return true
	case "":
	default:
		return false
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	u, err := url.Parse(origin)
	return err == nil && strings.EqualFold(u.Host, r.Host)
}

func (c *Console) sampleLoop() {
	defer close(c.done)
	t := time.NewTicker(c.opts.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.sample()
		}
	}
}

func (c *Console) sample() {
	c.history.add(c.opts.Now(), c.opts.Source.Routes())
}

// view is what every page gets.
type view struct {
	Title    string
	Session  *session
	Actions  bool
	Refresh  int
	Partial  bool
	Message  string
	Data     any
	LoggedIn bool
}

// render writes page; a request from the page's own refresh gets only its
// live part.
func (c *Console) render(w http.ResponseWriter, r *http.Request, status int, page string, v view) {
	v.Refresh = int(c.opts.Refresh / time.Millisecond)
	v.Partial = r.Header.Get("X-Console-Partial") == "1"
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	name := "layout.html"
	if v.Partial {
		name = "live"
	}
	if err := c.pages[page].ExecuteTemplate(w, name, v); err != nil {
		c.opts.Logger.Error("console page", "page", page, "err", err)
	}
}

// actions says whether s may change anything.
func (c *Console) actions(s *session) bool {
	if c.opts.Token != "" {
		return s != nil && s.authenticated
	}
	return c.opts.AllowActions
}

// session finds or makes the request's session; with a token, a request
// without a logged-in session goes to the login page (a bearer token in
// the Authorization header serves for scripts).
func (c *Console) session(h func(w http.ResponseWriter, r *http.Request, s *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s := c.sessions.fromRequest(r)
		if c.opts.Token != "" && (s == nil || !s.authenticated) {
			if c.bearer(r) {
				h(w, r, &session{authenticated: true, id: "bearer"})
				return
			}
			if r.Method != http.MethodGet {
				http.Error(w, "log in first", http.StatusUnauthorized)
				return
			}
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		if s == nil {
			if !c.actions(nil) {
				// A read-only console changes nothing: no session is kept
				// for it, and a POST finds no CSRF token to match.
				s = &session{id: "anonymous"}
			} else {
				s = c.sessions.create(false)
				c.setCookie(w, s)
			}
		}
		if r.Method == http.MethodPost && (s.csrf == "" || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(s.csrf)) != 1) {
			c.opts.Logger.Warn("console request refused: missing or wrong CSRF token", "session", s.short(), "path", r.URL.Path, "remote", r.RemoteAddr)
			http.Error(w, "missing or wrong CSRF token: reload the page and try again", http.StatusForbidden)
			return
		}
		h(w, r, s)
	}
}

func (c *Console) bearer(r *http.Request) bool {
	return subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), []byte("Bearer "+c.opts.Token)) == 1
}

func (c *Console) setCookie(w http.ResponseWriter, s *session) {
	http.SetCookie(w, &http.Cookie{
		Name: SessionCookie, Value: s.id, Path: "/", HttpOnly: true, SameSite: http.SameSiteStrictMode,
		MaxAge: int(sessionLife / time.Second),
	})
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request) {
	if c.opts.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	c.render(w, r, http.StatusOK, "login", view{Title: "Log in", Data: safeNext(r.URL.Query().Get("next"))})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if c.opts.Token == "" {
		http.Redirect(w, r, "/", http.StatusSeeOther)
		return
	}
	next := safeNext(r.PostFormValue("next"))
	if subtle.ConstantTimeCompare([]byte(r.PostFormValue("token")), []byte(c.opts.Token)) != 1 {
		c.opts.Logger.Warn("console login refused: wrong token", "remote", r.RemoteAddr)
		c.render(w, r, http.StatusUnauthorized, "login", view{Title: "Log in", Message: "That is not the ops token.", Data: next})
		return
	}
	s := c.sessions.create(true)
	c.setCookie(w, s)
	c.opts.Logger.Info("console login", "session", s.short(), "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

func (c *Console) logout(w http.ResponseWriter, r *http.Request, s *session) {
	c.sessions.remove(s.id)
	http.SetCookie(w, &http.Cookie{Name: SessionCookie, Value: "", Path: "/", MaxAge: -1, HttpOnly: true, SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// safeNext keeps a redirect on this server: a path of its own, with no
// scheme, host or control character a browser would read otherwise.
func safeNext(next string) string {
	if !strings.HasPrefix(next, "/") || strings.ContainsFunc(next, func(r rune) bool { return r < 0x20 || r == 0x7f || r == '\\' }) {
		return "/"
	}
	u, err := url.Parse(next)
	if err != nil || u.Scheme != "" || u.Host != "" || u.User != nil || !strings.HasPrefix(u.Path, "/") || strings.HasPrefix(u.Path, "//") {
		return "/"
	}
	if u.RawQuery != "" {
		return u.EscapedPath() + "?" + u.RawQuery
	}
	return u.EscapedPath()
}

// routeRow is a route on the overview.
type routeRow struct {
	Route
	Lag        int64
	LagKnown   bool
	Partitions []Partition
	Rates      []series
}

type series struct {
	Name   string
	Points []float64
	Last   float64
}

func (c *Console) overview(w http.ResponseWriter, r *http.Request, s *session) {
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	var rows []routeRow
	for _, rt := range c.opts.Source.Routes() {
		row := routeRow{Route: rt}
		if parts, err := c.opts.Source.Partitions(ctx, rt.Name); err == nil {
			row.LagKnown, row.Partitions = true, parts
			for _, p := range parts {
				row.Lag += p.Lag
			}
		}
		for _, kind := range []string{"handled", "retried", "poisoned"} {
			pts := c.history.rates(rt.Name, kind)
			sr := series{Name: kind, Points: pts}
			if len(pts) > 0 {
				sr.Last = pts[len(pts)-1]
			}
			row.Rates = append(row.Rates, sr)
		}
		rows = append(rows, row)
	}
	c.render(w, r, http.StatusOK, "overview", view{Title: "Routes", Session: s, Actions: c.actions(s), LoggedIn: c.opts.Token != "", Data: rows})
}

func (c *Console) find(name string) (Route, bool) {
	for _, rt := range c.opts.Source.Routes() {
		if rt.Name == name {
			return rt, true
		}
	}
	return Route{}, false
}

func (c *Console) route(w http.ResponseWriter, r *http.Request, s *session) {
	rt, ok := c.find(r.PathValue("route"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	parts, err := c.opts.Source.Partitions(ctx, rt.Name)
	msg := ""
	if err != nil {
		msg = "Partitions not read: " + err.Error()
	}
	c.render(w, r, http.StatusOK, "route", view{Title: "Route " + rt.Name, Session: s, Actions: c.actions(s), LoggedIn: c.opts.Token != "",
		Message: msg, Data: struct {
			Route      Route
			Partitions []Partition
		}{rt, parts}})
}

// poisonQuery reads the filter of the poison explorer.
func poisonQuery(v url.Values) (Query, string, error) {
	q := Query{Reason: strings.TrimSpace(v.Get("reason")), Limit: 100}
	since := strings.TrimSpace(v.Get("since"))
	if since != "" {
		if d, err := time.ParseDuration(since); err == nil {
			q.Since = time.Now().Add(-d)
		} else if t, err := time.Parse(time.RFC3339, since); err == nil {
			q.Since = t
		} else {
			return q, since, fmt.Errorf("since %q is neither a duration such as 1h nor a time such as 2026-12-01T08:00:00Z", since)
		}
	}
	return q, since, nil
}

type poisonView struct {
	Route   Route
	Records []Poisoned
	Reason  string
	Since   string
}

func (c *Console) poison(w http.ResponseWriter, r *http.Request, s *session) {
	rt, ok := c.find(r.PathValue("route"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	q, since, err := poisonQuery(r.URL.Query())
	v := view{Title: "Poisoned records of " + rt.Name, Session: s, Actions: c.actions(s), LoggedIn: c.opts.Token != ""}
	pv := poisonView{Route: rt, Reason: q.Reason, Since: since}
	if err != nil {
		v.Message = err.Error()
	} else {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		if pv.Records, err = c.opts.Source.Poisoned(ctx, rt.Name, q); err != nil {
			v.Message = "The poison topic was not read: " + err.Error()
		}
	}
	v.Data = pv
	c.render(w, r, http.StatusOK, "poison", v)
}

type confirmView struct {
	Route  Route
	Refs   []string
	Reason string
	Since  string
	Count  int
	All    bool
}

// replay replays one record (ref) or every record the filter matches
// (all=1), after a confirmation that shows how many and carries exactly
// those records, so that what is replayed is what was confirmed. The
// result is a redirect, so that reloading it replays nothing again.
func (c *Console) replay(w http.ResponseWriter, r *http.Request, s *session) {
	rt, ok := c.find(r.PathValue("route"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	if !c.actions(s) {
		c.opts.Logger.Warn("console action refused: the console is read-only", "session", s.short(), "remote", r.RemoteAddr)
		http.Error(w, "this console is read-only: set ops.token_env or ops.token_file and log in, or ops.console.allow_actions: true", http.StatusForbidden)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	cv := confirmView{Route: rt, Reason: r.PostFormValue("reason"), Since: r.PostFormValue("since"), All: r.PostFormValue("all") == "1"}
	var refs []Ref
	seen := map[Ref]bool{}
	for _, raw := range r.PostForm["ref"] {
		ref, err := parseRef(raw)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !seen[ref] {
			seen[ref] = true
			refs = append(refs, ref)
		}
	}
	if cv.All && r.PostFormValue("confirm") != "yes" {
		q, _, err := poisonQuery(r.PostForm)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		q.Limit = maxReplay
		recs, err := c.opts.Source.Poisoned(ctx, rt.Name, q)
		if err != nil {
			http.Error(w, "the poison topic was not read: "+err.Error(), http.StatusBadGateway)
			return
		}
		refs = refs[:0]
		for _, p := range recs {
			refs = append(refs, p.Ref)
		}
	}
	for _, ref := range refs {
		cv.Refs = append(cv.Refs, fmt.Sprintf("%d/%d", ref.Partition, ref.Offset))
	}
	cv.Count = len(refs)
	if r.PostFormValue("confirm") != "yes" {
		c.render(w, r, http.StatusOK, "confirm", view{Title: "Replay", Session: s, Actions: true, LoggedIn: c.opts.Token != "", Data: cv})
		return
	}
	sent, skipped, err := c.opts.Source.Replay(ctx, rt.Name, refs)
	c.opts.Logger.Info("console action", "action", "replay", "session", s.short(), "remote", r.RemoteAddr,
		"route", rt.Name, "records", len(refs), "replayed", sent, "skipped", len(skipped),
		"reason_filter", cv.Reason != "", "since", cv.Since, "err", errText(err))
	q := url.Values{"sent": {strconv.Itoa(sent)}, "of": {strconv.Itoa(len(refs))}}
	for _, why := range skipped {
		q.Add("skipped", why)
	}
	if err != nil {
		q.Set("err", err.Error())
	}
	http.Redirect(w, r, "/poison/"+url.PathEscape(rt.Name)+"/replayed?"+q.Encode(), http.StatusSeeOther)
}

// replayed shows what a replay did.
func (c *Console) replayed(w http.ResponseWriter, r *http.Request, s *session) {
	rt, ok := c.find(r.PathValue("route"))
	if !ok {
		http.NotFound(w, r)
		return
	}
	q := r.URL.Query()
	msg := fmt.Sprintf("Replayed %s of %s record(s) to %s.", q.Get("sent"), q.Get("of"), rt.Topic)
	if skipped := q["skipped"]; len(skipped) > 0 {
		msg += fmt.Sprintf(" Skipped %d: %s.", len(skipped), strings.Join(skipped, "; "))
	}
	if e := q.Get("err"); e != "" {
		msg += " Stopped: " + e
	}
	c.render(w, r, http.StatusOK, "done", view{Title: "Replayed", Session: s, Actions: c.actions(s), LoggedIn: c.opts.Token != "", Message: msg, Data: rt})
}

// maxReplay bounds a replay of every matching record.
const maxReplay = 10000

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func parseRef(raw string) (Ref, error) {
	p, o, ok := strings.Cut(raw, "/")
	pn, err1 := strconv.ParseInt(p, 10, 32)
	on, err2 := strconv.ParseInt(o, 10, 64)
	if !ok || err1 != nil || err2 != nil || pn < 0 || on < 0 {
		return Ref{}, fmt.Errorf("record %q is not partition/offset", raw)
	}
	return Ref{Partition: int32(pn), Offset: on}, nil
}

func (c *Console) ledger(w http.ResponseWriter, r *http.Request, s *session) {
	user := strings.TrimSpace(r.URL.Query().Get("user"))
	v := view{Title: "Ledger", Session: s, Actions: c.actions(s), LoggedIn: c.opts.Token != ""}
	data := struct {
		User string
		Sent []Sent
	}{User: user}
	if user != "" {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		var err error
		if data.Sent, err = c.opts.Source.Sent(ctx, user); err != nil {
			v.Message = err.Error()
		} else if len(data.Sent) == 0 {
			v.Message = "Nothing was sent to user " + user + "."
		}
	}
	v.Data = data
	c.render(w, r, http.StatusOK, "ledger", v)
}

// spark draws points as an SVG polyline's points, 120×24, scaled to the
// largest.
func spark(points []float64) string {
	if len(points) == 0 {
		return ""
	}
	top := 0.0
	for _, p := range points {
		top = max(top, p)
	}
	var b strings.Builder
	step := 120.0 / float64(max(len(points)-1, 1))
	for i, p := range points {
		y := 23.0
		if top > 0 {
			y = 23 - 22*p/top
		}
		fmt.Fprintf(&b, "%.1f,%.1f ", float64(i)*step, y)
	}
	return strings.TrimSpace(b.String())
}

// sessions are the console's logins, in memory: a restart logs everyone
// out.
type sessions struct {
	mu  sync.Mutex
	all map[string]*session
	now func() time.Time
}

type session struct {
	id, csrf      string
	authenticated bool
	expires       time.Time
}

// CSRF is the token every form of the session carries.
func (s *session) CSRF() string { return s.csrf }

// short names the session in logs without giving it away.
func (s *session) short() string {
	if len(s.id) < 8 {
		return s.id
	}
	return s.id[:8]
}

const (
	sessionLife = 12 * time.Hour
	maxSessions = 1000
)

func newSessions(now func() time.Time) *sessions {
	return &sessions{all: map[string]*session{}, now: now}
}

func randomToken() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (ss *sessions) create(authenticated bool) *session {
	s := &session{id: randomToken(), csrf: randomToken(), authenticated: authenticated, expires: ss.now().Add(sessionLife)}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if len(ss.all) >= maxSessions {
		// Drop the expired ones, then the one that expires first.
		var first *session
		for id, old := range ss.all {
			if !ss.now().Before(old.expires) {
				delete(ss.all, id)
			} else if first == nil || old.expires.Before(first.expires) {
				first = old
			}
		}
		if len(ss.all) >= maxSessions && first != nil {
			delete(ss.all, first.id)
		}
	}
	ss.all[s.id] = s
	return s
}

func (ss *sessions) fromRequest(r *http.Request) *session {
	ck, err := r.Cookie(SessionCookie)
	if err != nil {
		return nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.all[ck.Value]
	if !ok || !ss.now().Before(s.expires) {
		return nil
	}
	return s
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	delete(ss.all, id)
	ss.mu.Unlock()
}

// history keeps the routes' counters, sampled, for the rate charts.
type history struct {
	mu      sync.Mutex
	size    int
	times   []time.Time
	samples []map[string][3]float64
}

func newHistory(size int) *history { return &history{size: max(size, 2) + 1} }

func (h *history) add(t time.Time, routes []Route) {
	m := make(map[string][3]float64, len(routes))
	for _, r := range routes {
		m[r.Name] = [3]float64{r.Handled, r.Retried, r.Poisoned}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.times = append(h.times, t)
	h.samples = append(h.samples, m)
	if len(h.times) > h.size {
		h.times, h.samples = h.times[1:], h.samples[1:]
	}
}

// rates returns the per-second rate of kind between consecutive samples.
func (h *history) rates(route, kind string) []float64 {
	i := map[string]int{"handled": 0, "retried": 1, "poisoned": 2}[kind]
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []float64
	for j := 1; j < len(h.times); j++ {
		dt := h.times[j].Sub(h.times[j-1]).Seconds()
		if dt <= 0 {
			continue
		}
		out = append(out, max(h.samples[j][route][i]-h.samples[j-1][route][i], 0)/dt)
	}
	return out
}
