package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/kafka/poison"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// fakePartition is a partition consumer whose channels the test feeds.
type fakePartition struct {
	sarama.PartitionConsumer
	msgs chan *sarama.ConsumerMessage
	errs chan *sarama.ConsumerError
}

func (f fakePartition) Messages() <-chan *sarama.ConsumerMessage { return f.msgs }
func (f fakePartition) Errors() <-chan *sarama.ConsumerError     { return f.errs }

func TestReplayPartitionEndsWithAnError(t *testing.T) {
	unroutable := &sarama.ConsumerMessage{Topic: "in.poison", Offset: 0} // no topic_poisoned: skipped
	tests := []struct {
		name    string
		feed    func(f fakePartition)
		want    string
		commits []int64
	}{
		{
			name: "messages closed",
			feed: func(f fakePartition) {
				f.msgs <- unroutable
				close(f.msgs)
			},
			want:    "consumer closed before the end offset 5",
			commits: []int64{1},
		},
		{
			name: "consumer error",
			feed: func(f fakePartition) {
				f.errs <- &sarama.ConsumerError{Topic: "in.poison", Err: sarama.ErrOffsetOutOfRange}
			},
			want: sarama.ErrOffsetOutOfRange.Error(),
		},
		{
			name: "idle",
			feed: func(fakePartition) {},
			want: "no record for 50ms",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fakePartition{msgs: make(chan *sarama.ConsumerMessage, 1), errs: make(chan *sarama.ConsumerError, 1)}
			tt.feed(f)
			r := &replayer{
				poison: "in.poison", rules: poison.Rules{Poison: "in.poison", Allowed: map[string]bool{"in": true}},
				out: &bytes.Buffer{}, commitEvery: 100, commitInterval: time.Hour, idle: 50 * time.Millisecond,
			}
			var commits []int64
			commit := func(next int64) error { commits = append(commits, next); return nil }
			done := make(chan error, 1)
			go func() {
				_, _, err := r.partition(context.Background(), f, nil, 5, commit, nil)
				done <- err
			}()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("partition did not return within 10s; want %q", tt.want)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("partition() = %v; want an error containing %q", err, tt.want)
			}
			if !slices.Equal(commits, tt.commits) {
				t.Errorf("committed %v; want %v", commits, tt.commits)
			}
		})
	}
}

func TestReplayPartitionCommitsInBatches(t *testing.T) {
	tests := []struct {
		name     string
		every    int
		interval time.Duration
		want     []int64
	}{
		{"every 2 records", 2, time.Hour, []int64{2, 4, 5}},
		{"every record, by time", 100, 0, []int64{1, 2, 3, 4, 5}},
		{"only at the end", 100, time.Hour, []int64{5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := fakePartition{msgs: make(chan *sarama.ConsumerMessage, 5), errs: make(chan *sarama.ConsumerError)}
			for off := range int64(5) {
				f.msgs <- &sarama.ConsumerMessage{Topic: "in.poison", Offset: off} // skipped: needs no producer
			}
			r := &replayer{
				poison: "in.poison", rules: poison.Rules{Poison: "in.poison", Allowed: map[string]bool{"in": true}},
				out: &bytes.Buffer{}, commitEvery: tt.every, commitInterval: tt.interval, idle: time.Minute,
			}
			var commits []int64
			_, skipped, err := r.partition(context.Background(), f, nil, 5, func(next int64) error {
				commits = append(commits, next)
				return nil
			}, nil)
			if err != nil || skipped != 5 {
				t.Fatalf("partition() = %d skipped, %v; want 5, no error", skipped, err)
			}
			if !slices.Equal(commits, tt.want) {
				t.Errorf("committed %v; want %v", commits, tt.want)
			}
		})
	}
}

func header(k, v string) *sarama.RecordHeader {
	return &sarama.RecordHeader{Key: []byte(k), Value: []byte(v)}
}

