package config

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var (
	lineRef      = regexp.MustCompile(`^line (\d+): `)
	unknownField = regexp.MustCompile(`^field \S+ not found in type \S+$`)
)

// decodeError turns the YAML library's error into one line that names the
// key path of every problem, as in
// "config: line 7: kafka.dial_timeout: cannot unmarshal ...".
func decodeError(raw []byte, err error) error {
	var typeErr *yaml.TypeError
	if !errors.As(err, &typeErr) {
		return fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var doc yaml.Node
	paths := map[int]string{}
	if yaml.Unmarshal(raw, &doc) == nil {
		collectPaths(&doc, "", paths)
	}
	msgs := make([]string, 0, len(typeErr.Errors))
	for _, msg := range typeErr.Errors {
		if m := lineRef.FindStringSubmatch(msg); m != nil {
			line, _ := strconv.Atoi(m[1])
			rest := msg[len(m[0]):]
			if unknownField.MatchString(rest) {
				rest = "unknown key"
			}
			if path, ok := paths[line]; ok {
				msg = fmt.Sprintf("line %d: %s: %s", line, path, rest)
			}
		}
		msgs = append(msgs, msg)
	}
	return fmt.Errorf("config: %s", strings.Join(msgs, "; "))
}

// collectPaths records, for each line that holds a key, the key's path.
func collectPaths(n *yaml.Node, prefix string, paths map[int]string) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			collectPaths(c, prefix, paths)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			path := key.Value
			if prefix != "" {
				path = prefix + "." + key.Value
			}
			paths[key.Line] = path
			collectPaths(val, path, paths)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			path := fmt.Sprintf("%s[%d]", prefix, i)
			if _, ok := paths[c.Line]; !ok {
				paths[c.Line] = path
			}
			collectPaths(c, path, paths)
		}
	}
}
