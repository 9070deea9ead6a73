package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
)

// checkCommand validates a configuration without running it, and with
// --live also asks the brokers about every route's topics.
func checkCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter config check", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file`")
	live := fset.Bool("live", false, "also connect to the brokers and report each route's topics")
	if err := fset.Parse(args); err != nil {
		return flagExit(err)
	}
	raw, err := os.ReadFile(*path)
	if err != nil {
		fmt.Fprintf(env.Stderr, "%s: %v\n", *path, err)
		return ExitUsage
	}
	cfg, problems := config.Check(raw, env.Getenv)
	if len(problems) == 0 {
		// The handler registry and the notifier are checked where the
		// daemon checks them; New makes no connection.
		_, err := New(cfg, discardLogger(), Options{Getenv: env.Getenv})
		if err != nil {
			problems = splitJoined(err)
			expanded, _ := config.Expand(raw, env.Getenv)
			config.Locate(expanded, problems)
		}
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
	if cfg.Kafka.Embedded.Enabled {
		fmt.Fprintf(env.Stdout, "kafka: embedded broker on %s; it starts with the daemon, so there is nothing to reach yet\n", cfg.Kafka.Embedded.Listen)
		return ExitOK
	}
	if !liveCheck(ctx, cfg, env.Stdout) {
		return ExitError
	}
	return ExitOK
}

func describeBrokers(cfg config.Config) string {
	if cfg.Kafka.Embedded.Enabled {
		return "embedded on " + cfg.Kafka.Embedded.Listen
	}
	return strings.Join(cfg.Kafka.Brokers, ",")
}

// splitJoined undoes errors.Join, so each problem prints on its own line.
func splitJoined(err error) []error {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		return joined.Unwrap()
	}
	return []error{err}
}

// liveCheck reports, per route, whether the brokers answer and whether its
// topics exist, with their partition counts.
func liveCheck(ctx context.Context, cfg config.Config, out io.Writer) bool {
	c := saramaConfig(cfg.Kafka)
	c.ClientID = cfg.Kafka.ClientID + "-check"
	c.Metadata.Retry.Max = 1
	// Looking must not create topics.
	c.Metadata.AllowAutoTopicCreation = false
	brokers := strings.Join(cfg.Kafka.Brokers, ",")
	client, err := sarama.NewClient(cfg.Kafka.Brokers, c)
	if err != nil {
		fmt.Fprintf(out, "kafka %s: unreachable: %v\n", brokers, err)
		return false
	}
	defer client.Close()
	fmt.Fprintf(out, "kafka %s: reachable (%d broker(s))\n", brokers, len(client.Brokers()))
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