func TestReplayPlan(t *testing.T) {
	allowed := map[string]bool{"in": true, "in-b": true}
	poisoned := []*sarama.RecordHeader{
		header("origin", "form"), header(middleware.PoisonedTopicKey, "in"), header(middleware.ReasonForPoisonedKey, "template bug"),
		header(middleware.PoisonedHandlerKey, "h"), header(middleware.PoisonedSubscriberKey, "s"),
		header(app.PoisonedPartitionKey, "0"), header(app.PoisonedOffsetKey, "3"),
	}
	tests := []struct {
		name           string
		to, reason     string
		headers        []*sarama.RecordHeader
		target, skip   string
		filtered       bool
		wantHeaderKeys []string
	}{
		{name: "as the daemon poisons", headers: poisoned, target: "in", wantHeaderKeys: []string{"origin", record.OriginalKey, app.ReplayedFromKey}},
		{name: "reason matches", reason: "template", headers: poisoned, target: "in", wantHeaderKeys: []string{"origin", record.OriginalKey, app.ReplayedFromKey}},
		{name: "reason does not match", reason: "smtp", headers: poisoned, skip: "reason does not contain --reason", filtered: true},
		{name: "to overrides the header", to: "in-b", headers: poisoned, target: "in-b", wantHeaderKeys: []string{"origin", record.OriginalKey, app.ReplayedFromKey}},
		{name: "poisoned again keeps the first record's identity", headers: append([]*sarama.RecordHeader{header(record.OriginalKey, "in/1/1")}, poisoned...),
			target: "in", wantHeaderKeys: []string{record.OriginalKey, "origin", app.ReplayedFromKey}},
		{name: "unrouted topic", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "payments")},
			skip: `topic_poisoned "payments" is not the subscribe topic of a route with poison topic in.poison`},
		{name: "the poison topic itself", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "in.poison")},
			skip: `topic_poisoned "in.poison" is not the subscribe topic`},
		{name: "no topic", headers: []*sarama.RecordHeader{header("origin", "form")}, skip: "no topic_poisoned header and no --to"},
		{name: "empty topic", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "")}, skip: "no topic_poisoned header and no --to"},
		{name: "conflicting topics", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "in"), header(middleware.PoisonedTopicKey, "payments")},
			skip: "conflicting topic_poisoned headers"},
		{name: "conflicting topics under --to", to: "in", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "in"), header(middleware.PoisonedTopicKey, "payments")},
			target: "in", wantHeaderKeys: []string{app.ReplayedFromKey}},
		{name: "repeated topic", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "in"), header(middleware.PoisonedTopicKey, "in")},
			target: "in", wantHeaderKeys: []string{app.ReplayedFromKey}},
		{name: "conflicting reasons under --reason", reason: "bug", headers: []*sarama.RecordHeader{header(middleware.PoisonedTopicKey, "in"),
			header(middleware.ReasonForPoisonedKey, "bug"), header(middleware.ReasonForPoisonedKey, "other")}, skip: "conflicting reason_poisoned headers"},
		{name: "poisoned again after a replay", headers: []*sarama.RecordHeader{header(app.ReplayedFromKey, "in.poison/0/1"), nil, header(middleware.PoisonedTopicKey, "in"), header(app.ReplayedFromKey, "x")},
			target: "in", wantHeaderKeys: []string{app.ReplayedFromKey}},
		{name: "nil headers", headers: []*sarama.RecordHeader{nil, {Key: []byte(middleware.PoisonedTopicKey), Value: []byte("in")}, {Key: nil, Value: nil}},
			target: "in", wantHeaderKeys: []string{"", app.ReplayedFromKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules := poison.Rules{Poison: "in.poison", Allowed: allowed, To: tt.to, Reason: tt.reason}
			p := rules.Plan("in.poison/0/9", tt.headers)
			if p.Target != tt.target || !strings.Contains(p.Skip, tt.skip) || (tt.skip == "") != (p.Skip == "") || p.Filtered != tt.filtered {
				t.Fatalf("plan() = target %q skip %q filtered %v; want target %q skip %q filtered %v", p.Target, p.Skip, p.Filtered, tt.target, tt.skip, tt.filtered)
			}
			var keys []string
			for _, h := range p.Headers {
				keys = append(keys, string(h.Key))
			}
			if !slices.Equal(keys, tt.wantHeaderKeys) {
				t.Errorf("plan() headers = %q; want %q", keys, tt.wantHeaderKeys)
			}
			for _, h := range p.Headers {
				if string(h.Key) == record.OriginalKey && string(h.Value) != "in/0/3" && string(h.Value) != "in/1/1" {
					t.Errorf("%s = %q; want the first poisoned record", record.OriginalKey, h.Value)
				}
			}
			if p.Skip == "" && string(p.Headers[len(p.Headers)-1].Value) != "in.poison/0/9" {
				t.Errorf("replayed_from = %q; want in.poison/0/9", p.Headers[len(p.Headers)-1].Value)
			}
		})
	}
}

