package cli

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/broker"
	"github.com/eventrouter/eventrouter/kafka/client"
	"github.com/eventrouter/eventrouter/kafka/consume"
	"github.com/eventrouter/eventrouter/ledger"
)

// rewindTarget is where a rewind moves a partition's committed offset.
type rewindTarget struct {
	// at is the time of --to-time or --by-duration; zero otherwise.
	at time.Time
	// earliest is --to-earliest.
	earliest bool
	// offset and partition are --to-offset and --partition; partition is
	// -1 otherwise.
	offset    int64
	partition int32
}

func (t rewindTarget) String() string {
	switch {
	case !t.at.IsZero():
		return "the first record at or after " + t.at.UTC().Format(time.RFC3339)
	case t.earliest:
		return "the earliest record"
	}
	return fmt.Sprintf("offset %d of partition %d", t.offset, t.partition)
}

// rewindRow is the plan for one partition.
type rewindRow struct {
	partition int32
	// committed is the group's committed offset, -1 for none.
	committed int64
	// target is the new offset.
	target int64
	// newest and oldest are the partition's end and start offsets.
	newest, oldest int64
	// until is the end of an earlier rewind's range that the route has
	// not passed yet, 0 for none.
	until int64
}

// end is where the route's handled records end: the committed offset, or
// an unfinished earlier rewind's end past it; where nothing is committed,
// the oldest offset, as the daemon starts a new group there.
func (r rewindRow) end() int64 {
	if r.committed < 0 {
		return r.oldest
	}
	return max(r.committed, r.until)
}

// again is how many records the route handles again from the new offset.
// Negative when the new offset is past every handled record.
func (r rewindRow) again() int64 {
	return r.end() - r.target
}

// forward says that the new offset is past where the group would go on
// from: records between are skipped (never handled, or an earlier
// rewind's records not handled again yet).
func (r rewindRow) forward() bool {
	if r.committed < 0 {
		return r.target > r.oldest
	}
	return r.target > r.committed
}

