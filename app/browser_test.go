package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
)

// ChromiumEnv names the browser the console tests drive; default the
// chromium on PATH (Debian's package, which scripts/deps.sh installs).
const ChromiumEnv = "EVENTROUTER_TEST_CHROMIUM"

// ScreenshotsEnv names a directory the console test writes its screenshots
// to, such as docs/ to refresh the README's.
const ScreenshotsEnv = "EVENTROUTER_SCREENSHOTS"

// newBrowser starts headless Chromium for the test, or skips it when
// there is none (fails it under CI=true).
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	path := os.Getenv(ChromiumEnv)
	if path == "" {
		path, _ = exec.LookPath("chromium")
	}
	if path == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("chromium is not installed; scripts/deps.sh installs Debian's chromium package")
		}
		t.Skip("chromium is not installed; scripts/deps.sh installs it, or set " + ChromiumEnv)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path), chromedp.NoSandbox, chromedp.WindowSize(1400, 900),
		chromedp.Flag("disable-dev-shm-usage", true))
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Run(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// run runs browser actions within timeout.
func run(t *testing.T, ctx context.Context, timeout time.Duration, what string, actions ...chromedp.Action) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Run(ctx, actions...); err != nil {
		var html string
		_ = chromedp.Run(ctx, chromedp.OuterHTML("body", &html))
		t.Fatalf("%s: %v\npage:\n%s", what, err, html)
	}
}

// waitPage waits, without reloading, until the JavaScript condition cond
// holds on the page.
func waitPage(cond string) chromedp.Action {
	return chromedp.Poll(cond, nil, chromedp.WithPollingInterval(100*time.Millisecond))
}

func field(route, name string) string {
	return fmt.Sprintf(`(() => { const e = document.querySelector('[data-route="%s"] [data-field="%s"]'); return e ? +e.textContent : -1 })()`, route, name)
}