// fuzzHeaders reads one header per line of raw: "key=value", "key" for a
// nil value, and a line starting with 0x00 for a nil header.
func fuzzHeaders(raw []byte) []*sarama.RecordHeader {
	var out []*sarama.RecordHeader
	for _, line := range bytes.Split(raw, []byte("\n")) {
		switch k, v, ok := bytes.Cut(line, []byte("=")); {
		case len(line) > 0 && line[0] == 0:
			out = append(out, nil)
		case ok:
			out = append(out, &sarama.RecordHeader{Key: k, Value: v})
		default:
			out = append(out, &sarama.RecordHeader{Key: k})
		}
	}
	return out
}

func FuzzReplayHeaders(f *testing.F) {
	f.Add([]byte("origin=form\ntopic_poisoned=in\nreason_poisoned=template bug\nhandler_poisoned=h\npartition_poisoned=0\noffset_poisoned=3"), "in", "", "template")
	f.Add([]byte("topic_poisoned=in\ntopic_poisoned=payments\nreason_poisoned=a\nreason_poisoned=b"), "in,payments", "", "a")
	f.Add([]byte("replayed_from=in.poison/0/1\n\x00\ntopic_poisoned=in\nreplayed_from\n=\ntopic_poisoned"), "in", "in", "")
	f.Add([]byte("topic_poisoned=in.poison"), "in", "", "")
	f.Add([]byte(""), "", "elsewhere", "x")
	f.Fuzz(func(t *testing.T, raw []byte, allowedList, to, reason string) {
		headers := fuzzHeaders(raw)
		rules := poison.Rules{Poison: "in.poison", Allowed: map[string]bool{}, To: to, Reason: reason}
		for _, a := range strings.Split(allowedList, ",") {
			if a != "" {
				rules.Allowed[a] = true
			}
		}
		const from = "in.poison/0/7"
		p := rules.Plan(from, headers)
		if p.Skip != "" {
			if p.Target != "" || p.Headers != nil {
				t.Fatalf("skipped (%s) with target %q and %d headers; want neither", p.Skip, p.Target, len(p.Headers))
			}
			return
		}
		if p.Filtered {
			t.Fatalf("filtered without a skip reason")
		}
		if !rules.Allowed[p.Target] {
			t.Fatalf("target %q; want one of %v", p.Target, rules.Allowed)
		}
		if to != "" && p.Target != to {
			t.Fatalf("target %q; want --to %q", p.Target, to)
		}
		if reason != "" && !strings.Contains(p.Reason, reason) {
			t.Fatalf("replayed reason %q; want one containing --reason %q", p.Reason, reason)
		}
		kept, froms, originals := 0, 0, 0
		for _, h := range headers {
			if h != nil && !poison.Headers[string(h.Key)] && string(h.Key) != app.ReplayedFromKey {
				kept++
			}
			if h != nil && string(h.Key) == record.OriginalKey {
				originals++
			}
		}
		for _, h := range p.Headers {
			if string(h.Key) == record.OriginalKey {
				originals--
			}
		}
		// The first replay of a record adds its identity.
		kept -= originals
		for _, h := range p.Headers {
			if poison.Headers[string(h.Key)] {
				t.Fatalf("replayed headers hold poison header %q", h.Key)
			}
			if string(h.Key) == app.ReplayedFromKey {
				froms++
				if string(h.Value) != from {
					t.Fatalf("replayed_from = %q; want %q", h.Value, from)
				}
			}
		}
		if froms != 1 || len(p.Headers) != kept+1 {
			t.Fatalf("got %d headers, %d replayed_from; want %d headers, 1 replayed_from", len(p.Headers), froms, kept+1)
		}
	})
}

