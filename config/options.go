package config

import (
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// OptionsValidator is implemented by a handler's options that check
// themselves once decoded. Validate returns *KeyError values whose Key is
// relative to the options block, such as "url" or "headers.X-Token";
// DecodeOptions places them under routes[i].options and finds their line.
type OptionsValidator interface {
	Validate() error
}

// DecodeOptions decodes the route's options block strictly into into, a
// pointer to the handler's options struct that already holds its defaults:
// an unknown or repeated key, a value of the wrong type and, through
// OptionsValidator, a value the handler refuses are each a *KeyError that
// names routes[i].options.<key> and its line. Keys the block leaves out
// keep their defaults.
func (r Route) DecodeOptions(i int, into any) []error {
	path := fmt.Sprintf("routes[%d].options", i)
	v := reflect.ValueOf(into)
	if v.Kind() != reflect.Pointer || v.IsNil() || v.Elem().Kind() != reflect.Struct {
		return []error{fmt.Errorf("options of route %q: want a pointer to a struct, got %T", r.Name, into)}
	}
	n := &r.Options
	if n.Kind != 0 && !isNull(n) {
		if n.Kind != yaml.MappingNode {
			return []error{&KeyError{Key: path, Line: n.Line, Msg: "must be a mapping of the handler's options"}}
		}
		c := newChecker(r.expanded)
		c.node(n, v.Elem().Type(), v.Elem(), path)
		if len(c.errs) > 0 {
			return c.errs
		}
		if err := n.Decode(into); err != nil {
			errs := decodeErrors(n, err)
			for _, e := range errs {
				var ke *KeyError
				if errors.As(e, &ke) && !strings.HasPrefix(ke.Key, path) {
					ke.Key = join(path, ke.Key)
				}
			}
			return errs
		}
	}
	val, ok := into.(OptionsValidator)
	if !ok {
		return nil
	}
	return r.OptionErrors(i, val.Validate())
}

// OptionErrors places the errors err joins, such as a handler's
// constructor returns, under routes[i].options: a *KeyError's key, relative
// to the options block, gets the block's path and its line; another error
// is reported for the block itself.
func (r Route) OptionErrors(i int, err error) []error {
	path := fmt.Sprintf("routes[%d].options", i)
	n := &r.Options
	errs := SplitErrors(err)
	for j, err := range errs {
		var ke *KeyError
		if !errors.As(err, &ke) {
			errs[j] = &KeyError{Key: path, Line: n.Line, Msg: err.Error()}
			continue
		}
		rel := ke.Key
		ke = &KeyError{Key: join(path, ke.Key), Line: ke.Line, Msg: ke.Msg}
		line, value := lineUnder(n, rel)
		if ke.Line == 0 {
			ke.Line = line
		}
		// A handler's message may quote the value; one that came from the
		// environment may be a secret, so the reference shows instead.
		if ref, ok := r.expanded[value]; ok && value.Value != "" {
			ke.Msg = strings.ReplaceAll(ke.Msg, value.Value, ref)
		}
		errs[j] = ke
	}
	return errs
}

// HasOptions reports whether the route's options block sets anything.
func (r Route) HasOptions() bool {
	return r.Options.Kind != 0 && !isNull(&r.Options) && !(r.Options.Kind == yaml.MappingNode && len(r.Options.Content) == 0)
}

// lineUnder returns the line of key (a.b or a[2]) under n, or of the
// nearest parent n has, or n's own line, and the key's value node (nil
// when n has no such key).
func lineUnder(n *yaml.Node, key string) (int, *yaml.Node) {
	line := n.Line
	var value *yaml.Node
	for key != "" && n != nil {
		// The longest key of the mapping that key starts with: a map's
		// keys, such as header names, may hold dots themselves.
		var next *yaml.Node
		best := -1
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if (key == k || strings.HasPrefix(key, k+".") || strings.HasPrefix(key, k+"[")) && len(k) > best {
					best, line, next = len(k), n.Content[i].Line, n.Content[i+1]
				}
			}
		}
		if next == nil {
			return line, nil
		}
		key = strings.TrimPrefix(key[best:], ".")
		for strings.HasPrefix(key, "[") {
			end := strings.Index(key, "]")
			k, err := strconv.Atoi(key[1:max(end, 1)])
			if end < 0 || err != nil || next.Kind != yaml.SequenceNode || k < 0 || k >= len(next.Content) {
				return line, nil
			}
			next = next.Content[k]
			line = next.Line
			key = strings.TrimPrefix(key[end+1:], ".")
		}
		n, value = next, next
	}
	return line, value
}

// SplitErrors returns the errors that err joins (errors.Join), flattened,
// or err alone; nil gives none.
func SplitErrors(err error) []error {
	if err == nil {
		return nil
	}
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var errs []error
	for _, e := range j.Unwrap() {
		errs = append(errs, SplitErrors(e)...)
	}
	return errs
}

// ReadSecret reads a secret from the environment variable env or the file
// file, whichever is set (key_env or key_file in the config); none gives
// "". An unset variable or an empty file is an error, so that a missing
// secret fails at start-up rather than becoming an empty one. A file's
// trailing line break is not part of the secret.
func ReadSecret(key, env, file string, getenv func(string) string) (string, error) {
	switch {
	case env != "":
		secret := getenv(env)
		if secret == "" {
			return "", &KeyError{Key: key + "_env", Msg: fmt.Sprintf("environment variable %s is empty", env)}
		}
		return secret, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", &KeyError{Key: key + "_file", Msg: err.Error()}
		}
		secret := strings.TrimRight(string(b), "\r\n")
		if secret == "" {
			return "", &KeyError{Key: key + "_file", Msg: fmt.Sprintf("%s is empty", file)}
		}
		return secret, nil
	}
	return "", nil
}
