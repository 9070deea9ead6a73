package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// readDocument parses raw into its one YAML document and returns the
// document's content: nil for an empty file. ok is false when the first
// document does not parse. A second document is reported, and the first
// still returned, so that its problems are reported too.
func readDocument(raw []byte) (root *yaml.Node, errs []error, ok bool) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil, true
		}
		err := syntaxError(err)
		if flowRef.Match(raw) {
			err.Msg += "; a ${VAR} inside [ ] or { } must be quoted, as in [\"${VAR}\"]"
		}
		return nil, []error{err}, false
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		errs = append(errs, &KeyError{Line: next.Line, Msg: "a second YAML document starts here; the configuration must be one document (remove the ---)"})
	case !errors.Is(err, io.EOF):
		errs = append(errs, syntaxError(err))
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 {
		return nil, errs, true
	}
	return doc.Content[0], errs, true
}

// flowRef matches an unquoted ${VAR} inside a flow collection, which YAML
// does not allow: "{" ends a plain scalar there.
var flowRef = regexp.MustCompile(`(?m)[\[{][^\n"']*\$\{`)

// syntaxError turns the YAML parser's error into a KeyError with its line.
func syntaxError(err error) *KeyError {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if m := lineRef.FindStringSubmatch(msg); m != nil {
		line, _ := strconv.Atoi(m[1])
		return &KeyError{Line: line, Msg: msg[len(m[0]):]}
	}
	return &KeyError{Msg: msg}
}

var durationType = reflect.TypeOf(time.Duration(0))

// checker walks a YAML tree alongside the Go type it decodes into and
// reports, in plain words, what the YAML library would refuse (unknown and
// repeated keys, values of the wrong type) and the empty values it would
// silently skip, each with its key and line.
type checker struct {
	errs []error
	// expanded maps each scalar that ${VAR} expansion changed to the text
	// the file had, so that messages show the reference, never a value
	// that came from the environment (it may be a secret).
	expanded map[*yaml.Node]string
	// seen holds the alias targets already checked, per type, so that
	// aliases cost one visit each (no alias bombs).
	seen map[aliasVisit]bool
	// active holds the alias targets being checked, to catch an alias
	// inside the value it refers to.
	active map[*yaml.Node]bool
	// unknown lists the paths of unknown keys.
	unknown []string
	// unseen counts the errors that decoding the tree (after dropRepeats)
	// does not report: empty values it skips, unknown and repeated keys.
	// The fuzz test holds the checker to the YAML library with it.
	unseen int
}

type aliasVisit struct {
	node *yaml.Node
	typ  reflect.Type
}

func newChecker(expanded map[*yaml.Node]string) *checker {
	return &checker{expanded: expanded, seen: map[aliasVisit]bool{}, active: map[*yaml.Node]bool{}}
}

func (c *checker) add(key string, line int, format string, args ...any) {
	c.errs = append(c.errs, &KeyError{Key: key, Line: line, Msg: fmt.Sprintf(format, args...)})
}

// strict is add for an error that decoding the tree does not report.
func (c *checker) strict(key string, line int, format string, args ...any) {
	c.unseen++
	c.add(key, line, format, args...)
}

// node checks n as a value of type t at key path, where def is the value
// that decoding n would replace (invalid when unknown).
func (c *checker) node(n *yaml.Node, t reflect.Type, def reflect.Value, path string) {
	if n.Kind == yaml.AliasNode {
		target := n.Alias
		if target == nil {
			return
		}
		if c.active[target] {
			c.add(path, n.Line, "alias *%s is inside the value it refers to", n.Value)
			return
		}
		visit := aliasVisit{target, t}
		if c.seen[visit] {
			return
		}
		c.seen[visit] = true
		c.active[target] = true
		c.node(target, t, def, path)
		delete(c.active, target)
		return
	}
	if isNull(n) {
		c.null(n, t, def, path)
		return
	}
	if t == yamlNodeType {
		// A handler's options: only the handler knows their keys (see
		// DecodeOptions), but a repeated key is refused here, before
		// dropRepeats hides it.
		c.repeats(n, path)
		return
	}
	if t.Kind() == reflect.Pointer {
		if def.IsValid() {
			def = def.Elem()
		}
		c.node(n, t.Elem(), def, path)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			c.add(path, n.Line, "must be a mapping of keys, got %s", c.describe(n))
			return
		}
		c.mapping(n, t, def, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.add(path, n.Line, "must be a mapping of keys, got %s", c.describe(n))
			return
		}
		c.mapOf(n, t, path)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			c.add(path, n.Line, "must be a list, got %s", c.describe(n))
			return
		}
		for i, item := range n.Content {
			key := fmt.Sprintf("%s[%d]", path, i)
			if isNull(item) {
				// The YAML library drops an empty item from the list.
				c.strict(key, item.Line, "is empty")
				continue
			}
			c.node(item, t.Elem(), reflect.Value{}, key)
		}
	default:
		if n.Kind != yaml.ScalarNode {
			c.add(path, n.Line, "must be %s, got %s", noun(t), c.describe(n))
			return
		}
		c.scalar(n, t, path)
	}
}