// replayConfig writes a configuration whose route subscribes to in and
// poisons into poison, and returns its path.
func replayConfig(t *testing.T, brokers []string, in, poison string) string {
	t.Helper()
	raw := fmt.Sprintf(`kafka:
  brokers: [%s]
routes:
  - name: welcome
    handler: notification
    subscribe_topic: %s
    consumer_group: %s-group
    publish_topic: %s.sent
    poison_topic: %s
`, strings.Join(brokers, ","), in, in, in, poison)
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// replayMain runs the eventrouter command with args and returns its exit
// code, stdout and stderr.
func replayMain(ctx context.Context, stdout *bytes.Buffer, args ...string) (int, string, string) {
	var stderr bytes.Buffer
	code := Main(ctx, args, Env{Stdin: strings.NewReader(""), Stdout: stdout, Stderr: &stderr, Getenv: func(string) string { return "" }})
	return code, stdout.String(), stderr.String()
}

func TestReplayRefusesWhatNoRouteAllows(t *testing.T) {
	path := replayConfig(t, []string{"127.0.0.1:1"}, "in", "in.poison")
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"missing config", []string{"--config", filepath.Join(t.TempDir(), "absent.yaml"), "in.poison"}, "absent.yaml: no such file or directory; replay takes the routes from the configuration"},
		{"unknown poison topic", []string{"--config", path, "payments.poison"}, `no route has poison topic "payments.poison"; the routes' poison topics are in.poison`},
		{"subscribe topic as poison topic", []string{"--config", path, "in"}, `no route has poison topic "in"`},
		{"unrouted --to", []string{"--config", path, "--to", "payments", "in.poison"}, `--to "payments" is not the subscribe topic of a route with poison topic in.poison; it can be in`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, _, stderr := replayMain(context.Background(), &bytes.Buffer{}, append([]string{"replay", "--brokers", "127.0.0.1:1"}, tt.args...)...)
			if code != ExitUsage || !strings.Contains(stderr, tt.want) {
				t.Errorf("replay %v = %d %q; want %d and %q", tt.args, code, stderr, ExitUsage, tt.want)
			}
		})
	}
}

// poisonTopics creates a subscribe topic and its poison topic, unique to
// the test.
func poisonTopics(t *testing.T, brokers []string) (in, poison string) {
	t.Helper()
	in = kafkatest.Topic("user-registered")
	poison = in + ".poison"
	kafkatest.CreateTopic(t, brokers, in, 1)
	kafkatest.CreateTopic(t, brokers, poison, 1)
	return in, poison
}

// poisoned returns n records as the daemon parks them after failing on in.
func poisoned(in string, n int) []*sarama.ProducerMessage {
	var out []*sarama.ProducerMessage
	for i := range n {
		out = append(out, &sarama.ProducerMessage{
			Key:   sarama.StringEncoder(strconv.Itoa(i)),
			Value: sarama.StringEncoder(fmt.Sprintf(`{"user_id": %d}`, i)),
			Headers: []sarama.RecordHeader{
				{Key: []byte("origin"), Value: []byte("signup-form")},
				{Key: []byte(middleware.PoisonedTopicKey), Value: []byte(in)},
				{Key: []byte(middleware.ReasonForPoisonedKey), Value: []byte("template bug")},
				{Key: []byte(app.PoisonedPartitionKey), Value: []byte("0")},
				{Key: []byte(app.PoisonedOffsetKey), Value: []byte(strconv.Itoa(i))},
			},
		})
	}
	return out
}

func produce(t *testing.T, brokers []string, topic string, msgs []*sarama.ProducerMessage) {
	t.Helper()
	p, err := sarama.NewSyncProducer(brokers, kafkatest.Config())
	if err != nil {
		t.Fatalf("connect producer to %v: %v", brokers, err)
	}
	defer p.Close()
	for _, m := range msgs {
		m.Topic = topic
	}
	if err := p.SendMessages(msgs); err != nil {
		t.Fatalf("produce %d records to %s: %v", len(msgs), topic, err)
	}
}

// sources returns how many records of topic came from each poison record,
// by replayed_from; the topic must hold exactly want records.
func sources(t *testing.T, brokers []string, topic string, want int) map[string]int {
	t.Helper()
	client, err := sarama.NewClient(brokers, kafkatest.Config())
	if err != nil {
		t.Fatal(err)
	}
	end, err := client.GetOffset(topic, 0, sarama.OffsetNewest)
	client.Close()
	if err != nil {
		t.Fatalf("end offset of %s: %v", topic, err)
	}
	if end != int64(want) {
		t.Fatalf("%s holds %d records; want %d", topic, end, want)
	}
	out := map[string]int{}
	recs := kafkatest.Consume(t, brokers, topic, want, time.Minute)
	if len(recs) != want {
		t.Fatalf("read %d records of %s; want %d", len(recs), topic, want)
	}
	for _, m := range recs {
		from, _ := kafkatest.Header(m, app.ReplayedFromKey)
		out[from]++
	}
	return out
}

