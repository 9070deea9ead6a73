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

// decodeErrors turns the YAML library's error into one error per problem,
// each naming the key path, as in
// "config: line 7: kafka.dial_timeout: cannot unmarshal ...".
func decodeErrors(raw []byte, err error) []error {
	var typeErr *yaml.TypeError
	if !errors.As(err, &typeErr) {
		return []error{fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "yaml: "))}
	}
	paths := linePaths(raw)
	errs := make([]error, 0, len(typeErr.Errors))
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
		errs = append(errs, fmt.Errorf("config: %s", msg))
	}
	return errs
}

func linePaths(raw []byte) map[int]string {
	var doc yaml.Node
	paths := map[int]string{}
	if yaml.Unmarshal(raw, &doc) == nil {
		collectPaths(&doc, "", paths)
	}
	return paths
}

// Locate sets the Line of each KeyError in errs: the line of its key in
// raw, or of the nearest parent key the file has.
func Locate(raw []byte, errs []error) {
	lines := map[string]int{}
	var doc yaml.Node
	if yaml.Unmarshal(raw, &doc) == nil {
		collectLines(&doc, "", lines)
	}
	for _, err := range errs {
		var ke *KeyError
		if !errors.As(err, &ke) || ke.Line > 0 {
			continue
		}
		for path := ke.Key; path != ""; path = parentPath(path) {
			if line, ok := lines[path]; ok {
				ke.Line = line
				break
			}
		}
	}
}

// parentPath drops the last element of a key path: "a.b[0].c" → "a.b[0]"
// → "a.b" → "a".
func parentPath(path string) string {
	if i := strings.LastIndexAny(path, ".["); i > 0 {
		return path[:i]
	}
	return ""
}

// walk visits every mapping key and sequence item under n with its path and
// line, parents before children.
func walk(n *yaml.Node, prefix string, visit func(path string, line int, isKey bool)) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			walk(c, prefix, visit)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			path := n.Content[i].Value
			if prefix != "" {
				path = prefix + "." + path
			}
			visit(path, n.Content[i].Line, true)
			walk(n.Content[i+1], path, visit)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			path := fmt.Sprintf("%s[%d]", prefix, i)
			visit(path, c.Line, false)
			walk(c, path, visit)
		}
	}
}

// collectPaths records, for each line, the path of the deepest key on it,
// or of the sequence item that starts there.
func collectPaths(n *yaml.Node, prefix string, paths map[int]string) {
	walk(n, prefix, func(path string, line int, isKey bool) {
		if _, taken := paths[line]; isKey || !taken {
			paths[line] = path
		}
	})
}

// collectLines records the line of every key and sequence item, by path.
func collectLines(n *yaml.Node, prefix string, lines map[string]int) {
	walk(n, prefix, func(path string, line int, _ bool) { lines[path] = line })
}