// rewindCommand moves a route's consumer group back, per partition, so
// that the route handles its past records again. Kafka moves a group's
// offsets only while it has no live member, so the command refuses while
// a daemon of the route runs: a running daemon would overwrite the rewind
// with its next commit.
func rewindCommand(ctx context.Context, args []string, env Env) int {
	fset := flag.NewFlagSet("eventrouter rewind", flag.ContinueOnError)
	fset.SetOutput(env.Stderr)
	path := fset.String("config", config.DefaultPath, "configuration `file` the daemon runs with: it names the route's topic, group and brokers")
	brokersFlag := fset.String("brokers", "", "comma-separated `host:port` list; overrides "+config.BrokersEnv+" and the config file")
	toTime := fset.String("to-time", "", "rewind to the first record at or after `TIME` (RFC 3339, such as 2026-12-01T10:00:00Z)")
	byDuration := fset.Duration("by-duration", 0, "rewind to the first record at or after `DURATION` ago (such as 2h)")
	toEarliest := fset.Bool("to-earliest", false, "rewind to the earliest record the topic still holds")
	toOffset := fset.Int64("to-offset", -1, "rewind --partition to `OFFSET`")
	partition := fset.Int("partition", -1, "the `PARTITION` of --to-offset")
	dryRun := fset.Bool("dry-run", false, "print the plan and change nothing")
	yes := fset.Bool("yes", false, "rewind without asking")
	allowForward := fset.Bool("allow-forward", false, "also move offsets forward (records skipped, not handled)")
	forgetLedger := fset.Bool("forget-ledger", false, "also forget the ledger entries these records caused, so that their notifications are sent again (a template was broken); only those")
	fset.Usage = func() {
		fmt.Fprint(env.Stderr, `Usage: eventrouter rewind ROUTE (--to-time TIME | --by-duration D | --to-earliest | --to-offset N --partition P) [flags]

Moves the consumer group of ROUTE (a route name in the configuration) back,
per partition, so that the route handles those records again when its
daemons start. It prints the plan first, per partition: the committed
offset, the new one and the records handled again, and asks before it
changes anything (--yes does not ask; --dry-run only prints).

The route's daemons must be stopped: Kafka moves a group's offsets only
while it has no live member, and the command names the members it finds.
The ledger keeps a rewound route from sending an email twice. To send the
rewound records' notifications again on purpose (a template was broken),
add --forget-ledger: it forgets the ledger entries caused by exactly the
records handled again, and no others.

Environment: `+config.BrokersEnv+` (the brokers, as in the daemon), and the
variables the file names, such as kafka.sasl.password_env.
Exit codes: 0 done (or dry run), 1 refused or failed, 2 bad arguments.

`)
		fset.PrintDefaults()
	}
	rest, err := parseInterspersed(fset, args)
	if err != nil {
		return flagExit(err)
	}
	fail := func(code int, format string, args ...any) int {
		fmt.Fprintf(env.Stderr, "eventrouter rewind: "+format+"\n", args...)
		return code
	}
	if len(rest) != 1 {
		fset.Usage()
		return fail(ExitUsage, "name one route, got %d argument(s)", len(rest))
	}
	target, err := rewindTargetOf(fset, *toTime, *byDuration, *toEarliest, *toOffset, *partition, time.Now())
	if err != nil {
		return fail(ExitUsage, "%s", err)
	}
	cfg, err := config.Load(*path, env.Getenv)
	if errors.Is(err, fs.ErrNotExist) {
		return fail(ExitUsage, "%s; rewind takes the route from the configuration the daemon runs with: give it with --config FILE", oneLine(err))
	}
	if err != nil {
		return fail(ExitUsage, "%s", oneLine(err))
	}
	i := slices.IndexFunc(cfg.Routes, func(r config.Route) bool { return r.Name == rest[0] })
	if i < 0 {
		var names []string
		for _, r := range cfg.Routes {
			names = append(names, r.Name)
		}
		return fail(ExitUsage, "no route %q in %s; its routes are %s", rest[0], *path, strings.Join(names, ", "))
	}
	route := cfg.Routes[i]

	brokers, stop, err := rewindBrokers(cfg, *brokersFlag)
	if err != nil {
		return fail(ExitError, "%s", err)
	}
	defer stop()
	access, err := client.New(cfg.Kafka, brokers, env.Getenv)
	if err != nil {
		return fail(ExitUsage, "%s", oneLine(err))
	}
	if err := access.Refusal(ctx); err != nil {
		return fail(ExitError, "%s", err)
	}
	c := access.Config()
	c.ClientID = cfg.Kafka.ClientID + "-rewind"
	c.Consumer.Return.Errors = true
	client, err := sarama.NewClient(brokers, c)
	if err != nil {
		return fail(ExitError, "connect to %s: %s", strings.Join(brokers, ","), err)
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return fail(ExitError, "%s", err)
	}

	members, err := groupMembers(admin, route.ConsumerGroup)
	if err != nil {
		return fail(ExitError, "describe group %s: %s", route.ConsumerGroup, err)
	}
	rows, err := rewindPlan(client, admin, route, target)
	if err != nil {
		return fail(ExitError, "%s", err)
	}
	printRewindPlan(env.Stdout, route, target, rows)
	var forward []string
	for _, r := range rows {
		if r.forward() {
			forward = append(forward, fmt.Sprint(r.partition))
		}
	}
	if len(members) > 0 {
		msg := fmt.Sprintf("route %s's consumer group %s has %d live member(s): %s; Kafka moves a group's offsets only while it has none: "+
			"stop the route's daemons (SIGTERM lets them finish and commit), rewind, then start them again",
			route.Name, route.ConsumerGroup, len(members), strings.Join(members, ", "))
		if *dryRun {
			fmt.Fprintf(env.Stdout, "dry run: nothing changed; a rewind now would be refused: %s\n", msg)
			return ExitOK
		}
		return fail(ExitError, "%s", msg)
	}
	if len(forward) > 0 && !*allowForward {
		msg := fmt.Sprintf("partition(s) %s would move forward, past records not handled yet; pass --allow-forward to skip them", strings.Join(forward, ", "))
		if *dryRun {
			fmt.Fprintf(env.Stdout, "dry run: nothing changed; %s\n", msg)
			return ExitOK
		}
		return fail(ExitError, "%s", msg)
	}
	var sources []ledger.SourceRange
	var l forgetter
	if *forgetLedger {
		for _, r := range rows {
			if r.again() > 0 {
				sources = append(sources, ledger.SourceRange{Topic: route.SubscribeTopic, Partition: r.partition, From: r.target, To: r.end()})
			}
		}
		if l, err = openLedgerForCommand(ctx, cfg, env.Getenv); err != nil {
			return fail(ExitError, "%s", err)
		}
		defer l.Close()
		n := 0
		if len(sources) > 0 {
			found, err := l.Forget(ctx, ledger.Filter{Sources: sources}, true)
			if err != nil {
				return fail(ExitError, "%s", err)
			}
			n = len(found)
		}
		fmt.Fprintf(env.Stdout, "--forget-ledger: %d ledger entries were caused by these records; their notifications are sent again\n", n)
	}
	if *dryRun {
		fmt.Fprintln(env.Stdout, "dry run: nothing changed")
		return ExitOK
	}
	if !*yes {
		fmt.Fprintf(env.Stderr, "Rewind consumer group %s of route %s as above? [y/N] ", route.ConsumerGroup, route.Name)
		answer, _ := bufio.NewReader(env.Stdin).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(answer)); a != "y" && a != "yes" {
			return fail(ExitError, "not confirmed; nothing changed (--yes rewinds without asking)")
		}
	}
	// The prompt may have waited: a daemon that started meanwhile would
	// commit over the rewind.
	if members, err := groupMembers(admin, route.ConsumerGroup); err != nil || len(members) > 0 {
		return fail(ExitError, "a member joined group %s while the rewind waited (%s%v); nothing changed", route.ConsumerGroup, strings.Join(members, ", "), err)
	}
	if err := commitRewind(client, route, rows, target); err != nil {
		return fail(ExitError, "%s", err)
	}
	var total int64
	for _, r := range rows {
		total += max(r.again(), 0)
	}
	fmt.Fprintf(env.Stdout, "rewound %d partition(s) of %s: route %s handles %d record(s) again when its daemons start\n",
		len(rows), route.SubscribeTopic, route.Name, total)
	// After the rewind: forgotten entries whose records did not come
	// again would send their notifications on some later delivery.
	if l != nil && len(sources) > 0 {
		gone, err := l.Forget(ctx, ledger.Filter{Sources: sources}, false)
		if err != nil {
			return fail(ExitError, "rewound, but the ledger entries were not forgotten (no notification is sent again): %s", err)
		}
		fmt.Fprintf(env.Stdout, "forgot %d ledger entries caused by the rewound records\n", len(gone))
		// A daemon that started before the entries were gone skipped
		// some of the records they guard: their notifications are not
		// sent again after all.
		if members, err := groupMembers(admin, route.ConsumerGroup); err != nil || len(members) > 0 {
			return fail(ExitError, "a member joined group %s before the ledger entries were forgotten (%s%v): some of the rewound records may have been handled without sending again; rewind again with --forget-ledger once it is stopped",
				route.ConsumerGroup, strings.Join(members, ", "), err)
		}
	}
	return ExitOK
}

