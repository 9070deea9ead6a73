package config

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// FuzzCheck feeds Check any YAML, with one environment value for every
// ${VAR}. Check must not panic; what it accepts must validate; expansion
// must leave the keys as the file has them; and the checker must see
// every value the YAML library refuses, so that no type error reaches the
// user in the library's words.
func FuzzCheck(f *testing.F) {
	shipped, err := os.ReadFile(filepath.Join("..", DefaultPath))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(shipped, "")
	f.Add(shipped, "127.0.0.1:19092")
	f.Add(shipped, "smtp\nbogus: 1")
	for _, seed := range []struct{ raw, value string }{
		{"routes:\n  - handler: notification\n    subscribe_topic: t\n    consumer_group: ${V}\n", "g\nbogus: 1\n  - handler: x"},
		{"kafka:\n  brokers: [\"${V}\"]\n", "a:1 # b"},
		{"kafka:\n  brokers: [${V}]\n", "a:1"},
		{"kafka:\n  brokers: [a:1]\n  tls: {enabled: ${V}, ca_file: /c, insecure_skip_verify: true}\n  sasl: {mechanism: PLAIN, username: u, password_env: P}\n", "true"},
		{"# it's ${V}\nlog:\n  level: ${V:-info} # don't ${NOPE}\n", "debug"},
		{"notifier:\n  smtp:\n    port: ${V:-1025}\n    timeout: ${V}\n", "25\n"},
		{"ops:\n  enabled: ${V}\n  listen: '${V}'\n", "true"},
		{"retry:\n  max_retries:\n", ""},
		{"routes:\n  - retry:\n      max_retries:\n      multiplier: 0\n", ""},
		{"retry:\n  multiplier: 0\n  outage_interval: 0s\n  outage_max_interval: 0s\n", ""},
		{"kafka:\n  dial_timeout: 10\n  embedded: {partitions: 1.5, enabled: \"yes\"}\n", ""},
		{"log: {level: info}\n---\nlog: {level: debug}\n", ""},
		{"a: &x [*x]\n", ""},
		{"kafka: &k {brokers: [a:1]}\nrouter:\n  <<: *k\n", ""},
		{"retry: &r {max_retries: 1}\nroutes:\n  - &route {handler: n, subscribe_topic: t, consumer_group: g, retry: {<<: *r, multiplier: 3}}\n  - *route\n", ""},
		{"log: {level: $$, format: $${V}}\n", ""},
		{"retry:\n  max_retries: !!str 5\n  multiplier: !!float ${V}\nlog: !!null\n", "2"},
		{"a: &a {level: info}\nb: &b {format: json}\nlog:\n  <<: [*a, *b]\n  <<: *a\n", ""},
		{"? [a]\n: 1\n!!binary a2Fma2E=: {}\n", ""},
		{"log:\n  level: info\n  level: debug\n~: 1\n", ""},
		{"routes:\n  - handler: webhook\n    subscribe_topic: t\n    consumer_group: g\n    start_from: ${V}\n    options:\n      url: ${V}\n      headers: {a: b, a: c}\n      x: [1, {y: 2}]\n", "latest"},
		{"routes:\n  - handler: audit\n    subscribe_topic: t\n    consumer_group: g\n    options: ${V}\n", "[1]"},
		{"routes:\n  - handler: n\n    subscribe_topic: t\n    consumer_group: g\n  - handler: m\n    subscribe_topic: t\n    consumer_group: h\n", ""},
	} {
		f.Add([]byte(seed.raw), seed.value)
	}
	f.Fuzz(func(t *testing.T, raw []byte, value string) {
		getenv := func(string) string { return value }
		cfg, problems := Check(raw, getenv)
		if len(problems) == 0 {
			if err := cfg.Validate(); err != nil {
				t.Fatalf("Check found no problem, but Validate = %v", err)
			}
		}
		for _, p := range problems {
			if msg := p.Error(); !strings.HasPrefix(msg, "config: ") || strings.Contains(msg, "cannot unmarshal") {
				t.Errorf("problem %q; want the prefix config: and plain words", msg)
			}
		}

		root, _, ok := readDocument(raw)
		if !ok || root == nil || root.Kind != yaml.MappingNode {
			return
		}
		before := keyLines(root)
		expandNode(root, "", getenv, func(*yaml.Node, string, error) {})
		if after := keyLines(root); !maps.Equal(before, after) {
			t.Fatalf("keys before expansion %v; after %v", slices.Sorted(maps.Keys(before)), slices.Sorted(maps.Keys(after)))
		}
		// The same file with a harmless value has the same unknown keys.
		_, plain := Check(raw, func(string) string { return "x" })
		if a, b := unknownKeys(problems), unknownKeys(plain); !slices.Equal(a, b) {
			t.Fatalf("unknown keys with %q: %v; with x: %v", value, a, b)
		}

		c := newChecker(nil)
		decoded := Defaults()
		c.node(root, reflect.TypeOf(decoded), reflect.ValueOf(decoded), "")
		dropRepeats(root)
		err := root.Decode(&decoded)
		var typeErr *yaml.TypeError
		if len(c.errs) == 0 && errors.As(err, &typeErr) {
			t.Fatalf("the checker found nothing; the YAML library: %v", err)
		}
		if err == nil && c.unseen != len(c.errs) {
			t.Fatalf("the YAML library decodes it; the checker found %v", c.errs)
		}
	})
}

func unknownKeys(problems []error) []string {
	var keys []string
	for _, p := range problems {
		var ke *KeyError
		if errors.As(p, &ke) && strings.HasPrefix(ke.Msg, "unknown key") {
			keys = append(keys, ke.Key)
		}
	}
	return keys
}
