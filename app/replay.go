package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/config"
)

// ReplayedFromKey is the header a replayed record carries: the poison
// record it came from, as topic/partition/offset.
const ReplayedFromKey = "replayed_from"

// poisonHeaders are dropped on replay: they describe the failure, not the
// event.
var poisonHeaders = map[string]bool{
	middleware.ReasonForPoisonedKey:  true,
	middleware.PoisonedTopicKey:      true,
	middleware.PoisonedHandlerKey:    true,
	middleware.PoisonedSubscriberKey: true,
	PoisonedPartitionKey:             true,
	PoisonedOffsetKey:                true,
}

// replayCommand sends poisoned records back to the topic they failed on,
// with their key, value and original headers, once the cause is fixed. It
// reads the poison topic in a consumer group of its own, so each record is
// replayed once however often the command runs, and stops when it has
// caught up.
func replayCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter replay", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` to take the brokers from, if it exists")
	brokers := fset.String("brokers", "", "comma-separated `host:port` list; overrides "+config.BrokersEnv+" and the config file")
	group := fset.String("group", "eventrouter-replay", "consumer `group` that remembers what was replayed")
	to := fset.String("to", "", "`topic` to replay into; default: each record's topic_poisoned header")
	reason := fset.String("reason", "", "replay only records whose reason_poisoned contains `text`; the others are passed over for good in this --group")
	dryRun := fset.Bool("dry-run", false, "print what would be replayed; commit nothing")
	fset.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: eventrouter replay [flags] POISON_TOPIC\n\nRepublishes the poison topic's records to the topic they failed on.\n\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return flagExit(err)
	}
	if fset.NArg() != 1 {
		fset.Usage()
		return ExitUsage
	}
	addrs, err := publishBrokers(*brokers, *path, env.Getenv)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter replay: %s\n", oneLine(err))
		return ExitUsage
	}
	r := replayer{
		brokers: addrs, poison: fset.Arg(0), group: *group, to: *to, reason: *reason, dryRun: *dryRun,
		out: env.Stdout,
	}
	n, skipped, err := r.run(ctx)
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter replay: %v\n", err)
		return ExitError
	}
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	fmt.Fprintf(env.Stdout, "%s %d record(s) from %s; skipped %d\n", verb, n, r.poison, skipped)
	return ExitOK
}

type replayer struct {
	brokers []string
	poison  string
	group   string
	to      string
	reason  string
	dryRun  bool
	out     io.Writer
}

// run replays every record between the group's committed offsets and the
// poison topic's end offsets at the start.
func (r replayer) run(ctx context.Context) (replayed, skipped int, err error) {
	cfg := publisherConfig(config.Defaults().Kafka)
	cfg.ClientID = "eventrouter-replay"
	cfg.Metadata.AllowAutoTopicCreation = false
	client, err := sarama.NewClient(r.brokers, cfg)
	if err != nil {
		return 0, 0, fmt.Errorf("connect to kafka at %s: %w", strings.Join(r.brokers, ","), err)
	}
	defer client.Close()
	partitions, err := client.Partitions(r.poison)
	if err != nil {
		return 0, 0, fmt.Errorf("poison topic %s: %w", r.poison, err)
	}
	committed, err := r.committed(client, partitions)
	if err != nil {
		return 0, 0, err
	}
	next := map[int32]int64{}
	defer func() {
		if len(next) > 0 && !r.dryRun {
			if cerr := r.commit(client, next); cerr != nil && err == nil {
				err = cerr
			}
		}
	}()
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return 0, 0, err
	}
	defer producer.Close()
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return 0, 0, err
	}
	defer consumer.Close()

	for _, p := range partitions {
		end, err := client.GetOffset(r.poison, p, sarama.OffsetNewest)
		if err != nil {
			return replayed, skipped, err
		}
		oldest, err := client.GetOffset(r.poison, p, sarama.OffsetOldest)
		if err != nil {
			return replayed, skipped, err
		}
		start, ok := committed[p]
		if !ok || start < oldest {
			start = oldest
		}
		if start >= end {
			continue
		}
		pc, err := consumer.ConsumePartition(r.poison, p, start)
		if err != nil {
			return replayed, skipped, err
		}
		n, s, last, err := r.partition(ctx, pc, producer, end)
		replayed, skipped = replayed+n, skipped+s
		if last >= 0 {
			next[p] = last + 1
		}
		pc.AsyncClose()
		if err != nil {
			return replayed, skipped, err
		}
	}
	return replayed, skipped, nil
}

