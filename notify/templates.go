package notify

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	texttemplate "text/template"
)

//go:embed templates/*.tmpl
var builtin embed.FS

// TemplateNames lists the notifications that have templates.
var TemplateNames = []string{"welcome"}

// Templates renders notifications. Each notification NAME has three files:
// NAME.subject.tmpl and NAME.txt.tmpl (text/template) and NAME.html.tmpl
// (html/template, which escapes what events carry).
type Templates struct {
	subject map[string]*texttemplate.Template
	text    map[string]*texttemplate.Template
	html    map[string]*htmltemplate.Template
}

// TemplateData is what templates see.
type TemplateData struct {
	// UserID is the user's id as text.
	UserID string
	// Email is the recipient's address.
	Email string
	// EventID identifies the event that caused the notification.
	EventID string
}

// LoadTemplates parses the built-in templates, each replaced by the file of
// the same name in dir when dir is set and has it.
func LoadTemplates(dir string) (*Templates, error) {
	t := &Templates{
		subject: map[string]*texttemplate.Template{},
		text:    map[string]*texttemplate.Template{},
		html:    map[string]*htmltemplate.Template{},
	}
	for _, name := range TemplateNames {
		for _, kind := range []string{"subject", "txt", "html"} {
			file := name + "." + kind + ".tmpl"
			src, err := readTemplate(dir, file)
			if err != nil {
				return nil, err
			}
			switch kind {
			case "subject":
				t.subject[name], err = texttemplate.New(file).Option("missingkey=error").Parse(strings.TrimSpace(src))
			case "txt":
				t.text[name], err = texttemplate.New(file).Option("missingkey=error").Parse(src)
			case "html":
				t.html[name], err = htmltemplate.New(file).Option("missingkey=error").Parse(src)
			}
			if err != nil {
				return nil, fmt.Errorf("parse template %s: %w", file, err)
			}
		}
	}
	return t, nil
}

func readTemplate(dir, file string) (string, error) {
	if dir != "" {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err == nil {
			return string(b), nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("read template: %w", err)
		}
	}
	b, err := builtin.ReadFile("templates/" + file)
	if err != nil {
		return "", fmt.Errorf("no template %s: %w", file, err)
	}
	return string(b), nil
}

// Render returns the subject, text body and HTML body of m.
func (t *Templates) Render(m Message) (subject, text, html string, err error) {
	s, ok := t.subject[m.Template]
	if !ok {
		return "", "", "", fmt.Errorf("no template %q", m.Template)
	}
	data := TemplateData{UserID: m.UserID.String(), Email: m.Email, EventID: m.EventID}
	var sb, tb, hb bytes.Buffer
	if err := s.Execute(&sb, data); err != nil {
		return "", "", "", fmt.Errorf("render %s subject: %w", m.Template, err)
	}
	if err := t.text[m.Template].Execute(&tb, data); err != nil {
		return "", "", "", fmt.Errorf("render %s text: %w", m.Template, err)
	}
	if err := t.html[m.Template].Execute(&hb, data); err != nil {
		return "", "", "", fmt.Errorf("render %s html: %w", m.Template, err)
	}
	return sb.String(), tb.String(), hb.String(), nil
}