// rewindTargetOf reads the one target the flags give.
func rewindTargetOf(fset *flag.FlagSet, toTime string, by time.Duration, earliest bool, offset int64, partition int, now time.Time) (rewindTarget, error) {
	var given []string
	for _, name := range []string{"to-time", "by-duration", "to-earliest", "to-offset"} {
		if flagSet(fset, name) {
			given = append(given, "--"+name)
		}
	}
	if len(given) != 1 {
		return rewindTarget{}, fmt.Errorf("give one of --to-time, --by-duration, --to-earliest or --to-offset, got %d (%s)", len(given), strings.Join(given, " "))
	}
	if flagSet(fset, "partition") != flagSet(fset, "to-offset") {
		return rewindTarget{}, errors.New("--to-offset and --partition go together")
	}
	t := rewindTarget{partition: -1}
	switch given[0] {
	case "--to-time":
		at, err := time.Parse(time.RFC3339, toTime)
		if err != nil {
			return rewindTarget{}, fmt.Errorf("--to-time %q is not an RFC 3339 time such as 2026-12-01T10:00:00Z", toTime)
		}
		t.at = at
	case "--by-duration":
		if by <= 0 {
			return rewindTarget{}, fmt.Errorf("--by-duration must be positive, got %s", by)
		}
		t.at = now.Add(-by)
	case "--to-earliest":
		t.earliest = earliest
		if !earliest {
			return rewindTarget{}, errors.New("--to-earliest=false names no target")
		}
	case "--to-offset":
		if offset < 0 || partition < 0 {
			return rewindTarget{}, fmt.Errorf("--to-offset and --partition must not be negative, got %d and %d", offset, partition)
		}
		t.offset, t.partition = offset, int32(partition)
	}
	return t, nil
}