// committed returns the group's committed offsets; a group that never
// committed has none.
func (r replayer) committed(client sarama.Client, partitions []int32) (map[int32]int64, error) {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return nil, err
	}
	out := map[int32]int64{}
	resp, err := admin.ListConsumerGroupOffsets(r.group, map[string][]int32{r.poison: partitions})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("offsets of group %s: %w", r.group, err)
	}
	for _, p := range partitions {
		if b := resp.GetBlock(r.poison, p); b != nil && b.Err == sarama.ErrNoError && b.Offset >= 0 {
			out[p] = b.Offset
		}
	}
	return out, nil
}

// commit stores the next offsets to replay from, as a consumer group with
// no members would.
func (r replayer) commit(client sarama.Client, next map[int32]int64) error {
	coordinator, err := client.Coordinator(r.group)
	if err != nil {
		return fmt.Errorf("coordinator of group %s: %w", r.group, err)
	}
	req := &sarama.OffsetCommitRequest{Version: 2, ConsumerGroup: r.group, ConsumerGroupGeneration: -1, RetentionTime: -1}
	for p, off := range next {
		req.AddBlock(r.poison, p, off, 0, "")
	}
	resp, err := coordinator.CommitOffset(req)
	if err != nil {
		return fmt.Errorf("commit replay progress: %w", err)
	}
	for _, parts := range resp.Errors {
		for p, kerr := range parts {
			if kerr != sarama.ErrNoError {
				return fmt.Errorf("commit replay progress of partition %d: %w", p, kerr)
			}
		}
	}
	return nil
}

// partition replays one partition up to end and returns the last offset it
// dealt with, or -1.
func (r replayer) partition(ctx context.Context, pc sarama.PartitionConsumer, producer sarama.SyncProducer, end int64) (replayed, skipped int, last int64, err error) {
	last = -1
	for {
		select {
		case <-ctx.Done():
			return replayed, skipped, last, ctx.Err()
		case <-time.After(30 * time.Second):
			return replayed, skipped, last, errors.New("no record from the poison topic for 30 s")
		case m := <-pc.Messages():
			target, reason := r.to, ""
			var headers []sarama.RecordHeader
			for _, h := range m.Headers {
				switch string(h.Key) {
				case middleware.PoisonedTopicKey:
					if target == "" {
						target = string(h.Value)
					}
				case middleware.ReasonForPoisonedKey:
					reason = string(h.Value)
				}
				if !poisonHeaders[string(h.Key)] {
					headers = append(headers, *h)
				}
			}
			from := fmt.Sprintf("%s/%d/%d", m.Topic, m.Partition, m.Offset)
			switch {
			case r.reason != "" && !strings.Contains(reason, r.reason):
				skipped++
			case target == "":
				fmt.Fprintf(r.out, "%s: skipped: no topic_poisoned header and no --to\n", from)
				skipped++
			case r.dryRun:
				fmt.Fprintf(r.out, "%s -> %s (key %q): %s\n", from, target, m.Key, reason)
				replayed++
			default:
				headers = append(headers, sarama.RecordHeader{Key: []byte(ReplayedFromKey), Value: []byte(from)})
				rec := &sarama.ProducerMessage{Topic: target, Headers: headers}
				if m.Key != nil {
					rec.Key = sarama.ByteEncoder(m.Key)
				}
				if m.Value != nil {
					rec.Value = sarama.ByteEncoder(m.Value)
				}
				partition, offset, err := producer.SendMessage(rec)
				if err != nil {
					return replayed, skipped, last, fmt.Errorf("replay %s to %s: %w", from, target, err)
				}
				fmt.Fprintf(r.out, "%s -> %s/%d/%d\n", from, target, partition, offset)
				replayed++
			}
			last = m.Offset
			if m.Offset+1 >= end {
				return replayed, skipped, last, nil
			}
		}
	}
}