func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv(ScreenshotsEnv)
	if dir == "" {
		dir = t.TempDir()
	}
	var png []byte
	run(t, ctx, 30*time.Second, "screenshot "+name, chromedp.FullScreenshot(&png, 100))
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestConsoleInBrowser drives the console in headless Chromium against a
// running daemon with a real mail server: the counts and the poisoned
// records appear without a reload, a stopped mail server shows as a pause
// with its reason, a poisoned record is replayed from the explorer and
// handled, and the token login and the CSRF token hold.
func TestConsoleInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("drives a browser")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		ctx := newBrowser(t)
		// example.org is refused (550): a fixable, permanent failure.
		mail := mailtest.Start(t, "--smtp-allowed-recipients", `@example\.com$`)
		r := newRoute()
		cfg := testConfig(t, k.Brokers, r, smtpYAML(mail)+opsYAML)
		d := startDaemon(t, cfg, opsOptions(app.Options{ConsoleSample: 500 * time.Millisecond}))
		base := "http://" + d.OpsAddr()

		// The token login.
		run(t, ctx, 30*time.Second, "log in",
			chromedp.Navigate(base+"/"),
			chromedp.WaitVisible(`input[name="token"]`),
			chromedp.SendKeys(`input[name="token"]`, "wrong"),
			chromedp.Click(`#login`),
			chromedp.WaitVisible(`.message`),
			chromedp.SendKeys(`input[name="token"]`, opsToken),
			chromedp.Click(`#login`),
			chromedp.WaitVisible(`[data-route="welcome"]`))

		const good = 5
		produceEvents(t, k.Brokers, r.in, 0, good)
		kafkatest.Produce(t, k.Brokers, r.in, event(900, "late@example.org"), kafkatest.Record{Value: []byte("not json")})
		run(t, ctx, 2*time.Minute, "the counts appear without a reload",
			waitPage(field("welcome", "handled")+fmt.Sprintf(" >= %d", good)),
			waitPage(field("welcome", "poisoned")+" >= 2"))
		run(t, ctx, 30*time.Second, "the rate chart moves", waitPage(`document.querySelector('[data-route="welcome"] polyline.handled').getAttribute('points').split(' ').some(p => +p.split(',')[1] < 23)`))

		// The poison explorer lists both, newest first, with their reasons.
		run(t, ctx, 30*time.Second, "the poison explorer",
			chromedp.Navigate(base+"/poison/welcome"),
			waitPage(`document.querySelectorAll('table.poison tbody tr').length === 2`),
			waitPage(`[...document.querySelectorAll('table.poison .reason')].some(e => e.textContent.includes('JSON'))`),
			waitPage(`[...document.querySelectorAll('table.poison .reason')].some(e => e.textContent.includes('rejected'))`))
		screenshot(t, ctx, "console-poison.png")

		// A replay without the CSRF token, sent by the logged-in browser
		// (its session cookie goes along), is refused and replays nothing.
		var status int
		run(t, ctx, 30*time.Second, "a replay without the CSRF token",
			chromedp.Evaluate(`fetch(document.querySelector('button.replay-one').form.action, {method: 'POST',
				body: new URLSearchParams({ref: '0/0', confirm: 'yes', csrf: 'forged'})}).then(r => r.status)`, &status,
				func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
		if status != http.StatusForbidden {
			t.Errorf("got %d for a replay with a forged CSRF token; want 403", status)
		}

		// The mail server stops: the route shows paused, with the reason.
		mail.Stop()
		kafkatest.Produce(t, k.Brokers, r.in, event(901, "during@example.com"))
		run(t, ctx, 2*time.Minute, "the route shown paused",
			chromedp.Navigate(base+"/"),
			waitPage(`document.querySelector('[data-route="welcome"]').dataset.state === 'paused'`),
			waitPage(`document.querySelector('[data-route="welcome"] .cause').textContent.includes('smtp')`))
		screenshot(t, ctx, "console-overview.png")
		// It comes back, accepting example.org too: running again.
		mail.RestartWith()
		run(t, ctx, 2*time.Minute, "the route shown running",
			waitPage(`document.querySelector('[data-route="welcome"]').dataset.state === 'running'`),
			waitPage(field("welcome", "handled")+fmt.Sprintf(" >= %d", good+1)))

		// Replay the refused recipient's record, found by its reason.
		var result string
		run(t, ctx, time.Minute, "replay from the explorer",
			chromedp.Navigate(base+"/poison/welcome?reason=rejected"),
			waitPage(`document.querySelectorAll('table.poison tbody tr').length === 1`),
			chromedp.Click(`#replay-all`),
			chromedp.WaitVisible(`#confirm`),
			waitPage(`document.querySelector('#confirm').textContent.includes('Replay 1 record(s)')`),
			chromedp.Click(`#confirm`),
			chromedp.WaitVisible(`#result`),
			chromedp.Text(`#result`, &result))
		if !strings.Contains(result, "Replayed 1 of 1") {
			t.Fatalf("got %q; want one record replayed", result)
		}
		waitFor(t, time.Minute, "the replayed user's email", func() bool {
			return emailsPerUser(mail)["late@example.org"] == 1
		})
		run(t, ctx, time.Minute, "the replayed record counted as handled",
			chromedp.Navigate(base+"/"),
			waitPage(field("welcome", "handled")+fmt.Sprintf(" >= %d", good+2)))
	})
}

// TestConsoleReadOnlyInBrowser opens the console of a daemon without a
// token: it shows everything and offers no action.
func TestConsoleReadOnlyInBrowser(t *testing.T) {
	if testing.Short() {
		t.Skip("drives a browser")
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		ctx := newBrowser(t)
		r := newRoute()
		d := startDaemon(t, testConfig(t, k.Brokers, r, "ops:\n  enabled: true\n  listen: 127.0.0.1:0\n"), app.Options{Notifier: &recorder{}})
		base := "http://" + d.OpsAddr()
		kafkatest.Produce(t, k.Brokers, r.in, kafkatest.Record{Value: []byte("not json")})
		var forms int
		run(t, ctx, time.Minute, "the read-only explorer",
			chromedp.Navigate(base+"/"),
			waitPage(field("welcome", "poisoned")+" >= 1"),
			chromedp.Navigate(base+"/poison/welcome"),
			waitPage(`document.querySelectorAll('table.poison tbody tr').length === 1`),
			waitPage(`document.querySelector('.badge').textContent === 'read-only'`),
			chromedp.Evaluate(`document.querySelectorAll('form[method="post"]').length`, &forms))
		if forms != 0 {
			t.Errorf("got %d forms that change something on a read-only console; want none", forms)
		}
		// A replay asked for anyway is refused.
		var status int
		run(t, ctx, 30*time.Second, "a replay on a read-only console",
			chromedp.Evaluate(`fetch('/poison/welcome/replay', {method: 'POST', body: new URLSearchParams({ref: '0/0', confirm: 'yes'})}).then(r => r.status)`, &status,
				func(p *runtime.EvaluateParams) *runtime.EvaluateParams { return p.WithAwaitPromise(true) }))
		if status != http.StatusForbidden {
			t.Errorf("got %d for a replay on a read-only console; want 403", status)
		}
	})
}