// rewindBrokers returns the brokers to rewind on. On the embedded broker
// with no daemon running, nothing listens: the command then starts the
// broker itself, on its data directory, for as long as it runs.
func rewindBrokers(cfg config.Config, flagValue string) (brokers []string, stop func(), err error) {
	if strings.TrimSpace(flagValue) != "" {
		return strings.Split(strings.ReplaceAll(flagValue, " ", ""), ","), func() {}, nil
	}
	if !cfg.Kafka.Embedded.Enabled {
		return cfg.Brokers(), func() {}, nil
	}
	if conn, err := net.DialTimeout("tcp", cfg.Kafka.Embedded.Listen, time.Second); err == nil {
		conn.Close()
		return []string{cfg.Kafka.Embedded.Listen}, func() {}, nil
	}
	b, err := broker.Start(cfg.Kafka.Embedded, discardLogger())
	if err != nil {
		return nil, nil, fmt.Errorf("start the embedded broker: %w", err)
	}
	return []string{b.Addr()}, b.Close, nil
}

// groupMembers describes group's live members, as host and client ID.
func groupMembers(admin sarama.ClusterAdmin, group string) ([]string, error) {
	groups, err := admin.DescribeConsumerGroups([]string{group})
	if err != nil {
		return nil, err
	}
	var members []string
	for _, g := range groups {
		if g.Err != sarama.ErrNoError && g.Err != sarama.ErrGroupIDNotFound {
			return nil, g.Err
		}
		for _, m := range g.Members {
			members = append(members, fmt.Sprintf("%s on %s", m.ClientId, strings.TrimPrefix(m.ClientHost, "/")))
		}
	}
	slices.Sort(members)
	return members, nil
}

// rewindPlan computes the new offset of each partition of the route's
// topic, from the broker's offset index for a time.
func rewindPlan(client sarama.Client, admin sarama.ClusterAdmin, route config.Route, target rewindTarget) ([]rewindRow, error) {
	topic := route.SubscribeTopic
	partitions, err := client.Partitions(topic)
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	if target.partition >= 0 {
		if !slices.Contains(partitions, target.partition) {
			return nil, fmt.Errorf("topic %s has no partition %d; it has %d", topic, target.partition, len(partitions))
		}
		partitions = []int32{target.partition}
	}
	offsets, err := admin.ListConsumerGroupOffsets(route.ConsumerGroup, map[string][]int32{topic: partitions})
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", route.ConsumerGroup, err)
	}
	var rows []rewindRow
	for _, p := range partitions {
		row := rewindRow{partition: p, committed: -1}
		if b := offsets.GetBlock(topic, p); b != nil {
			if b.Err != sarama.ErrNoError {
				return nil, fmt.Errorf("committed offset of %s/%d: %w", topic, p, b.Err)
			}
			row.committed = b.Offset
			if strings.HasPrefix(b.Metadata, consume.RewindMarker) {
				_, _ = fmt.Sscanf(strings.TrimPrefix(b.Metadata, consume.RewindMarker), "%d", &row.until)
			}
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return nil, fmt.Errorf("earliest offset of %s/%d: %w", topic, p, err)
		}
		row.oldest = oldest
		if row.newest, err = client.GetOffset(topic, p, sarama.OffsetNewest); err != nil {
			return nil, fmt.Errorf("end offset of %s/%d: %w", topic, p, err)
		}
		switch {
		case !target.at.IsZero():
			off, err := client.GetOffset(topic, p, target.at.UnixMilli())
			if err != nil {
				return nil, fmt.Errorf("offset of %s/%d at %s: %w", topic, p, target.at.Format(time.RFC3339), err)
			}
			if off < 0 {
				// No record at or after the time: the end.
				off = row.newest
			}
			row.target = off
		case target.earliest:
			row.target = oldest
		default:
			row.target = min(max(target.offset, oldest), row.newest)
		}
		rows = append(rows, row)
	}
	return rows, nil
}

