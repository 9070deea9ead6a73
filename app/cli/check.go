package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/ledger"
)

// checkCommand validates a configuration without running it, and with
// --live also asks the brokers about every route's topics. The file is
// named by --config or by the one argument.
func checkCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter config check", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` (or give it as the argument)")
	live := fset.Bool("live", false, "also connect to the brokers and report each route's topics, and the shared ledger's database")
	fset.Usage = func() {
		fmt.Fprint(env.Stderr, `Usage: eventrouter config check [--live] [FILE | --config FILE]

Checks a configuration as the daemon does before it connects, and reports
every problem at once, each with its key and line. With --live it also
asks the brokers about each route's topics and partitions, and the shared
ledger's database whether it answers and its schema is current; it
changes nothing.

Environment: `+config.BrokersEnv+`, and the variables the file names (their
secrets are read, and reported when missing, never printed).
Exit codes: 0 valid (and reachable), 1 unreachable, 2 problems found.

`)
		fset.PrintDefaults()
	}
	files, err := parseInterspersed(fset, args)
	if err != nil {
		return flagExit(err)
	}
	switch {
	case len(files) > 1:
		fmt.Fprintf(env.Stderr, "eventrouter config check: one configuration file at most, got %d: %s\n", len(files), strings.Join(files, " "))
		return ExitUsage
	case len(files) == 1:
		if flagSet(fset, "config") && filepath.Clean(*path) != filepath.Clean(files[0]) {
			fmt.Fprintf(env.Stderr, "eventrouter config check: --config %s and argument %s name different files; give one\n", *path, files[0])
			return ExitUsage
		}
		*path = files[0]
	}
	raw, err := os.ReadFile(*path)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", *path, err)
		return ExitUsage
	}
	cfg, problems := config.Check(raw, env.Getenv)
	// The handler registry, the notifier and the ops token are checked
	// where the daemon checks them; New makes no connection. Its checks
	// do not depend on each other, so they run on a config with problems
	// too; what they say about a key already reported is left out.
	d, err := app.New(cfg, discardLogger(), app.Options{Getenv: env.Getenv})
	if err == nil {
		// The handlers New built are not run.
		d.Close()
	} else {
		problems = config.Add(problems, config.SplitErrors(err)...)
		config.Locate(raw, problems)
		config.Sort(problems)
	}
	if len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(env.Stdout, "%s: %s\n", *path, strings.TrimPrefix(p.Error(), "config: "))
		}
		fmt.Fprintf(env.Stdout, "%s: %d problem(s)\n", *path, len(problems))
		return ExitUsage
	}
	fmt.Fprintf(env.Stdout, "%s: ok (%d route(s), brokers %s)\n", *path, len(cfg.Routes), describeBrokers(cfg))
	if !*live {
		return ExitOK
	}
	ok := true
	if cfg.Kafka.Embedded.Enabled {
		fmt.Fprintf(env.Stdout, "kafka: embedded broker on %s; it starts with the daemon, so there is nothing to reach yet\n", cfg.Kafka.Embedded.Listen)
	} else {
		// New read the same credentials without an error.
		access, _ := client.New(cfg.Kafka, cfg.Brokers(), env.Getenv)
		ok = liveCheck(ctx, access, cfg, env.Stdout)
	}
	if cfg.Ledger.Kind == "postgres" {
		dsn, _ := app.ReadLedgerDSN(cfg.Ledger.Postgres, env.Getenv)
		ok = ledgerCheck(ctx, dsn, env.Stdout) && ok
	}
	if !ok {
		return ExitError
	}
	return ExitOK
}

// ledgerCheck reports whether the shared ledger's database answers and
// whether its schema is current, changing nothing.
func ledgerCheck(ctx context.Context, dsn string, out io.Writer) bool {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := ledger.CheckPostgres(ctx, dsn)
	switch {
	case err != nil:
		fmt.Fprintf(out, "ledger postgres: unreachable: %v\n", err)
		return false
	case v < 0:
		fmt.Fprintf(out, "ledger postgres: reachable; no schema yet: the daemon creates it (version %d) at start\n", ledger.SchemaVersion)
	case v < ledger.SchemaVersion:
		fmt.Fprintf(out, "ledger postgres: reachable; schema version %d: the daemon migrates it to %d at start\n", v, ledger.SchemaVersion)
	case v == ledger.SchemaVersion:
		fmt.Fprintf(out, "ledger postgres: reachable; schema version %d, current\n", v)
	default:
		fmt.Fprintf(out, "ledger postgres: reachable; schema version %d is newer than this eventrouter's %d: upgrade eventrouter\n", v, ledger.SchemaVersion)
		return false
	}
	return true
}

