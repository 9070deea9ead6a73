// Package cli is the eventrouter command line: run starts the daemon that
// package app wires; publish, replay, rewind, ledger forget and config
// check are the operators' tools around it.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/msglog"
)

// Exit codes of the eventrouter command.
const (
	ExitOK    = 0
	ExitError = 1
	// ExitUsage means bad arguments or a bad configuration, found before
	// any connection was made.
	ExitUsage = 2
)

const usage = `eventrouter turns Kafka events into actions.

Usage:
  eventrouter run [--config FILE]        run the router daemon
  eventrouter publish [flags] [EVENT]    publish EVENT, or one event per line of stdin
  eventrouter replay [flags] POISON_TOPIC   send poisoned records back to the topic they failed on
  eventrouter rewind ROUTE --to-time TIME | --by-duration D | --to-earliest | --to-offset N --partition P [--dry-run] [--yes]
                                         handle a route's past records again, from a time or an offset
  eventrouter ledger forget --template NAME (--since TIME | --user ID ...) [--dry-run] [--yes]
                                         let some notifications be sent again on their next delivery
  eventrouter config check [--live] [FILE | --config FILE]
                                         validate a configuration (and, with --live, its brokers and topics)

  eventrouter version                    print the version, commit and Go version
  eventrouter help [COMMAND]             this text, or a command's description and flags

Run "eventrouter help COMMAND" (or "eventrouter COMMAND --help") for a
command's flags and the environment variables it reads.

Exit codes: 0 success, 1 failure (a broker or database unreachable, a
refusal, a run that stopped on an error), 2 bad arguments or configuration
(found before anything was changed).
`

// Env is what the command line reads from and writes to.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// OSEnv returns the process's standard streams and environment.
func OSEnv() Env {
	return Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// Main runs the eventrouter command with args (without the program name)
// and returns its exit code. ctx is cancelled on SIGINT or SIGTERM.
func Main(ctx context.Context, args []string, env Env) int {
	if len(args) == 0 {
		fmt.Fprint(env.Stderr, usage)
		return ExitUsage
	}
	switch args[0] {
	case "run":
		return runCommand(ctx, args[1:], env)
	case "publish":
		return publishCommand(ctx, args[1:], env)
	case "replay":
		return replayCommand(ctx, args[1:], env)
	case "rewind":
		return rewindCommand(ctx, args[1:], env)
	case "ledger":
		return ledgerCommand(ctx, args[1:], env)
	case "config":
		if len(args) < 2 || args[1] != "check" {
			fmt.Fprintf(env.Stderr, "eventrouter: usage: eventrouter config check [--live] [FILE | --config FILE]\n"+
				"Run \"eventrouter config check --help\" for its flags.\n")
			return ExitUsage
		}
		return checkCommand(ctx, args[2:], env)
	case "version", "--version":
		fmt.Fprintln(env.Stdout, version())
		return ExitOK
	case "help", "-h", "--help":
		if len(args) < 2 || args[0] != "help" {
			fmt.Fprint(env.Stdout, usage)
			return ExitOK
		}
		return helpCommand(ctx, args[1], env)
	default:
		fmt.Fprintf(env.Stderr, "eventrouter: unknown command %q\n\n%s", args[0], usage)
		return ExitUsage
	}
}

// helpCommand prints a command's help on stdout.
func helpCommand(ctx context.Context, cmd string, env Env) int {
	args := map[string][]string{
		"run": {"run"}, "publish": {"publish"}, "replay": {"replay"}, "rewind": {"rewind"},
		"config": {"config", "check"}, "ledger": {"ledger", "forget"},
	}[cmd]
	if args == nil {
		if cmd == "version" || cmd == "help" {
			fmt.Fprint(env.Stdout, usage)
			return ExitOK
		}
		fmt.Fprintf(env.Stderr, "eventrouter help: unknown command %q\n\n%s", cmd, usage)
		return ExitUsage
	}
	env.Stderr = env.Stdout
	return Main(ctx, append(args, "--help"), env)
}

func runCommand(ctx context.Context, args []string, env Env) int {
	fs := flag.NewFlagSet("eventrouter run", flag.ContinueOnError)
	fs.SetOutput(env.Stderr)
	path := fs.String("config", config.DefaultPath, "configuration `file`")
	fs.Usage = func() {
		fmt.Fprint(env.Stderr, `Usage: eventrouter run [--config FILE]

Runs the router daemon: every route of the configuration, the ops server
(/healthz, /readyz, /metrics) and, by default, the embedded Kafka broker.
SIGINT or SIGTERM stops it: it finishes the records in flight (for up to
router.shutdown_timeout), commits their offsets, and exits.

Environment: `+config.BrokersEnv+` (brokers; turns the embedded broker off),
and every variable the configuration names: ${VAR} in the file, and the
secrets of kafka.sasl.password_env, notifier.smtp.password_env,
ops.token_env and ledger.postgres.dsn_env. `+config.InsecureEnv+`=1 allows
kafka.tls.insecure_skip_verify. The shipped eventrouter.yaml also reads
EVENTROUTER_NOTIFIER, EVENTROUTER_SMTP_HOST, EVENTROUTER_SMTP_PORT,
EVENTROUTER_SMTP_TLS, EVENTROUTER_LEDGER, EVENTROUTER_LEDGER_DSN,
EVENTROUTER_OPS_LISTEN and EVENTROUTER_EMBEDDED_LISTEN.
Exit codes: 0 stopped cleanly, 1 stopped on an error, 2 bad configuration.

`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return flagExit(err)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.Stderr, "eventrouter run: unexpected argument %q\n", fs.Arg(0))
		return ExitUsage
	}
	cfg, err := config.Load(*path, env.Getenv)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter: %s\n", oneLine(err))
		return ExitUsage
	}
	logger := newLogger(cfg.Log, env.Stderr)
	if cfg.Log.Level == "debug" {
		bridgeSaramaLog(logger)
	}
	d, err := app.New(cfg, logger, app.Options{Getenv: env.Getenv})
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter: %s\n", oneLine(err))
		return ExitUsage
	}
	if err := d.Run(ctx); err != nil {
		logger.Error("eventrouter stopped", "err", err)
		return ExitError
	}
	return ExitOK
}

// bridgeSaramaLog sends sarama's own log lines (connections, consumer
// group joins, rebalances, lost partitions) to logger at debug level: they
// are many at start-up and of use when diagnosing a rebalance. Sarama
// keeps its logger in a package variable read without a lock, so the run
// command sets it, at log level debug only, before the process's first
// client exists.
func bridgeSaramaLog(logger *slog.Logger) {
	sarama.Logger = slog.NewLogLogger(logger.With("component", "sarama").Handler(), slog.LevelDebug)
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// newLogger builds the process logger from validated settings.
func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.Level))
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(w, opts)
	if cfg.Format == "json" {
		h = slog.NewJSONHandler(w, opts)
	}
	return slog.New(msglog.Handler{Handler: h})
}

func flagExit(err error) int {
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	return ExitUsage
}

// oneLine joins the lines of a multi-problem error, so that each command
// failure is one line.
func oneLine(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}
