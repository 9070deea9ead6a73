package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/kafka/poison"
)

// Replay commits its progress after replayCommitEvery records or, when
// records come slowly, once replayCommitInterval has passed, whichever is
// first. A crash therefore replays at most replayCommitEvery records again;
// a cancelled or failed run commits what it did before it returns.
const (
	replayCommitEvery    = 100
	replayCommitInterval = time.Second
	// replayIdle is how long a partition may send nothing before its end
	// before the run gives up on it.
	replayIdle = 30 * time.Second
)

// replayCommand sends poisoned records back to the topic they failed on,
// with their key, value and original headers, once the cause is fixed. It
// reads the poison topic in a consumer group of its own, so each record is
// replayed once however often the command runs, and stops when it has
// caught up.
func replayCommand(ctx context.Context, args []string, env Env) int {
	r, code := newReplayer(args, env)
	if r == nil {
		return code
	}
	return r.main(ctx, env)
}

// newReplayer reads the command line and the configuration's routes. It
// returns a nil replayer and the exit code when there is nothing to run.
func newReplayer(args []string, env Env) (*replayer, int) {
	fset := flag.NewFlagSet("eventrouter replay", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` the daemon runs with: its routes say where the records may go back to, and it names the brokers")
	brokers := fset.String("brokers", "", "comma-separated `host:port` list; overrides "+config.BrokersEnv+" and the config file")
	group := fset.String("group", "eventrouter-replay", "consumer `group` that remembers what was replayed")
	to := fset.String("to", "", "`topic` to replay into, one that a route with this poison topic subscribes to; default: each record's topic_poisoned header")
	reason := fset.String("reason", "", "replay only records whose reason_poisoned contains `text`; a partition stops at the first that does not, and leaves it and the rest for a later run")
	discard := fset.Bool("discard", false, "mark the records (those --reason matches, if given) handled without replaying them")
	dryRun := fset.Bool("dry-run", false, "print what would be replayed; commit nothing")
	fset.Usage = func() {
		fmt.Fprintf(env.Stderr, "Usage: eventrouter replay [flags] POISON_TOPIC\n\n"+
			"Republishes the poison topic's records to the topic they failed on: the\n"+
			"subscribe topic of a configured route whose poison_topic is POISON_TOPIC.\n\n"+
			"Environment: "+config.BrokersEnv+" (the brokers, unless --brokers), and the variables the file names, such as kafka.sasl.password_env.\nExit codes: 0 done (or dry run), 1 failed, 2 bad arguments.\n\n")
		fset.PrintDefaults()
	}
	if err := fset.Parse(args); err != nil {
		return nil, flagExit(err)
	}
	if fset.NArg() != 1 {
		fset.Usage()
		fmt.Fprintf(env.Stderr, "eventrouter replay: name one POISON_TOPIC, got %d argument(s)\n", fset.NArg())
		return nil, ExitUsage
	}
	fail := func(format string, args ...any) (*replayer, int) {
		fmt.Fprintf(env.Stderr, "eventrouter replay: "+format+"\n", args...)
		return nil, ExitUsage
	}
	// The routes are the only record of which topics a poison topic's
	// records came from; a header on the record is the producer's word.
	cfg, err := config.Load(*path, env.Getenv)
	if errors.Is(err, fs.ErrNotExist) {
		return fail("%s; replay takes the routes from the configuration the daemon runs with: give it with --config FILE", oneLine(err))
	}
	if err != nil {
		return fail("%s", oneLine(err))
	}
	topic := fset.Arg(0)
	rules, err := poison.RulesFor(cfg.Routes, topic, *to, *reason)
	if err != nil {
		return fail("%s: %s", *path, err)
	}
	addrs := cfg.Brokers()
	if strings.TrimSpace(*brokers) != "" {
		addrs = strings.Split(strings.ReplaceAll(*brokers, " ", ""), ",")
	}
	access, err := client.New(cfg.Kafka, addrs, env.Getenv)
	if err != nil {
		return fail("%s", oneLine(err))
	}
	return &replayer{
		kafka: access, poison: topic, group: *group, rules: rules, dryRun: *dryRun, discard: *discard, out: env.Stdout, progress: env.Stderr,
		commitEvery: replayCommitEvery, commitInterval: replayCommitInterval, idle: replayIdle,
	}, ExitOK
}

// main runs r and reports the counts, also after a failure: what was
// replayed before it is committed.
func (r *replayer) main(ctx context.Context, env Env) int {
	n, skipped, err := r.run(ctx)
	verb := "replayed"
	switch {
	case r.dryRun && r.discard:
		verb = "would discard"
	case r.dryRun:
		verb = "would replay"
	case r.discard:
		verb = "discarded"
	}
	fmt.Fprintf(env.Stdout, "%s %d record(s) from %s; skipped %d\n", verb, n, r.poison, skipped)
	if r.stopped > 0 {
		fmt.Fprintf(env.Stdout, "stopped in %d partition(s) at a record --reason %q does not match: it and the records after it are left for a later run\n",
			r.stopped, r.rules.Reason)
	}
	if err != nil {
		fmt.Fprintf(env.Stderr, "eventrouter replay: %s\n", oneLine(err))
		return ExitError
	}
	return ExitOK
}

type replayer struct {
	kafka  client.Settings
	poison string
	group  string
	rules  poison.Rules
	dryRun bool
	// discard marks records handled without replaying them.
	discard bool
	out     io.Writer
	// commitEvery and commitInterval bound what a crash replays again
	// (see replayCommitEvery).
	commitEvery    int
	commitInterval time.Duration
	// idle is how long a partition may send nothing before its end.
	idle time.Duration
	// progress, if set, receives the progress report: a bar on a
	// terminal, periodic lines otherwise.
	progress io.Writer
	// stopped counts the partitions a record --reason does not match
	// stopped.
	stopped int
}

// run replays every record between the group's committed offsets and the
// poison topic's end offsets at the start.
func (r *replayer) run(ctx context.Context) (replayed, skipped int, err error) {
	if err := r.kafka.Refusal(ctx); err != nil {
		return 0, 0, err
	}
	cfg := r.kafka.Publisher()
	cfg.ClientID = "eventrouter-replay"
	cfg.Metadata.AllowAutoTopicCreation = false
	client, err := sarama.NewClient(r.kafka.Brokers(), cfg)
	if err != nil {
		return 0, 0, fmt.Errorf("connect to kafka at %s: %w", strings.Join(r.kafka.Brokers(), ","), err)
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
	producer, err := sarama.NewSyncProducerFromClient(client)
	if err != nil {
		return 0, 0, err
	}
	defer producer.Close()
	// A client of its own: the consumer's fetches wait up to
	// Consumer.MaxWaitTime for records, and on the producer's connections
	// (one request at a time, for idempotence) each produce and commit
	// would queue behind one.
	consumerCfg := r.kafka.Config()
	consumerCfg.ClientID = cfg.ClientID
	consumerCfg.Metadata.AllowAutoTopicCreation = false
	consumerCfg.Consumer.Return.Errors = true
	consumer, err := sarama.NewConsumer(r.kafka.Brokers(), consumerCfg)
	if err != nil {
		return 0, 0, fmt.Errorf("connect to kafka at %s: %w", strings.Join(r.kafka.Brokers(), ","), err)
	}
	defer consumer.Close()

	// The ranges first, for the progress report's total.
	type span struct {
		p          int32
		start, end int64
	}
	var spans []span
	var total int64
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
		if start < end {
			spans = append(spans, span{p, start, end})
			total += end - start
		}
	}
	var prog *progress
	if r.progress != nil && total > 0 {
		prog = newProgress(r.progress, "replay "+r.poison, total)
		defer prog.finish()
	}
	for _, sp := range spans {
		p, start, end := sp.p, sp.start, sp.end
		pc, err := consumer.ConsumePartition(r.poison, p, start)
		if err != nil {
			return replayed, skipped, err
		}
		commit := func(next int64) error { return r.commit(client, map[int32]int64{p: next}) }
		n, s, err := r.partition(ctx, pc, producer, end, commit, prog)
		replayed, skipped = replayed+n, skipped+s
		// Close, unlike AsyncClose, waits until sarama is done with the
		// partition; what it reports came after the last record used.
		_ = pc.Close()
		if errors.Is(err, context.Canceled) {
			return replayed, skipped, err
		}
		if err != nil {
			return replayed, skipped, fmt.Errorf("poison topic %s partition %d: %w", r.poison, p, err)
		}
	}
	return replayed, skipped, nil
}

// committed returns the group's committed offsets; a group that never
// committed has none.
func (r *replayer) committed(client sarama.Client, partitions []int32) (map[int32]int64, error) {
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
func (r *replayer) commit(client sarama.Client, next map[int32]int64) error {
	if err := commitOffsets(client, r.group, r.poison, next, nil); err != nil {
		return fmt.Errorf("commit replay progress: %w", err)
	}
	return nil
}

// partition replays one partition up to end. commit stores the offset to
// go on from; partition calls it every r.commitEvery records or
// r.commitInterval, at the end, and before it returns an error, so a
// cancelled or failed run replays nothing again.
func (r *replayer) partition(ctx context.Context, pc sarama.PartitionConsumer, producer sarama.SyncProducer, end int64, commit func(next int64) error, prog *progress) (replayed, skipped int, err error) {
	var next int64 = -1
	pending, lastCommit := 0, time.Now()
	flush := func() error {
		if pending == 0 || r.dryRun {
			return nil
		}
		if err := commit(next); err != nil {
			return err
		}
		pending, lastCommit = 0, time.Now()
		return nil
	}
	stop := func(err error) (int, int, error) {
		return replayed, skipped, errors.Join(err, flush())
	}
	// One timer for the whole partition: a new one per record would pile
	// up until each fired.
	idle := time.NewTimer(r.idle)
	defer idle.Stop()
	for {
		// Checked first: select picks at random among ready cases, and a
		// cancelled run must not take one more record.
		if err := ctx.Err(); err != nil {
			return stop(err)
		}
		select {
		case <-ctx.Done():
			return stop(ctx.Err())
		case <-idle.C:
			return stop(fmt.Errorf("no record for %s; the end offset at the start was %d", r.idle, end))
		case cerr, ok := <-pc.Errors():
			if !ok {
				return stop(fmt.Errorf("consumer closed before the end offset %d", end))
			}
			return stop(fmt.Errorf("consume: %w", cerr.Err))
		case m, ok := <-pc.Messages():
			if !ok {
				return stop(fmt.Errorf("consumer closed before the end offset %d", end))
			}
			idle.Reset(r.idle)
			filtered, err := r.record(m, producer, &replayed, &skipped)
			if err != nil {
				return stop(err)
			}
			if filtered {
				// Nothing is passed over: this record and the rest stay
				// for a run that replays or discards them.
				r.stopped++
				return replayed, skipped, flush()
			}
			next = m.Offset + 1
			pending++
			if prog != nil {
				prog.add(1)
			}
			if next >= end {
				return replayed, skipped, flush()
			}
			if pending >= r.commitEvery || time.Since(lastCommit) >= r.commitInterval {
				if err := flush(); err != nil {
					return replayed, skipped, err
				}
			}
		}
	}
}

// record replays, discards or skips one poisoned record and prints a line
// for it. filtered says that --reason does not match it: nothing was done.
func (r *replayer) record(m *sarama.ConsumerMessage, producer sarama.SyncProducer, replayed, skipped *int) (filtered bool, err error) {
	from := fmt.Sprintf("%s/%d/%d", m.Topic, m.Partition, m.Offset)
	p := r.rules.Plan(from, m.Headers)
	switch {
	case p.Filtered:
		fmt.Fprintf(r.out, "%s: stopped here: reason %q does not contain --reason %q\n", from, p.Reason, r.rules.Reason)
		return true, nil
	case p.Skip != "":
		fmt.Fprintf(r.out, "%s: skipped: %s\n", from, p.Skip)
		*skipped++
	case r.discard:
		verb := "discarded"
		if r.dryRun {
			verb = "would discard"
		}
		fmt.Fprintf(r.out, "%s: %s (route %s, reason %q)\n", from, verb, p.RouteName(r.rules), p.Reason)
		*replayed++
	case r.dryRun:
		fmt.Fprintf(r.out, "%s -> %s (route %s, key %q): reason %q; value %s\n", from, p.Target, p.RouteName(r.rules), m.Key, p.Reason, excerpt(m.Value, 120))
		*replayed++
	default:
		rec := &sarama.ProducerMessage{Topic: p.Target, Headers: p.Headers}
		if m.Key != nil {
			rec.Key = sarama.ByteEncoder(m.Key)
		}
		if m.Value != nil {
			rec.Value = sarama.ByteEncoder(m.Value)
		}
		partition, offset, err := producer.SendMessage(rec)
		if err != nil {
			return false, fmt.Errorf("replay %s to %s: %w", from, p.Target, err)
		}
		fmt.Fprintf(r.out, "%s -> %s/%d/%d\n", from, p.Target, partition, offset)
		*replayed++
	}
	return false, nil
}

// excerpt quotes at most n bytes of v, with anything like an email
// address hidden, saying how much was left out.
func excerpt(v []byte, n int) string {
	cut := ""
	if len(v) > n {
		v, cut = v[:n], fmt.Sprintf("... (%d bytes)", len(v))
	}
	return fmt.Sprintf("%q%s", events.MaskEmails(string(v)), cut)
}