// committedOffset returns the next offset group replays poison's partition 0
// from, or -1.
func committedOffset(t *testing.T, brokers []string, group, poison string) int64 {
	t.Helper()
	client, err := sarama.NewClient(brokers, kafkatest.Config())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	offsets, err := (&replayer{group: group, poison: poison}).committed(client, []int32{0})
	if err != nil {
		t.Fatal(err)
	}
	if off, ok := offsets[0]; ok {
		return off
	}
	return -1
}

func TestReplayOnlyIntoRoutedTopics(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		in, poison := poisonTopics(t, k.Brokers)
		elsewhere := kafkatest.Topic("payments")
		kafkatest.CreateTopic(t, k.Brokers, elsewhere, 1)
		good := poisoned(in, 2)
		foreign := poisoned(elsewhere, 1)[0]
		none := poisoned(in, 1)[0]
		none.Headers = slices.DeleteFunc(none.Headers, func(h sarama.RecordHeader) bool { return string(h.Key) == middleware.PoisonedTopicKey })
		twice := poisoned(in, 1)[0]
		twice.Headers = append(twice.Headers, sarama.RecordHeader{Key: []byte(middleware.PoisonedTopicKey), Value: []byte(elsewhere)})
		produce(t, k.Brokers, poison, []*sarama.ProducerMessage{good[0], foreign, none, twice, good[1]})
		path := replayConfig(t, k.Brokers, in, poison)

		code, stdout, stderr := replayMain(context.Background(), &bytes.Buffer{}, "replay", "--config", path, poison)
		if code != ExitOK || !strings.Contains(stdout, "replayed 2 record(s) from "+poison+"; skipped 3") {
			t.Fatalf("replay = %d %q %q; want 2 replayed, 3 skipped", code, stdout, stderr)
		}
		for _, want := range []string{
			fmt.Sprintf("%s/0/1: skipped: topic_poisoned %q is not the subscribe topic of a route with poison topic %s", poison, elsewhere, poison),
			poison + "/0/2: skipped: no topic_poisoned header and no --to",
			poison + "/0/3: skipped: conflicting topic_poisoned headers",
		} {
			if !strings.Contains(stdout, want) {
				t.Errorf("replay printed %q; want a line %q", stdout, want)
			}
		}
		if got := sources(t, k.Brokers, in, 2); got[poison+"/0/0"] != 1 || got[poison+"/0/4"] != 1 {
			t.Errorf("%s holds records from %v; want one each from offsets 0 and 4", in, got)
		}
		sources(t, k.Brokers, elsewhere, 0)
		// The skipped records do not hold up the group: nothing is left.
		code, stdout, _ = replayMain(context.Background(), &bytes.Buffer{}, "replay", "--config", path, poison)
		if code != ExitOK || !strings.Contains(stdout, "replayed 0 record(s) from "+poison+"; skipped 0") {
			t.Errorf("second replay = %d %q; want nothing left", code, stdout)
		}
	})
}

// cancelWriter cancels a run once it printed the replay line of its
// after-th record.
type cancelWriter struct {
	bytes.Buffer
	after, seen int
	cancel      func()
}

func (w *cancelWriter) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte(" -> ")) {
		w.seen++
		if w.seen == w.after {
			w.cancel()
		}
	}
	return w.Buffer.Write(p)
}