// scalar checks that the YAML library decodes n into a t, by decoding it.
func (c *checker) scalar(n *yaml.Node, t reflect.Type, path string) {
	v := reflect.New(t)
	if err := n.Decode(v.Interface()); err == nil {
		if v.Elem().CanInt() && t != durationType && n.ShortTag() == "!!float" {
			// The YAML library truncates 1.5 to 1 without a word.
			var f float64
			if n.Decode(&f) == nil && f != float64(v.Elem().Int()) {
				c.strict(path, n.Line, "%s is not %s", c.describe(n), noun(t))
			}
		}
		return
	}
	msg := fmt.Sprintf("%s is not %s", c.describe(n), noun(t))
	if n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle) != 0 {
		plain := *n
		plain.Style &^= yaml.SingleQuotedStyle | yaml.DoubleQuotedStyle
		plain.Tag = ""
		if plain.Decode(reflect.New(t).Interface()) == nil {
			msg += "; remove the quotes"
		}
	}
	c.add(path, n.Line, "%s", msg)
}

// null reports an empty value where the YAML library would keep the
// default, or leave a pointer nil, without a word.
func (c *checker) null(n *yaml.Node, t reflect.Type, def reflect.Value, path string) {
	switch t.Kind() {
	case reflect.Struct, reflect.Slice:
		// An empty section keeps its defaults; an empty list is empty.
		return
	case reflect.String:
		if !def.IsValid() || def.String() == "" {
			return
		}
		c.strict(path, n.Line, "is empty; write a value, or remove the key to use the default %q", def.String())
		return
	}
	// A pointer is left nil, any other value silently keeps its default.
	c.strict(path, n.Line, "is empty; write %s, or remove the key to use the default", noun(t))
}

// mapping checks the keys of n against the fields of struct type t.
func (c *checker) mapping(n *yaml.Node, t reflect.Type, def reflect.Value, path string) {
	fields, names := structFields(t)
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if isMerge(k) {
			if line, ok := first["<<"]; ok {
				c.strict(join(path, "<<"), k.Line, "is set twice (first on line %d)", line)
				continue
			}
			first["<<"] = k.Line
			c.merge(v, t, def, path)
			continue
		}
		var name string
		if err := k.Decode(&name); err != nil {
			c.add(join(path, ""), k.Line, "has a key that is %s, not text", c.describe(k))
			continue
		}
		if isNull(k) || k.Kind == yaml.AliasNode && k.Alias != nil && isNull(k.Alias) {
			// The YAML library skips an entry with an empty key.
			c.strict(path, k.Line, "has an entry with an empty key")
			continue
		}
		key := join(path, name)
		idx, ok := fields[name]
		if !ok {
			// Decoding a node cannot refuse unknown keys: only the
			// checker does.
			c.strict(key, k.Line, "unknown key; known: %s", strings.Join(names, ", "))
			c.unknown = append(c.unknown, key)
			continue
		}
		if line, ok := first[name]; ok {
			c.strict(key, k.Line, "is set twice (first on line %d)", line)
			continue
		}
		first[name] = k.Line
		var fdef reflect.Value
		if def.IsValid() {
			fdef = def.Field(idx)
		}
		c.node(v, t.Field(idx).Type, fdef, key)
	}
}

// mapOf checks the entries of n as a Go map of type t: text keys, each
// once, and values of t's element type.
func (c *checker) mapOf(n *yaml.Node, t reflect.Type, path string) {
	if t.Key().Kind() != reflect.String {
		c.add(path, n.Line, "cannot be set in the file")
		return
	}
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode || isNull(k) || isMerge(k) {
			c.add(path, k.Line, "has a key that is %s, not text", c.describe(k))
			continue
		}
		key := path + "." + k.Value
		if line, ok := first[k.Value]; ok {
			c.strict(key, k.Line, "is set twice (first on line %d)", line)
			continue
		}
		first[k.Value] = k.Line
		c.node(v, t.Elem(), reflect.Value{}, key)
	}
}

