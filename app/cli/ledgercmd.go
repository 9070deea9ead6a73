package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/ledger"
)

// usersFlag collects repeated --user flags.
type usersFlag []string

func (u *usersFlag) String() string { return strings.Join(*u, ",") }

func (u *usersFlag) Set(v string) error {
	if strings.TrimSpace(v) == "" {
		return errors.New("empty user ID")
	}
	*u = append(*u, v)
	return nil
}

// ledgerCommand runs the ledger subcommands.
func ledgerCommand(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 || args[0] != "forget" {
		fmt.Fprint(env.Stderr, "eventrouter: usage: eventrouter ledger forget --template NAME (--since TIME | --user ID ...) [flags]\n"+
			"Run \"eventrouter ledger forget --help\" for its flags.\n")
		return ExitUsage
	}
	return forgetCommand(ctx, args[1:], env)
}

// forgetCommand removes ledger entries on purpose, so that a rewind or a
// replay of their events sends those notifications again (a template was
// broken). It is narrow by design: one template, and a time range or
// named users; it prints what it would forget and asks first.
func forgetCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter ledger forget", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` the daemon runs with: it names the ledger")
	template := fset.String("template", "", "the notification `NAME` to forget, such as "+handlers.WelcomeTemplate)
	since := fset.String("since", "", "forget entries sent at or after `TIME` (RFC 3339)")
	until := fset.String("until", "", "and before `TIME` (RFC 3339); default: now")
	var users usersFlag
	fset.Var(&users, "user", "forget only this user's entry (`ID`; repeat for more)")
	dryRun := fset.Bool("dry-run", false, "list what would be forgotten and change nothing")
	yes := fset.Bool("yes", false, "forget without asking")
	fset.Usage = func() {
		fmt.Fprint(env.Stderr, `Usage: eventrouter ledger forget --template NAME (--since TIME [--until TIME] | --user ID ...) [flags]

Removes ledger entries, so that the next delivery of their events (after
"eventrouter rewind" or "eventrouter replay") sends those notifications
again, once. It takes one template and a time range or named users, never
everything; it lists what it would forget and asks first.

The bbolt ledger is one daemon's file: stop that daemon first. The shared
PostgreSQL ledger can be changed while daemons run.

Environment: the variables the configuration names (ledger.postgres.dsn_env).
Exit codes: 0 done (or dry run), 1 refused or failed, 2 bad arguments.

`)
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return flagExit(err)
	}
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(env.Stderr, "eventrouter ledger forget: "+format+"\n", args...)
		return code
	}
	if fset.NArg() > 0 {
		return fail(ExitUsage, "unexpected argument %q", fset.Arg(0))
	}
	if *template != handlers.WelcomeTemplate {
		return fail(ExitUsage, "--template must name a notification template: %s", handlers.WelcomeTemplate)
	}
	if *since == "" && len(users) == 0 {
		return fail(ExitUsage, "give --since TIME or --user ID: forget never takes every entry at once")
	}
	f := ledger.Filter{Prefix: *template + "/"}
	for _, u := range users {
		f.Keys = append(f.Keys, f.Prefix+u)
	}
	for _, t := range []struct {
		flag, value string
		into        *time.Time
	}{{"--since", *since, &f.Since}, {"--until", *until, &f.Until}} {
		if t.value == "" {
			continue
		}
		at, err := time.Parse(time.RFC3339, t.value)
		if err != nil {
			return fail(ExitUsage, "%s %q is not an RFC 3339 time such as 2026-12-01T10:00:00Z", t.flag, t.value)
		}
		*t.into = at
	}
	if f.Until.IsZero() {
		// Entries recorded while the command runs are not the listed ones.
		f.Until = time.Now()
	}
	if !f.Until.After(f.Since) {
		return fail(ExitUsage, "--until must be after --since")
	}
	cfg, err := config.Load(*path, env.Getenv)
	if errors.Is(err, fs.ErrNotExist) {
		return fail(ExitUsage, "%s; give the configuration the daemon runs with: --config FILE", oneLine(err))
	}
	if err != nil {
		return fail(ExitUsage, "%s", oneLine(err))
	}
	l, err := openLedgerForCommand(ctx, cfg, env.Getenv)
	if err != nil {
		return fail(ExitError, "%s", err)
	}
	defer l.Close()

	found, err := l.Forget(ctx, f, true)
	if err != nil {
		return fail(ExitError, "%s", err)
	}
	what := "entries of template " + *template
	if len(users) > 0 {
		what += " for user(s) " + users.String()
	}
	if !f.Since.IsZero() {
		what += " sent since " + f.Since.UTC().Format(time.RFC3339)
	}
	if !f.Until.IsZero() {
		what += " and before " + f.Until.UTC().Format(time.RFC3339)
	}
	fmt.Fprintf(env.Stdout, "%d %s:\n", len(found), what)
	for _, e := range found {
		// The user ID, not the address: the address is personal data.
		fmt.Fprintf(env.Stdout, "  user %s  sent %s\n", strings.TrimPrefix(e.Key, f.Prefix), e.SentAt.UTC().Format(time.RFC3339))
	}
	if *dryRun || len(found) == 0 {
		fmt.Fprintln(env.Stdout, "nothing changed")
		return ExitOK
	}
	if !*yes {
		fmt.Fprintf(env.Stderr, "Forget these %d entries, so that their notifications are sent again on the next delivery? [y/N] ", len(found))
		answer, _ := bufio.NewReader(env.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return fail(ExitError, "not confirmed; nothing changed (--yes forgets without asking)")
		}
	}
	// Only what was listed, whatever was recorded since.
	del := f
	del.Keys = nil
	for _, e := range found {
		del.Keys = append(del.Keys, e.Key)
	}
	gone, err := l.Forget(ctx, del, false)
	if err != nil {
		return fail(ExitError, "%s", err)
	}
	fmt.Fprintf(env.Stdout, "forgot %d entries: the next delivery of their events sends them again (eventrouter rewind ROUTE, or replay)\n", len(gone))
	return ExitOK
}

// forgetter is what the forget command needs of a ledger.
type forgetter interface {
	Forget(ctx context.Context, f ledger.Filter, dryRun bool) ([]ledger.Forgotten, error)
	Close() error
}

// openLedgerForCommand opens the configured ledger for a command.
func openLedgerForCommand(ctx context.Context, cfg config.Config, getenv func(string) string) (forgetter, error) {
	if cfg.Ledger.Kind != "postgres" {
		// Opening would create an empty ledger, and every answer would be
		// "nothing": a wrong directory or --config must not look like that.
		if _, err := os.Stat(cfg.Ledger.Path); err != nil {
			return nil, fmt.Errorf("no ledger at %s (ledger.path, relative to where the daemon runs): %w", cfg.Ledger.Path, err)
		}
		l, err := ledger.Open(cfg.Ledger.Path)
		if err != nil {
			return nil, fmt.Errorf("%w; the bbolt ledger is one daemon's file: stop that daemon first", err)
		}
		return l, nil
	}
	dsn, err := app.ReadLedgerDSN(cfg.Ledger.Postgres, getenv)
	if err != nil {
		return nil, err
	}
	pc := cfg.Ledger.Postgres
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return ledger.OpenPostgres(octx, ledger.PostgresConfig{DSN: dsn, MaxConns: 2, StatementTimeout: pc.StatementTimeout, Lease: pc.Lease})
}