func TestReplayCommitsAsItGoes(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const total, after = 10, 4
		in, poison := poisonTopics(t, k.Brokers)
		produce(t, k.Brokers, poison, poisoned(in, total))
		path := replayConfig(t, k.Brokers, in, poison)

		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		w := &cancelWriter{after: after, cancel: cancel}
		code := Main(ctx, []string{"replay", "--config", path, poison}, Env{Stdout: w, Stderr: &bytes.Buffer{}, Getenv: func(string) string { return "" }})
		if code != ExitError || !strings.Contains(w.String(), fmt.Sprintf("replayed %d record(s)", after)) {
			t.Fatalf("cancelled replay = %d %q; want %d and %d replayed", code, w.String(), ExitError, after)
		}
		if got := committedOffset(t, k.Brokers, "eventrouter-replay", poison); got != after {
			t.Errorf("committed offset after cancel = %d; want %d", got, after)
		}
		code, stdout, stderr := replayMain(context.Background(), &bytes.Buffer{}, "replay", "--config", path, poison)
		if code != ExitOK || !strings.Contains(stdout, fmt.Sprintf("replayed %d record(s)", total-after)) {
			t.Fatalf("second replay = %d %q %q; want the other %d", code, stdout, stderr, total-after)
		}
		for from, n := range sources(t, k.Brokers, in, total) {
			if n != 1 {
				t.Errorf("%s replayed %d times; want once", from, n)
			}
		}
	})
}

// crashBatch is the commit batch of the crash test's replay.
const crashBatch = 5

// crashWriter ends the process, as a crash would (no deferred code runs),
// once the replay line of the after-th record is written.
type crashWriter struct {
	after, seen int
}

func (w *crashWriter) Write(p []byte) (int, error) {
	n, err := os.Stdout.Write(p)
	if bytes.Contains(p, []byte(" -> ")) {
		w.seen++
		if w.seen == w.after {
			os.Exit(3)
		}
	}
	return n, err
}

// TestReplayCrashHelper is the replay process TestReplayCrashReplaysAtMostABatch
// crashes.
func TestReplayCrashHelper(t *testing.T) {
	args := os.Getenv("EVENTROUTER_REPLAY_CRASH_ARGS")
	if args == "" {
		t.Skip("the process TestReplayCrashReplaysAtMostABatch starts")
	}
	after, _ := strconv.Atoi(os.Getenv("EVENTROUTER_REPLAY_CRASH_AFTER"))
	env := Env{Stdout: &crashWriter{after: after}, Stderr: os.Stderr, Getenv: func(string) string { return "" }}
	r, code := newReplayer(strings.Split(args, "\n"), env)
	if r == nil {
		t.Fatalf("replay %s: exit %d", args, code)
	}
	r.commitEvery, r.commitInterval = crashBatch, time.Hour
	r.main(context.Background(), env)
	t.Fatalf("replay finished; want a crash after %d records", after)
}

// TestReplayCrashReplaysAtMostABatch kills a replay just before it counts
// a batch's last record, its worst moment: the batch is produced but not
// committed, so the next run replays it again, and nothing more.
func TestReplayCrashReplaysAtMostABatch(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const total, after = 12, 2 * crashBatch
		in, poison := poisonTopics(t, k.Brokers)
		produce(t, k.Brokers, poison, poisoned(in, total))
		path := replayConfig(t, k.Brokers, in, poison)

		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestReplayCrashHelper$")
		cmd.Env = append(os.Environ(),
			"EVENTROUTER_REPLAY_CRASH_ARGS=--config\n"+path+"\n"+poison,
			"EVENTROUTER_REPLAY_CRASH_AFTER="+strconv.Itoa(after))
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 3 {
			t.Fatalf("replay process = %v; want exit 3, a crash after %d records\n%s\n%s", err, after, out, stderr.String())
		}
		if n := strings.Count(string(out), " -> "); n != after {
			t.Fatalf("crashed replay printed %d records; want %d\n%s", n, after, out)
		}
		committedBefore := int64(after - crashBatch)
		if got := committedOffset(t, k.Brokers, "eventrouter-replay", poison); got != committedBefore {
			t.Errorf("committed offset after the crash = %d; want %d", got, committedBefore)
		}

		code, stdout, stderrText := replayMain(context.Background(), &bytes.Buffer{}, "replay", "--config", path, poison)
		if code != ExitOK || !strings.Contains(stdout, fmt.Sprintf("replayed %d record(s)", total-int(committedBefore))) {
			t.Fatalf("replay after the crash = %d %q %q; want %d", code, stdout, stderrText, total-int(committedBefore))
		}
		got := sources(t, k.Brokers, in, total+crashBatch)
		for i := range total {
			want := 1
			if int64(i) >= committedBefore && i < after {
				want = 2
			}
			if from := fmt.Sprintf("%s/0/%d", poison, i); got[from] != want {
				t.Errorf("%s replayed %d times; want %d", from, got[from], want)
			}
		}
	})
}