func printRewindPlan(w io.Writer, route config.Route, target rewindTarget, rows []rewindRow) {
	fmt.Fprintf(w, "route %s: group %s on topic %s, to %s\n", route.Name, route.ConsumerGroup, route.SubscribeTopic, target)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "PARTITION\tCOMMITTED\tNEW\tHANDLED AGAIN\t")
	var total int64
	for _, r := range rows {
		committed := fmt.Sprint(r.committed)
		if r.committed < 0 {
			committed = "none"
		}
		again := fmt.Sprint(max(r.again(), 0))
		if r.forward() {
			skipped := r.target - r.committed
			if r.committed < 0 {
				skipped = r.target - r.oldest
			}
			again += fmt.Sprintf(" (forward: %d skipped)", skipped)
		}
		total += max(r.again(), 0)
		fmt.Fprintf(tw, "%d\t%s\t%d\t%s\t\n", r.partition, committed, r.target, again)
	}
	fmt.Fprintf(tw, "total\t\t\t%d\t\n", total)
	_ = tw.Flush()
}

// commitRewind commits the new offsets for the group, which has no member,
// in one request, and reads them back.
func commitRewind(client sarama.Client, route config.Route, rows []rewindRow, target rewindTarget) error {
	next := map[int32]int64{}
	meta := map[int32]string{}
	for _, r := range rows {
		next[r.partition] = r.target
		// The subscriber reads the end of the range back, to tell the
		// records handled again from new ones.
		meta[r.partition] = fmt.Sprintf("%s%d to %s", consume.RewindMarker, r.end(), target)
	}
	if err := commitOffsets(client, route.ConsumerGroup, route.SubscribeTopic, next, meta); err != nil {
		return fmt.Errorf("commit the new offsets: %w", err)
	}
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return err
	}
	parts := make([]int32, len(rows))
	for i, r := range rows {
		parts[i] = r.partition
	}
	got, err := admin.ListConsumerGroupOffsets(route.ConsumerGroup, map[string][]int32{route.SubscribeTopic: parts})
	if err != nil {
		return fmt.Errorf("read the new offsets back: %w", err)
	}
	for _, r := range rows {
		if b := got.GetBlock(route.SubscribeTopic, r.partition); b == nil || b.Offset != r.target {
			return fmt.Errorf("partition %d: the broker holds offset %v after the commit; want %d (did a daemon of the route start meanwhile?)",
				r.partition, b, r.target)
		}
	}
	return nil
}

// commitOffsets commits next offsets of topic's partitions for group, as a
// group with no members does (generation -1), in one request, and reports
// any partition the broker refused. meta, if set, is each partition's
// commit metadata.
func commitOffsets(client sarama.Client, group, topic string, next map[int32]int64, meta map[int32]string) error {
	coordinator, err := client.Coordinator(group)
	if err != nil {
		return fmt.Errorf("coordinator of group %s: %w", group, err)
	}
	req := &sarama.OffsetCommitRequest{Version: 2, ConsumerGroup: group, ConsumerGroupGeneration: -1, RetentionTime: -1}
	for p, off := range next {
		req.AddBlock(topic, p, off, 0, meta[p])
	}
	resp, err := coordinator.CommitOffset(req)
	if err != nil {
		return fmt.Errorf("commit offsets of group %s: %w", group, err)
	}
	for _, parts := range resp.Errors {
		for p, kerr := range parts {
			if kerr != sarama.ErrNoError {
				return fmt.Errorf("commit offset of partition %d for group %s: %w", p, group, kerr)
			}
		}
	}
	return nil
}
