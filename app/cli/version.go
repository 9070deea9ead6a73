package cli

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// version describes this build: the module version, the commit it was
// built from (with "+modified" for a dirty tree), and the Go version.
func version() string {
	v, commit, at := "(devel)", "unknown", ""
	if info, ok := debug.ReadBuildInfo(); ok {
		if info.Main.Version != "" {
			v = info.Main.Version
		}
		modified := false
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.time":
				at = s.Value
			case "vcs.modified":
				modified = s.Value == "true"
			}
		}
		if modified {
			commit += "+modified"
		}
	}
	s := fmt.Sprintf("eventrouter %s, commit %s", v, commit)
	if at != "" {
		s += " of " + at
	}
	return fmt.Sprintf("%s, %s %s/%s", s, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
