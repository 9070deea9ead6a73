package app_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/app/cli"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/pgtest"
)

// offsetsSeen counts the records a route's handler saw, by partition and
// offset.
type offsetsSeen struct {
	mu   sync.Mutex
	seen map[string]int
	n    int
	// replayed counts the records that came marked as rewound.
	replayed int
}

func (o *offsetsSeen) registry() map[string]handlers.Spec {
	reg := handlers.Registry()
	reg["notification"] = reg["notification"].Wrapped(func(h message.HandlerFunc) message.HandlerFunc {
		return func(msg *message.Message) ([]*message.Message, error) {
			out, err := h(msg)
			if err == nil {
				if origin, ok := record.OriginFrom(msg.Context()); ok {
					o.mu.Lock()
					o.seen[fmt.Sprintf("%d/%d", origin.Partition, origin.Offset)]++
					o.n++
					if origin.Replayed {
						o.replayed++
					}
					o.mu.Unlock()
				}
			}
			return out, err
		}
	})
	return reg
}

func (o *offsetsSeen) total() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.n
}

func (o *offsetsSeen) times(partition int32, offset int64) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.seen[fmt.Sprintf("%d/%d", partition, offset)]
}

// produceAt writes records with the given timestamp to one partition, and
// returns their offsets.
func produceAt(t *testing.T, brokers []string, topic string, partition int32, at time.Time, recs []kafkatest.Record) []int64 {
	t.Helper()
	offsets, err := sendTo(brokers, topic, partition, at, recs)
	if err != nil {
		t.Fatal(err)
	}
	return offsets
}

// sendTo writes records with the given timestamp to one partition, and
// returns their offsets. It is safe to call from any goroutine.
func sendTo(brokers []string, topic string, partition int32, at time.Time, recs []kafkatest.Record) ([]int64, error) {
	cfg := kafkatest.Config()
	cfg.Producer.Return.Successes = true
	cfg.Producer.Partitioner = sarama.NewManualPartitioner
	p, err := sarama.NewSyncProducer(brokers, cfg)
	if err != nil {
		return nil, fmt.Errorf("producer: %w", err)
	}
	defer p.Close()
	var offsets []int64
	for _, r := range recs {
		_, off, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Partition: partition, Timestamp: at,
			Key: sarama.ByteEncoder(r.Key), Value: sarama.ByteEncoder(r.Value)})
		if err != nil {
			return nil, fmt.Errorf("produce to %s/%d: %w", topic, partition, err)
		}
		offsets = append(offsets, off)
	}
	return offsets, nil
}

