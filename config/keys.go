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

// collectLines records the line of every key and sequence item, by path.
func collectLines(n *yaml.Node, prefix string, lines map[string]int) {
	switch n.Kind {
	case yaml.DocumentNode:
		for _, c := range n.Content {
			collectLines(c, prefix, lines)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			path := n.Content[i].Value
			if prefix != "" {
				path = prefix + "." + path
			}
			lines[path] = n.Content[i].Line
			collectLines(n.Content[i+1], path, lines)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			path := fmt.Sprintf("%s[%d]", prefix, i)
			lines[path] = c.Line
			collectLines(c, path, lines)
		}
	}
}