// parseInterspersed parses the flags in args wherever they are, and
// returns the other arguments.
func parseInterspersed(fset *flag.FlagSet, args []string) ([]string, error) {
	var rest []string
	for {
		if err := fset.Parse(args); err != nil {
			return nil, err
		}
		if fset.NArg() == 0 {
			return rest, nil
		}
		// After "--" every argument is an argument.
		if len(args) > fset.NArg() && args[len(args)-fset.NArg()-1] == "--" {
			return append(rest, fset.Args()...), nil
		}
		rest = append(rest, fset.Arg(0))
		args = fset.Args()[1:]
	}
}

// flagSet reports whether the flag name was given.
func flagSet(fset *flag.FlagSet, name string) bool {
	set := false
	fset.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

func describeBrokers(cfg config.Config) string {
	if cfg.Kafka.Embedded.Enabled {
		return "embedded on " + cfg.Kafka.Embedded.Listen
	}
	return strings.Join(cfg.Kafka.Brokers, ",")
}

// liveCheck reports, per route, whether the brokers answer and whether its
// topics exist, with their partition counts.
func liveCheck(ctx context.Context, a client.Settings, cfg config.Config, out io.Writer) bool {
	if err := a.Refusal(ctx); err != nil {
		fmt.Fprintln(out, err)
		return false
	}
	c := a.Config()
	c.ClientID = cfg.Kafka.ClientID + "-check"
	c.Metadata.Retry.Max = 1
	// Looking must not create topics.
	c.Metadata.AllowAutoTopicCreation = false
	brokers := strings.Join(a.Brokers(), ",")
	client, err := sarama.NewClient(a.Brokers(), c)
	if err != nil {
		fmt.Fprintf(out, "kafka %s: unreachable: %v\n", brokers, err)
		return false
	}
	defer client.Close()
	fmt.Fprintf(out, "kafka %s: reachable (%d broker(s), %s)\n", brokers, len(client.Brokers()), a.Protocol())
	autoCreate := autoCreateTopics(client)
	for _, r := range cfg.Routes {
		if ctx.Err() != nil {
			return false
		}
		var parts []string
		for _, t := range []struct{ role, name string }{
			{"subscribe", r.SubscribeTopic}, {"publish", r.PublishTopic}, {"poison", r.PoisonTopic},
		} {
			if t.name == "" {
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s: %s", t.role, t.name, topicState(client, t.name, autoCreate)))
		}
		fmt.Fprintf(out, "route %s (group %s): %s\n", r.Name, r.ConsumerGroup, strings.Join(parts, "; "))
	}
	return true
}

func topicState(client sarama.Client, topic, autoCreate string) string {
	partitions, err := client.Partitions(topic)
	switch {
	case err == nil:
		return fmt.Sprintf("%d partition(s)", len(partitions))
	case errors.Is(err, sarama.ErrUnknownTopicOrPartition):
		return "missing; " + autoCreate
	default:
		return "unknown: " + err.Error()
	}
}

// autoCreateTopics says what happens to a missing topic, from the broker's
// auto.create.topics.enable.
func autoCreateTopics(client sarama.Client) string {
	const unknown = "created on first use if the broker's auto.create.topics.enable is true"
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return unknown
	}
	brokers := client.Brokers()
	if len(brokers) == 0 {
		return unknown
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{
		Type: sarama.BrokerResource, Name: fmt.Sprint(brokers[0].ID()), ConfigNames: []string{"auto.create.topics.enable"},
	})
	if err != nil {
		return unknown
	}
	for _, e := range entries {
		if e.Name == "auto.create.topics.enable" {
			if e.Value == "true" {
				return "will be auto-created on first use"
			}
			return "will NOT be auto-created (auto.create.topics.enable=false); create it first"
		}
	}
	return unknown
}