// writeRouteConfig writes a config file with brokers, route r and extra,
// for the commands.
func writeRouteConfig(t *testing.T, brokers []string, r route, extra ...string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	raw := fmt.Sprintf("kafka:\n  brokers: [%s]\n%s%s", strings.Join(brokers, ","), r.yaml(), strings.Join(extra, ""))
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRewindByTime handles three batches with known timestamps, rewinds
// the route to the second batch's time, and checks that exactly the second
// and third batches are handled again, and that the ledger sends no
// second email.
func TestRewindByTime(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const perBatch = 10
		r := newRoute()
		kafkatest.CreateTopic(t, k.Brokers, r.in, 2)
		base := time.Now().Add(-3 * time.Hour).Truncate(time.Second)
		type batch struct {
			at      time.Time
			offsets map[int32][]int64
		}
		var batches []batch
		user := 0
		for b := range 3 {
			at := base.Add(time.Duration(b) * time.Hour)
			bt := batch{at: at, offsets: map[int32][]int64{}}
			for p := range int32(2) {
				var recs []kafkatest.Record
				for range perBatch / 2 {
					recs = append(recs, event(user, userEmail(user)))
					user++
				}
				bt.offsets[p] = produceAt(t, k.Brokers, r.in, p, at, recs)
			}
			batches = append(batches, bt)
		}
		const users = 3 * perBatch

		seen := &offsetsSeen{seen: map[string]int{}}
		notifier := &recorder{}
		cfg := testConfig(t, k.Brokers, r, "")
		d := startDaemon(t, cfg, app.Options{Notifier: notifier, Registry: seen.registry()})
		waitFor(t, consumeTimeout, "every record handled", func() bool { return seen.total() >= users })
		waitFor(t, consumeTimeout, "every offset committed", func() bool {
			return committed(t, k.Brokers, r.group, r.in, 0) >= users/2 && committed(t, k.Brokers, r.group, r.in, 1) >= users/2
		})
		path := writeRouteConfig(t, k.Brokers, r)
		second := batches[1].at.Format(time.RFC3339)

		// While the daemon runs: the dry run prints the plan, and the
		// rewind is refused, naming the member.
		res := runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-time", second, "--dry-run")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, "total") || !strings.Contains(res.stdout, "live member") {
			t.Errorf("rewind --dry-run with the daemon running = %d %q %q; want 0, the plan and the live member", res.code, res.stdout, res.stderr)
		}
		res = runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-time", second, "--yes")
		if res.code != cli.ExitError || !strings.Contains(res.stderr, "live member") || !strings.Contains(res.stderr, config.Defaults().Kafka.ClientID) {
			t.Errorf("rewind with the daemon running = %d %q; want %d and the live member named", res.code, res.stderr, cli.ExitError)
		}
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
		waitFor(t, consumeTimeout, "the group to be empty", func() bool {
			return kafkatest.GroupStable(k.Brokers, r.group, r.in, 0) || groupEmpty(t, k.Brokers, r.group)
		})

		// The dry run changes nothing.
		before := []int64{committed(t, k.Brokers, r.group, r.in, 0), committed(t, k.Brokers, r.group, r.in, 1)}
		res = runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-time", second, "--dry-run")
		wantTotal := fmt.Sprintf("total  %d", 2*perBatch)
		if res.code != cli.ExitOK || !strings.Contains(strings.Join(strings.Fields(res.stdout), "  "), strings.Join(strings.Fields(wantTotal), "  ")) {
			t.Errorf("rewind --dry-run = %d %q %q; want 0 and %q", res.code, res.stdout, res.stderr, wantTotal)
		}
		after := []int64{committed(t, k.Brokers, r.group, r.in, 0), committed(t, k.Brokers, r.group, r.in, 1)}
		if fmt.Sprint(before) != fmt.Sprint(after) {
			t.Errorf("committed offsets after a dry run = %v; want them unchanged, %v", after, before)
		}
		// Without --yes and no answer: nothing changes.
		if res := runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-time", second); res.code != cli.ExitError {
			t.Errorf("rewind without --yes or an answer = %d; want %d", res.code, cli.ExitError)
		}
		res = runMain(t, "y\n", nil, "rewind", "welcome", "--config", path, "--to-time", second)
		if res.code != cli.ExitOK {
			t.Fatalf("rewind = %d %q %q; want 0", res.code, res.stdout, res.stderr)
		}
		for p := range int32(2) {
			if got, want := committed(t, k.Brokers, r.group, r.in, p), batches[1].offsets[p][0]; got != want {
				t.Errorf("partition %d committed at %d after the rewind; want %d, the second batch's first", p, got, want)
			}
		}

		d2 := startDaemon(t, cfg, app.Options{Notifier: notifier, Registry: seen.registry()})
		waitFor(t, consumeTimeout, "the second and third batches handled again", func() bool { return seen.total() >= users+2*perBatch })
		waitFor(t, consumeTimeout, "every offset committed again", func() bool {
			return committed(t, k.Brokers, r.group, r.in, 0) >= users/2 && committed(t, k.Brokers, r.group, r.in, 1) >= users/2
		})
		for b, bt := range batches {
			want := 2
			if b == 0 {
				want = 1
			}
			for p, offs := range bt.offsets {
				for _, off := range offs {
					if n := seen.times(p, off); n != want {
						t.Errorf("batch %d record %d/%d handled %d times; want %d", b+1, p, off, n, want)
					}
				}
			}
		}
		if n := len(notifier.Sent()); n != users {
			t.Errorf("%d emails after the rewind; want %d, one per user: the ledger has the rest", n, users)
		}
		// Traceable: each record handled again says so, in its origin
		// and on its log lines.
		seen.mu.Lock()
		replayed := seen.replayed
		seen.mu.Unlock()
		if replayed != 2*perBatch {
			t.Errorf("%d records came marked as rewound; want %d, the second and third batches", replayed, 2*perBatch)
		}
		if !strings.Contains(d2.logs.String(), "replayed=rewind") {
			t.Error("no log line of the rewound records says replayed=rewind")
		}
		fmt.Printf("rewind on %s: 3 batches of %d, rewound to the second: %d records handled, %d emails\n", k.Name, perBatch, seen.total(), len(notifier.Sent()))

		// --by-duration reads the offset index as --to-time does; a move
		// past a record not handled yet needs --allow-forward.
		if err := d2.stop(); err != nil {
			t.Fatal(err)
		}
		if res := runMain(t, "", nil, "rewind", "welcome", "--config", path, "--by-duration", "30m", "--dry-run"); res.code != cli.ExitOK ||
			!strings.Contains(res.stdout, "to the first record at or after") {
			t.Errorf("rewind --by-duration 30m --dry-run = %d %q %q; want 0 and the plan", res.code, res.stdout, res.stderr)
		}
		fresh := produceAt(t, k.Brokers, r.in, 0, time.Now(), []kafkatest.Record{event(users, userEmail(users))})[0]
		res = runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-offset", fmt.Sprint(fresh+1), "--partition", "0", "--allow-forward", "--yes")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, "forward: 1 skipped") {
			t.Errorf("rewind --allow-forward = %d %q %q; want 0 and 1 record skipped", res.code, res.stdout, res.stderr)
		}
		if got := committed(t, k.Brokers, r.group, r.in, 0); got != fresh+1 {
			t.Errorf("committed %d after a forward move; want %d", got, fresh+1)
		}
	})
}

