package cli

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"
)

// progress reports a command's walk over many records: on a terminal a
// bar redrawn in place, with the rate and the time left; otherwise, such
// as in a log, a plain line every interval and one at the end.
type progress struct {
	w     io.Writer
	label string
	total int64
	tty   bool
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	done  int64
	start time.Time
	last  time.Time
}

// newProgress reports on w, a terminal or not, the progress of label over
// total records.
func newProgress(w io.Writer, label string, total int64) *progress {
	tty := false
	if f, ok := w.(*os.File); ok {
		if fi, err := f.Stat(); err == nil && fi.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	p := &progress{w: w, label: label, total: total, tty: tty, every: 5 * time.Second, now: time.Now}
	if tty {
		p.every = 100 * time.Millisecond
	}
	p.start = p.now()
	p.last = p.start
	return p
}

// add counts n more records, and reports when it is time to.
func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if now := p.now(); now.Sub(p.last) >= p.every {
		p.last = now
		p.report(now, false)
	}
}

// finish reports the final count.
func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.report(p.now(), true)
}

func (p *progress) report(now time.Time, final bool) {
	elapsed := now.Sub(p.start)
	rate := 0.0
	if elapsed > 0 {
		rate = float64(p.done) / elapsed.Seconds()
	}
	eta := "-"
	if rate > 0 && p.total > p.done {
		eta = time.Duration(float64(p.total-p.done) / rate * float64(time.Second)).Round(time.Second).String()
	}
	pct := 100.0
	if p.total > 0 {
		pct = 100 * float64(p.done) / float64(p.total)
	}
	stats := fmt.Sprintf("%d/%d (%.0f%%), %.0f/s, ETA %s", p.done, p.total, pct, rate, eta)
	if final {
		stats = fmt.Sprintf("%d/%d in %s, %.0f/s", p.done, p.total, elapsed.Round(time.Millisecond), rate)
	}
	if !p.tty {
		fmt.Fprintf(p.w, "%s: %s\n", p.label, stats)
		return
	}
	const width = 30
	filled := width
	if p.total > 0 {
		filled = int(min(p.done, p.total) * width / p.total)
	}
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	end := ""
	if final {
		end = "\n"
	}
	fmt.Fprintf(p.w, "\r%s [%s] %s\033[K%s", p.label, bar, stats, end)
}
