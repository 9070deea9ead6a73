package config

import (
	"fmt"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"
)

// envRef matches ${VAR} and ${VAR:-default}. A doubled $$ escapes it.
var envRef = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// Expand replaces ${VAR} and ${VAR:-default} with values from getenv, and
// $$ with $, in every scalar value of the parsed YAML tree n (keys and
// comments are left alone). It returns one KeyError, with its key and
// line, per variable that is unset, and empties that value. Expanding the
// tree rather than the text means a value can never add keys or end early,
// whatever it holds. ${VAR} without a default is an error when VAR is
// unset or empty, so a missing secret fails at start-up rather than
// becoming an empty string. A bare $ is left alone, so passwords and
// regular expressions need no escaping.
//
// An expanded plain scalar is resolved again, so `port: ${PORT:-1025}` is
// a number; one that is empty or holds a line break stays text.
func Expand(n *yaml.Node, getenv func(string) string) []error {
	var errs []error
	expandNode(n, "", getenv, func(n *yaml.Node, ref string, err error) {
		if err != nil {
			errs = append(errs, err)
		}
	})
	return errs
}

// expandNode expands the scalars under n, which is at key path, and calls
// done for each scalar it changed or could not expand. Aliases are not
// followed: the node they refer to is expanded where it is defined.
func expandNode(n *yaml.Node, path string, getenv func(string) string, done func(n *yaml.Node, ref string, err error)) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			expandNode(c, path, getenv, done)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			expandNode(c, fmt.Sprintf("%s[%d]", path, i), getenv, done)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			expandNode(n.Content[i+1], join(path, n.Content[i].Value), getenv, done)
		}
	case yaml.ScalarNode:
		if !strings.Contains(n.Value, "$") {
			return
		}
		value, missing := expandString(n.Value, getenv)
		for _, name := range missing {
			done(n, n.Value, &KeyError{Key: path, Line: n.Line,
				Msg: fmt.Sprintf("environment variable %s is not set (use ${%s:-default} for a default)", name, name)})
		}
		if len(missing) > 0 {
			// Emptied, so that nothing is derived from the reference
			// itself (such as a poison topic "${TOPIC}.poison").
			n.Value, n.Tag = "", "!!str"
			return
		}
		if value == n.Value {
			return
		}
		done(n, n.Value, nil)
		n.Value = value
		if n.Style&yaml.TaggedStyle != 0 {
			// An explicit tag such as !!str decides the type.
			return
		}
		if n.Style&^yaml.FlowStyle == 0 && value != "" && !strings.ContainsAny(value, "\r\n") {
			// A plain scalar is typed by what it holds, as if the
			// file had held the value.
			n.Tag = ""
		} else {
			n.Tag = "!!str"
		}
	}
}

// expandString expands s and lists the variables it needs that are unset.
func expandString(s string, getenv func(string) string) (string, []string) {
	var missing []string
	out := envRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := envRef.FindStringSubmatch(m)
		if v := getenv(sub[1]); v != "" {
			return v
		}
		if sub[2] != "" {
			return sub[2][2:]
		}
		for _, name := range missing {
			if name == sub[1] {
				return m
			}
		}
		missing = append(missing, sub[1])
		return m
	})
	return out, missing
}