// groupEmpty reports whether group has no member.
func groupEmpty(t *testing.T, brokers []string, group string) bool {
	t.Helper()
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.Config())
	if err != nil {
		return false
	}
	defer admin.Close()
	groups, err := admin.DescribeConsumerGroups([]string{group})
	return err == nil && len(groups) == 1 && len(groups[0].Members) == 0
}

func TestRewindArguments(t *testing.T) {
	path := writeRouteConfig(t, []string{"127.0.0.1:1"}, newRoute())
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no target", []string{"welcome"}, "give one of --to-time"},
		{"two targets", []string{"welcome", "--to-earliest", "--by-duration", "1h"}, "got 2"},
		{"offset without partition", []string{"welcome", "--to-offset", "3"}, "--to-offset and --partition go together"},
		{"bad time", []string{"welcome", "--to-time", "yesterday"}, "not an RFC 3339 time"},
		{"no route", []string{"--to-earliest"}, "name one route"},
		{"unknown route", []string{"nope", "--to-earliest"}, `no route "nope"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := runMain(t, "", nil, append([]string{"rewind", "--config", path}, tt.args...)...)
			if res.code != cli.ExitUsage || !strings.Contains(res.stderr, tt.want) {
				t.Errorf("rewind %v = %d %q; want %d and %q", tt.args, res.code, res.stderr, cli.ExitUsage, tt.want)
			}
		})
	}
}

// TestForgetResendsExactlyThoseEmails forgets the ledger entries sent
// since a time, rewinds the route to its start, and checks that exactly
// the users welcomed since then get their email again, once.
func TestForgetResendsExactlyThoseEmails(t *testing.T) {
	run := func(t *testing.T, brokers []string, shared string) {
		const half = 10
		r := newRoute()
		notifier := &recorder{}
		cfg := testConfig(t, brokers, r, "")
		opts := app.Options{Notifier: notifier}
		ledgerYAML := fmt.Sprintf("ledger:\n  path: %s\n", cfg.Ledger.Path)
		vars := map[string]string{}
		if shared != "" {
			cfg, opts = withSharedLedger(cfg, shared, opts)
			ledgerYAML = sharedLedgerYAML
			vars[sharedLedgerDSNEnv] = shared
		}
		path := writeRouteConfig(t, brokers, r, ledgerYAML)
		d := startDaemon(t, cfg, opts)
		produceEvents(t, brokers, r.in, 0, half)
		waitFor(t, consumeTimeout, "the first half's emails", func() bool { return len(notifier.Sent()) >= half })
		cut := time.Now().UTC()
		produceEvents(t, brokers, r.in, half, 2*half)
		waitFor(t, consumeTimeout, "the second half's emails", func() bool { return len(notifier.Sent()) >= 2*half })
		waitFor(t, consumeTimeout, "every offset committed", func() bool { return committed(t, brokers, r.group, r.in, 0) >= 2*half })
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}

		since := cut.Format(time.RFC3339Nano)
		res := runMain(t, "", vars, "ledger", "forget", "--config", path, "--template", "welcome", "--since", since, "--dry-run")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, fmt.Sprintf("%d entries of template welcome sent since", half)) ||
			!strings.Contains(res.stdout, "nothing changed") || strings.Contains(res.stdout, "@example.com") {
			t.Fatalf("ledger forget --dry-run = %d %q %q; want 0, %d entries listed by user ID, nothing changed", res.code, res.stdout, res.stderr, half)
		}
		if res := runMain(t, "", vars, "ledger", "forget", "--config", path, "--template", "welcome"); res.code != cli.ExitUsage ||
			!strings.Contains(res.stderr, "never takes every entry") {
			t.Errorf("ledger forget without --since or --user = %d %q; want %d and a refusal", res.code, res.stderr, cli.ExitUsage)
		}
		res = runMain(t, "", vars, "ledger", "forget", "--config", path, "--template", "welcome", "--user", "3", "--dry-run")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, "1 entries of template welcome for user(s) 3") || !strings.Contains(res.stdout, "  user 3  sent ") {
			t.Errorf("ledger forget --user 3 --dry-run = %d %q %q; want 0 and user 3 listed", res.code, res.stdout, res.stderr)
		}
		res = runMain(t, "", vars, "ledger", "forget", "--config", path, "--template", "welcome", "--since", since, "--yes")
		if res.code != cli.ExitOK || !strings.Contains(res.stdout, fmt.Sprintf("forgot %d entries", half)) {
			t.Fatalf("ledger forget = %d %q %q; want 0 and forgot %d", res.code, res.stdout, res.stderr, half)
		}
		res = runMain(t, "", vars, "rewind", "welcome", "--config", path, "--to-earliest", "--yes")
		if res.code != cli.ExitOK {
			t.Fatalf("rewind = %d %q %q; want 0", res.code, res.stdout, res.stderr)
		}

		startDaemon(t, cfg, opts)
		waitFor(t, consumeTimeout, "the forgotten users' emails again", func() bool { return len(notifier.Sent()) >= 3*half })
		waitFor(t, consumeTimeout, "every offset committed again", func() bool { return committed(t, brokers, r.group, r.in, 0) >= 2*half })
		sent := map[string]int{}
		for _, m := range notifier.Sent() {
			sent[m.Email]++
		}
		for i := range 2 * half {
			want := 1
			if i >= half {
				want = 2
			}
			if n := sent[userEmail(i)]; n != want {
				t.Errorf("user %d got %d emails; want %d", i, n, want)
			}
		}
		if n := len(notifier.Sent()); n != 3*half {
			t.Errorf("%d emails; want %d: each user once, and the forgotten ones once more", n, 3*half)
		}
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) { run(t, k.Brokers, "") })
	t.Run("kafka_postgres", func(t *testing.T) { run(t, kafkatest.Real(t), pgtest.DSN(t)) })
}

// rewind --forget-ledger sends again the notifications of exactly the
// records it hands out again, and of no others.
func TestRewindForgetLedger(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const users, from = 20, 12
		r := newRoute()
		notifier := &recorder{}
		cfg := testConfig(t, k.Brokers, r, "")
		path := writeRouteConfig(t, k.Brokers, r, fmt.Sprintf("ledger:\n  path: %s\n", cfg.Ledger.Path))
		d := startDaemon(t, cfg, app.Options{Notifier: notifier})
		produceEvents(t, k.Brokers, r.in, 0, users)
		waitFor(t, consumeTimeout, "every email", func() bool { return len(notifier.Sent()) >= users })
		waitFor(t, consumeTimeout, "every offset committed", func() bool { return committed(t, k.Brokers, r.group, r.in, 0) >= users })
		if err := d.stop(); err != nil {
			t.Fatal(err)
		}
		args := []string{"rewind", "welcome", "--config", path, "--to-offset", fmt.Sprint(from), "--partition", "0", "--forget-ledger"}
		res := runMain(t, "", nil, append(args, "--dry-run")...)
		if want := fmt.Sprintf("%d ledger entries were caused by these records", users-from); res.code != cli.ExitOK || !strings.Contains(res.stdout, want) {
			t.Fatalf("rewind --forget-ledger --dry-run = %d %q %q; want 0 and %q", res.code, res.stdout, res.stderr, want)
		}
		res = runMain(t, "", nil, append(args, "--yes")...)
		if want := fmt.Sprintf("forgot %d ledger entries", users-from); res.code != cli.ExitOK || !strings.Contains(res.stdout, want) {
			t.Fatalf("rewind --forget-ledger = %d %q %q; want 0 and %q", res.code, res.stdout, res.stderr, want)
		}
		// Forward from the rewound offset: refused without --allow-forward.
		fwd := []string{"rewind", "welcome", "--config", path, "--to-offset", fmt.Sprint(from + 3), "--partition", "0"}
		if res := runMain(t, "", nil, append(fwd, "--yes")...); res.code != cli.ExitError || !strings.Contains(res.stderr, "--allow-forward") ||
			!strings.Contains(res.stdout, "forward: 3 skipped") {
			t.Errorf("rewind forward = %d %q %q; want %d, the forward partition shown and --allow-forward asked for", res.code, res.stdout, res.stderr, cli.ExitError)
		}
		if got := committed(t, k.Brokers, r.group, r.in, 0); got != from {
			t.Errorf("committed %d after a refused forward move; want %d", got, from)
		}
		startDaemon(t, cfg, app.Options{Notifier: notifier})
		waitFor(t, consumeTimeout, "the rewound records' emails again", func() bool { return len(notifier.Sent()) >= 2*users-from })
		waitFor(t, consumeTimeout, "every offset committed again", func() bool { return committed(t, k.Brokers, r.group, r.in, 0) >= users })
		sent := map[string]int{}
		for _, m := range notifier.Sent() {
			sent[m.Email]++
		}
		for i := range users {
			want := 1
			if i >= from {
				want = 2
			}
			if n := sent[userEmail(i)]; n != want {
				t.Errorf("user %d (offset %d) got %d emails; want %d", i, i, n, want)
			}
		}
	})
}

// On the embedded broker, with its daemon stopped, rewind starts the
// broker itself on its data directory: the zero-setup default can replay
// too.
func TestRewindOnTheEmbeddedBroker(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	dir := t.TempDir()
	r := newRoute()
	raw := fmt.Sprintf("kafka:\n  embedded:\n    enabled: true\n    listen: %s\n    data_dir: %s\n    partitions: 1\nledger:\n  path: %s\n%s",
		addr, filepath.Join(dir, "kafka"), filepath.Join(dir, "ledger.db"), r.yaml())
	path := filepath.Join(dir, "eventrouter.yaml")
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	const users = 5
	seen := &offsetsSeen{seen: map[string]int{}}
	notifier := &recorder{}
	d := startDaemon(t, cfg, app.Options{Notifier: notifier, Registry: seen.registry()})
	produceEvents(t, []string{addr}, r.in, 0, users)
	waitFor(t, consumeTimeout, "every record handled", func() bool { return seen.total() >= users })
	waitFor(t, consumeTimeout, "every offset committed", func() bool { return committed(t, []string{addr}, r.group, r.in, 0) >= users })
	if err := d.stop(); err != nil {
		t.Fatal(err)
	}
	res := runMain(t, "", nil, "rewind", "welcome", "--config", path, "--to-earliest", "--yes")
	if res.code != cli.ExitOK || !strings.Contains(res.stdout, fmt.Sprintf("handles %d record(s) again", users)) {
		t.Fatalf("rewind on the stopped embedded broker = %d %q %q; want 0 and %d records again", res.code, res.stdout, res.stderr, users)
	}
	startDaemon(t, cfg, app.Options{Notifier: notifier, Registry: seen.registry()})
	waitFor(t, consumeTimeout, "every record handled again", func() bool { return seen.total() >= 2*users })
	if n := len(notifier.Sent()); n != users {
		t.Errorf("%d emails; want %d, one per user", n, users)
	}
}
