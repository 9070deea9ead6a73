package config_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/config"
)

// hookOptions is a handler's options as a handler declares them.
type hookOptions struct {
	URL     string            `yaml:"url"`
	Timeout time.Duration     `yaml:"timeout"`
	Headers map[string]string `yaml:"headers"`
	Tags    []string          `yaml:"tags"`
	Retries *int              `yaml:"retries"`
}

func (o hookOptions) Validate() error {
	var errs []error
	if o.URL == "" {
		errs = append(errs, &config.KeyError{Key: "url", Msg: "is missing"})
	}
	if v, ok := o.Headers["X-Bad"]; ok {
		errs = append(errs, &config.KeyError{Key: "headers.X-Bad", Msg: "refused " + v})
	}
	if _, ok := o.Headers["X.Dot"]; ok {
		errs = append(errs, &config.KeyError{Key: "headers.X.Dot", Msg: "refused"})
	}
	if o.Timeout > time.Minute {
		errs = append(errs, errors.New("timeout too long"))
	}
	return errors.Join(errs...)
}

// route returns the route with options, and the problems Check found:
// repeated keys are found there, before the handler decodes its options.
func route(t *testing.T, options string) (config.Route, []error) {
	t.Helper()
	raw := "kafka:\n  brokers: [a:1]\nroutes:\n  - handler: hook\n    subscribe_topic: t\n    consumer_group: g\n    options:\n" + options
	cfg, problems := config.Check([]byte(raw), func(string) string { return "https://from.env/x?token=s3cret" })
	return cfg.Routes[0], problems
}

func TestDecodeOptions(t *testing.T) {
	tests := []struct {
		name, options string
		want          []string // problems, in order; none means decoded
		check         func(t *testing.T, o hookOptions)
	}{
		{name: "defaults kept", options: "      url: http://x\n", check: func(t *testing.T, o hookOptions) {
			if o.Timeout != 5*time.Second || o.URL != "http://x" {
				t.Errorf("got %+v; want url set and the default timeout 5s", o)
			}
		}},
		{name: "every kind of value", options: "      url: http://x\n      timeout: 1m\n      headers: {A: b}\n      tags: [x, y]\n      retries: 0\n",
			check: func(t *testing.T, o hookOptions) {
				if o.Timeout != time.Minute || o.Headers["A"] != "b" || len(o.Tags) != 2 || o.Retries == nil || *o.Retries != 0 {
					t.Errorf("got %+v; want each value decoded", o)
				}
			}},
		{name: "from the environment", options: "      url: ${HOOK_URL}\n", check: func(t *testing.T, o hookOptions) {
			if o.URL != "https://from.env/x?token=s3cret" {
				t.Errorf("got url %q; want the variable's value", o.URL)
			}
		}},
		{name: "unknown key", options: "      url: http://x\n      retry: 3\n",
			want: []string{"config: line 9: routes[0].options.retry: unknown key; known: url, timeout, headers, tags, retries"}},
		{name: "repeated key", options: "      url: http://x\n      url: http://y\n",
			want: []string{"config: line 9: routes[0].options.url: is set twice (first on line 8)"}},
		{name: "repeated map key", options: "      url: http://x\n      headers: {A: b, A: c}\n",
			want: []string{"config: line 9: routes[0].options.headers.A: is set twice (first on line 9)"}},
		{name: "wrong types", options: "      url: [x]\n      timeout: soon\n      headers: [a]\n",
			want: []string{"config: line 8: routes[0].options.url: must be text, got a list",
				`config: line 9: routes[0].options.timeout: "soon" is not a duration (such as 10s or 1m30s)`,
				"config: line 10: routes[0].options.headers: must be a mapping of keys, got a list"}},
		{name: "a value from the environment is not quoted", options: "      timeout: ${HOOK_URL}\n      url: x\n",
			want: []string{"config: line 8: routes[0].options.timeout: the value of ${HOOK_URL} is not a duration (such as 10s or 1m30s)"}},
		{name: "validation with lines", options: "      timeout: 2m\n      headers:\n        X-Bad: v\n",
			want: []string{"config: line 8: routes[0].options.url: is missing", "config: line 10: routes[0].options.headers.X-Bad: refused v",
				"config: line 8: routes[0].options: timeout too long"}},
		{name: "a handler's message quotes no value from the environment", options: "      url: x\n      headers:\n        X-Bad: ${HOOK_URL}\n",
			want: []string{"config: line 10: routes[0].options.headers.X-Bad: refused ${HOOK_URL}"}},
		{name: "a key with a dot has its own line", options: "      url: x\n      headers:\n        A: b\n        X.Dot: c\n",
			want: []string{"config: line 11: routes[0].options.headers.X.Dot: refused"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := hookOptions{Timeout: 5 * time.Second}
			r, errs := route(t, tt.options)
			if len(errs) == 0 {
				errs = r.DecodeOptions(0, &o)
			}
			var got []string
			for _, e := range errs {
				got = append(got, e.Error())
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Fatalf("got problems\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if tt.check != nil {
				tt.check(t, o)
			}
		})
	}
	var o hookOptions
	if errs := (config.Route{}).DecodeOptions(0, o); len(errs) != 1 {
		t.Errorf("got %v for a struct that is not a pointer; want one error", errs)
	}
}

// FuzzDecodeOptions decodes any YAML as a handler's options: no panic,
// and every problem names a key under routes[0].options.
func FuzzDecodeOptions(f *testing.F) {
	for _, seed := range []string{"url: x", "timeout: 1s\nheaders: {a: b}", "tags: [a, {b: c}]", "retries: ~", "headers: {a: b, a: c}", "<<: {url: x}", "url: &a x\ntags: [*a]", "[1]", "x"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, options string) {
		raw := "kafka:\n  brokers: [a:1]\nroutes:\n  - handler: hook\n    subscribe_topic: t\n    consumer_group: g\n    options:\n"
		for _, line := range strings.Split(options, "\n") {
			raw += "      " + line + "\n"
		}
		cfg, problems := config.Check([]byte(raw), func(string) string { return "" })
		if len(problems) > 0 || len(cfg.Routes) != 1 {
			return
		}
		var o hookOptions
		for _, err := range cfg.Routes[0].DecodeOptions(0, &o) {
			var ke *config.KeyError
			if !errors.As(err, &ke) || !strings.HasPrefix(ke.Key, "routes[0].options") {
				t.Errorf("problem %v names no key under routes[0].options", err)
			}
		}
	})
}