// repeats reports every key set twice in a mapping under n.
func (c *checker) repeats(n *yaml.Node, path string) {
	switch n.Kind {
	case yaml.SequenceNode:
		for i, item := range n.Content {
			c.repeats(item, fmt.Sprintf("%s[%d]", path, i))
		}
	case yaml.MappingNode:
		first := map[string]int{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			key := join(path, k.Value)
			if line, ok := first[k.Value]; ok && k.Kind == yaml.ScalarNode {
				c.strict(key, k.Line, "is set twice (first on line %d)", line)
				continue
			}
			first[k.Value] = k.Line
			c.repeats(v, key)
		}
	}
}

var yamlNodeType = reflect.TypeOf(yaml.Node{})

// merge checks the value of a YAML merge key (<<): a mapping, an alias of
// one, or a list of those, each merged into the mapping that holds it.
func (c *checker) merge(v *yaml.Node, t reflect.Type, def reflect.Value, path string) {
	mappingLike := func(n *yaml.Node) bool {
		return n.Kind == yaml.MappingNode || n.Kind == yaml.AliasNode && n.Alias != nil && n.Alias.Kind == yaml.MappingNode
	}
	switch {
	case mappingLike(v):
		c.node(v, t, def, path)
	case v.Kind == yaml.SequenceNode:
		for _, item := range v.Content {
			if !mappingLike(item) {
				c.add(join(path, "<<"), item.Line, "must be a mapping or a list of mappings to merge")
				return
			}
		}
		for _, item := range v.Content {
			c.node(item, t, def, path)
		}
	default:
		c.add(join(path, "<<"), v.Line, "must be a mapping or a list of mappings to merge")
	}
}

// describe names what n holds for a message: its text, shortened, or
// the ${VAR} reference it was expanded from.
func (c *checker) describe(n *yaml.Node) string {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return "alias *" + n.Value + " of " + c.describe(n.Alias)
	}
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	if ref, ok := c.expanded[n]; ok {
		return fmt.Sprintf("the value of %s", shorten(ref))
	}
	return fmt.Sprintf("%q", shorten(n.Value))
}

func shorten(s string) string {
	const max = 60
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8Start(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

func utf8Start(b byte) bool { return b&0xC0 != 0x80 }

// noun says what a value of type t is, in plain words.
func noun(t reflect.Type) string {
	if t == durationType {
		return "a duration (such as 10s or 1m30s)"
	}
	switch t.Kind() {
	case reflect.Pointer:
		return noun(t.Elem())
	case reflect.String:
		return "text"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice:
		return "a list"
	case reflect.Struct:
		return "a mapping of keys"
	}
	return "a " + t.String()
}

// structFields maps the YAML names of t's fields to their indexes, and
// lists the names in declaration order.
func structFields(t reflect.Type) (map[string]int, []string) {
	fields := map[string]int{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		fields[name] = i
		names = append(names, name)
	}
	return fields, names
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// isMerge is the YAML library's test for a merge key.
func isMerge(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.Value == "<<" &&
		(n.Tag == "" || n.Tag == "!" || n.Tag == "!!merge" || n.Tag == "tag:yaml.org,2002:merge")
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	if key == "" {
		return path
	}
	return path + "." + key
}

// dropRepeats removes from every mapping under n each entry whose key
// repeats an earlier one, as the checker has reported it: the YAML library
// would otherwise decode nothing of that mapping, and its other keys would
// go unchecked.
func dropRepeats(n *yaml.Node) {
	type keyID struct {
		kind  yaml.Kind
		value string
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			dropRepeats(c)
		}
	case yaml.MappingNode:
		seen := map[keyID]bool{}
		kept := make([]*yaml.Node, 0, len(n.Content))
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			id := keyID{k.Kind, k.Value}
			if seen[id] {
				continue
			}
			seen[id] = true
			kept = append(kept, k, v)
			dropRepeats(v)
		}
		n.Content = kept
	}
}

// routesOver decodes the routes list with each route's retry policy laid
// over the global one, so that a key a route sets, zero included, wins
// and a key it leaves out is the global value.
type routesOver struct {
	base   Retry
	routes []Route
}

func (l *routesOver) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.SequenceNode {
		// The checker reports it.
		return nil
	}
	for _, item := range n.Content {
		r := DefaultRoute(l.base)
		// Type errors are the checker's to report; decoding goes on.
		_ = item.Decode(&r)
		l.routes = append(l.routes, r)
	}
	return nil
}

// clone returns r with its own MaxRetries, so that decoding into the copy
// leaves r alone.
func (r Retry) clone() Retry {
	if r.MaxRetries != nil {
		n := *r.MaxRetries
		r.MaxRetries = &n
	}
	return r
}
