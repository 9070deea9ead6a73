package config

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var (
	lineRef      = regexp.MustCompile(`^line (\d+): `)
	unknownField = regexp.MustCompile(`^field \S+ not found in type \S+$`)
)

// decodeErrors turns an error of the YAML library that the checker did
// not foresee into errors naming the key path and line, as in
// "config: line 7: kafka.dial_timeout: has a value of the wrong type".
func decodeErrors(root *yaml.Node, err error) []error {
	msgs := []string{strings.TrimPrefix(err.Error(), "yaml: ")}
	var typeErr *yaml.TypeError
	if errors.As(err, &typeErr) {
		msgs = typeErr.Errors
	}
	paths := map[int]string{}
	collectPaths(root, "", paths)
	errs := make([]error, 0, len(msgs))
	for _, msg := range msgs {
		ke := &KeyError{Msg: msg}
		if m := lineRef.FindStringSubmatch(msg); m != nil {
			ke.Line, _ = strconv.Atoi(m[1])
			ke.Key = paths[ke.Line]
			ke.Msg = msg[len(m[0]):]
		}
		switch {
		case unknownField.MatchString(ke.Msg):
			ke.Msg = "unknown key"
		case strings.HasPrefix(ke.Msg, "cannot unmarshal"):
			ke.Msg = "has a value of the wrong type"
		}
		errs = append(errs, ke)
	}
	return errs
}

// Locate sets the Line of each KeyError in errs that has none: the line
// of its key in the configuration file raw, or of the nearest parent key
// the file has.
func Locate(raw []byte, errs []error) {
	root, _, _ := readDocument(raw)
	locate(keyLines(root), errs)
}

// keyLines maps the path of every key and sequence item under root to
// its line.
func keyLines(root *yaml.Node) map[string]int {
	lines := map[string]int{}
	if root != nil {
		collectLines(root, "", lines)
	}
	return lines
}

func locate(lines map[string]int, errs []error) {
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

// Sort orders errs by line, those without one last, keeping the order of
// errors on the same line.
func Sort(errs []error) {
	line := func(err error) int {
		var ke *KeyError
		if errors.As(err, &ke) && ke.Line > 0 {
			return ke.Line
		}
		return math.MaxInt
	}
	sort.SliceStable(errs, func(i, j int) bool { return line(errs[i]) < line(errs[j]) })
}

// Add appends to problems each error of more that is not about a key
// problems already report (the key itself, one under it or one above it),
// so that a value is blamed once.
func Add(problems []error, more ...error) []error {
	var keys []string
	for _, p := range problems {
		if k, ok := keyOf(p); ok {
			keys = append(keys, k)
		}
	}
	for _, m := range more {
		if k, ok := keyOf(m); ok && k != "" && relatedToAny(k, keys) {
			continue
		}
		problems = append(problems, m)
	}
	return problems
}

func keyOf(err error) (string, bool) {
	var ke *KeyError
	if errors.As(err, &ke) {
		return ke.Key, true
	}
	return "", false
}

func relatedToAny(key string, keys []string) bool {
	for _, k := range keys {
		if k != "" && (under(key, k) || under(k, key)) {
			return true
		}
	}
	return false
}

// under reports whether key is path or a key below it.
func under(key, path string) bool {
	if !strings.HasPrefix(key, path) {
		return false
	}
	rest := key[len(path):]
	return rest == "" || rest[0] == '.' || rest[0] == '['
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