// The progress report: on a terminal a bar redrawn in place with the rate
// and the time left; otherwise a plain line every interval and at the end.
func TestProgressReports(t *testing.T) {
	for _, tty := range []bool{false, true} {
		t.Run(fmt.Sprintf("tty=%v", tty), func(t *testing.T) {
			var out bytes.Buffer
			clock := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
			p := newProgress(&out, "replay p", 100)
			p.tty, p.every, p.now = tty, time.Second, func() time.Time { return clock }
			p.start, p.last = clock, clock
			for range 50 {
				clock = clock.Add(100 * time.Millisecond)
				p.add(1)
			}
			p.finish()
			got := out.String()
			// 50 records in 5 s: 10/s, and 5 s to go for the other 50.
			for _, want := range []string{"50/100 (50%), 10/s, ETA 5s", "50/100 in 5s, 10/s"} {
				if !strings.Contains(got, want) {
					t.Errorf("progress printed %q; want %q in it", got, want)
				}
			}
			if lines := strings.Count(got, "\n"); tty && lines != 1 || !tty && lines != 6 {
				t.Errorf("progress printed %d lines; want %d (one per second, and the last)", lines, map[bool]int{true: 1, false: 6}[tty])
			}
			if strings.Contains(got, "\r") != tty {
				t.Errorf("progress on tty=%v redraws in place: %v; want %v", tty, strings.Contains(got, "\r"), tty)
			}
		})
	}
}

// --reason passes nothing over: a partition stops at the first record it
// does not match, and a later run (another reason, --discard, or none)
// takes it from there. The README's sequence of commands replays
// everything once.
func TestReplayReasonStopsAndDiscardMarksHandled(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		in, poison := poisonTopics(t, k.Brokers)
		recs := poisoned(in, 5)
		for i, reason := range []string{"template bug", "template bug", "bad email", "template bug", "template bug"} {
			for j, h := range recs[i].Headers {
				if string(h.Key) == middleware.ReasonForPoisonedKey {
					recs[i].Headers[j].Value = []byte(reason)
				}
			}
		}
		produce(t, k.Brokers, poison, recs)
		path := replayConfig(t, k.Brokers, in, poison)
		run := func(args ...string) string {
			t.Helper()
			code, stdout, stderr := replayMain(context.Background(), &bytes.Buffer{}, append([]string{"replay", "--config", path}, append(args, poison)...)...)
			if code != ExitOK {
				t.Fatalf("replay %v = %d %q %q; want 0", args, code, stdout, stderr)
			}
			return stdout
		}
		steps := []struct {
			args      []string
			want      []string
			committed int64
		}{
			{[]string{"--dry-run"}, []string{"(route welcome, key \"0\"): reason \"template bug\"; value \"{\\\"user_id\\\": 0}\"", "would replay 5"}, -1},
			{[]string{"--reason", "template"}, []string{"replayed 2 record(s)", poison + "/0/2: stopped here: reason \"bad email\"", "left for a later run"}, 2},
			{[]string{"--discard", "--reason", "email", "--dry-run"}, []string{"would discard 1 record(s)", poison + "/0/3: stopped here"}, 2},
			{[]string{"--discard", "--reason", "email"}, []string{"discarded 1 record(s)"}, 3},
			{nil, []string{"replayed 2 record(s)"}, 5},
			{nil, []string{"replayed 0 record(s)"}, 5},
		}
		for _, s := range steps {
			out := run(s.args...)
			for _, w := range s.want {
				if !strings.Contains(out, w) {
					t.Errorf("replay %v printed %q; want %q in it", s.args, out, w)
				}
			}
			if got := committedOffset(t, k.Brokers, "eventrouter-replay", poison); got != s.committed {
				t.Errorf("after replay %v the group is at %d; want %d", s.args, got, s.committed)
			}
		}
		got := sources(t, k.Brokers, in, 4)
		for _, off := range []int{0, 1, 3, 4} {
			if got[fmt.Sprintf("%s/0/%d", poison, off)] != 1 {
				t.Errorf("%s holds records from %v; want one each from offsets 0, 1, 3 and 4 (2 was discarded)", in, got)
				break
			}
		}
	})
}
