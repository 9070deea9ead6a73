package config

import (
	"bytes"
	"fmt"
	"regexp"
)

// envRef matches ${VAR} and ${VAR:-default}. A doubled $$ escapes it.
var envRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// Expand replaces ${VAR} and ${VAR:-default} in raw with values from
// getenv, and $$ with $, outside YAML comments. ${VAR} without a default
// is an error when VAR is unset or empty, so a missing secret fails at
// start-up rather than becoming an empty string. A bare $ is left alone,
// so passwords and regular expressions need no escaping.
func Expand(raw []byte, getenv func(string) string) ([]byte, error) {
	lines := bytes.SplitAfter(raw, []byte("\n"))
	var out bytes.Buffer
	out.Grow(len(raw))
	for i, line := range lines {
		body, comment := splitComment(line)
		var missing string
		expanded := envRef.ReplaceAllFunc(body, func(m []byte) []byte {
			if string(m) == "$$" {
				return []byte("$")
			}
			sub := envRef.FindSubmatch(m)
			if v := getenv(string(sub[1])); v != "" {
				return []byte(v)
			}
			if len(sub[2]) > 0 {
				return sub[2][2:]
			}
			if missing == "" {
				missing = string(sub[1])
			}
			return m
		})
		if missing != "" {
			return nil, fmt.Errorf("config: line %d: environment variable %s is not set (use ${%s:-default} for a default)", i+1, missing, missing)
		}
		out.Write(expanded)
		out.Write(comment)
	}
	return out.Bytes(), nil
}

// splitComment splits a YAML line before its comment: a # at the start or
// after a blank, outside quotes.
func splitComment(line []byte) (body, comment []byte) {
	var quote byte
	for i, c := range line {
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#' && (i == 0 || line[i-1] == ' ' || line[i-1] == '\t'):
			return line[:i], line[i:]
		}
	}
	return line, nil
}
