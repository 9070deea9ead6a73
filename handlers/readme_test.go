package handlers_test

import (
	"os"
	"regexp"
	"testing"
)

// TestREADMEShowsTheExampleHandler holds the README's "Adding a handler"
// to the files it shows, so that the example always compiles and passes.
func TestREADMEShowsTheExampleHandler(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	shown := regexp.MustCompile("(?s)<!-- file: (\\S+) -->\n```go\n(.*?)```\n").FindAllSubmatch(readme, -1)
	want := map[string]bool{"handlers/log.go": false, "handlers/log_test.go": false}
	for _, m := range shown {
		path, code := string(m[1]), m[2]
		file, err := os.ReadFile("../" + path)
		if err != nil {
			t.Errorf("README shows %s: %v", path, err)
			continue
		}
		if string(file) != string(code) {
			t.Errorf("README shows a %s that differs from the file; copy the file into the README", path)
		}
		want[path] = true
	}
	for path, ok := range want {
		if !ok {
			t.Errorf("README shows no %s", path)
		}
	}
}
