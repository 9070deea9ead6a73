package app_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// tool returns the path of a client nobody here wrote, or skips the test
// when it is missing (fails it under CI=true: make test installs it).
func tool(t *testing.T, path, check string, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath(path); err == nil {
		if check == "" || exec.Command(path, args...).Run() == nil {
			return path
		}
	}
	msg := fmt.Sprintf("%s %s is not installed (scripts/deps.sh installs it)", path, check)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

func runTool(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// TestSeedProducer runs the seed article's confluent-kafka producer as it
// is; only its bootstrap address is pointed at the broker under test.
//
// The seed's topic, user-registered, is part of the script, so on a
// long-lived broker it holds what earlier runs and quick starts left there,
// other users and earlier copies of user 123 alike. The test's consumer
// group starts at the end offsets taken before the seed publishes, and the
// test counts only the notifications that the seed's record caused.
func TestSeedProducer(t *testing.T) {
	python := tool(t, "/usr/bin/python3", "with confluent_kafka", "-c", "import confluent_kafka")
	script, err := os.ReadFile("testdata/seed_producer.py")
	if err != nil {
		t.Fatal(err)
	}
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		r.in = "user-registered" // the seed's topic is part of the script
		before := kafkatest.EndOffsets(t, k.Brokers, r.in)
		kafkatest.CommitOffsets(t, k.Brokers, r.group, r.in, before)
		cfg := testConfig(t, k.Brokers, r, "")
		startDaemon(t, cfg, app.Options{Notifier: &recorder{}})

		src := strings.Replace(string(script), "localhost:9092", k.Brokers[0], 1)
		out := runTool(t, src, python, "-")
		if !strings.Contains(out, "Message delivered to user-registered") {
			t.Fatalf("seed producer printed %q; want a delivery report", out)
		}
		seed := seedRecord(t, k.Brokers, r.in, before)
		id := fmt.Sprintf("%s/%d/%d", seed.Topic, seed.Partition, seed.Offset)
		sent := waitForSent(t, k.Brokers, r.out, id)
		if string(sent.Key) != "123" || !strings.Contains(string(sent.Value), `"user_id":123`) {
			t.Errorf("notification-sent for %s = key %q value %s; want key 123 and user_id 123", id, sent.Key, sent.Value)
		}
		// Once the seed's offset is committed, every notification it
		// caused, retries included, was published before.
		waitFor(t, consumeTimeout, "the seed's offset committed", func() bool {
			return committed(t, k.Brokers, r.group, r.in, seed.Partition) > seed.Offset
		})
		// r.out is this test's own topic, but other producers may have
		// registered other users on user-registered meanwhile.
		var for123 []string
		for _, rec := range kafkatest.Consume(t, k.Brokers, r.out, int(count(t, k.Brokers, r.out)), consumeTimeout) {
			if string(rec.Key) == "123" {
				for123 = append(for123, string(rec.Value))
			}
		}
		if len(for123) != 1 {
			t.Fatalf("got %d notification-sent for user 123 %q; want exactly one", len(for123), for123)
		}
	})
}

// seedRecord returns the seed producer's record: the first one keyed 123
// that topic received after the end offsets before.
func seedRecord(t *testing.T, brokers []string, topic string, before map[int32]int64) *sarama.ConsumerMessage {
	t.Helper()
	n := kafkatest.Since(t, brokers, topic, before)
	recs := kafkatest.ConsumeFrom(t, brokers, topic, before, n, consumeTimeout)
	for _, rec := range recs {
		if string(rec.Key) == "123" {
			return rec
		}
	}
	t.Fatalf("got %d records on %s after offsets %v, none keyed 123; want the seed's", len(recs), topic, before)
	return nil
}

func TestKcatProducer(t *testing.T) {
	kcat := tool(t, "kcat", "", "-V")
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: &recorder{}})
		runTool(t, "u1:{\"user_id\": \"u1\", \"email\": \"kcat@example.com\"}\nu2:{broken\n", kcat,
			"-P", "-b", strings.Join(k.Brokers, ","), "-t", r.in, "-K", ":")

		sent := waitForSent(t, k.Brokers, r.out, r.in+"/0/0")
		if string(sent.Key) != "u1" {
			t.Errorf("notification-sent key = %q; want u1", sent.Key)
		}
		poisoned := kafkatest.Consume(t, k.Brokers, r.poison, 1, consumeTimeout)
		if len(poisoned) != 1 || string(poisoned[0].Key) != "u2" || string(poisoned[0].Value) != "{broken" {
			t.Fatalf("poison topic = %d records; want the broken kcat record with its key u2", len(poisoned))
		}
	})
}

// waitForSent returns the notification-sent record caused by event id.
func waitForSent(t *testing.T, brokers []string, topic, id string) *sarama.ConsumerMessage {
	t.Helper()
	deadline := time.Now().Add(consumeTimeout)
	for time.Now().Before(deadline) {
		for _, rec := range kafkatest.Consume(t, brokers, topic, 1<<20, 2*time.Second) {
			var ev struct {
				SourceEventID string `json:"source_event_id"`
			}
			if json.Unmarshal(rec.Value, &ev) == nil && ev.SourceEventID == id {
				return rec
			}
		}
	}
	t.Fatalf("no notification-sent for event %s in %s", id, topic)
	return nil
}

func TestReplayPoisonQueue(t *testing.T) {
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		r := newRoute()
		broken := true
		var mu sync.Mutex
		notifier := &recorder{before: func(int) error {
			mu.Lock()
			defer mu.Unlock()
			if broken {
				return retry.Permanent(errors.New("template bug"))
			}
			return nil
		}}
		startDaemon(t, testConfig(t, k.Brokers, r, ""), app.Options{Notifier: notifier})
		rec := event(7, "replay@example.com")
		rec.Headers = map[string]string{"origin": "signup-form"}
		kafkatest.Produce(t, k.Brokers, r.in, rec, kafkatest.Record{Value: []byte("junk")})
		if got := kafkatest.Consume(t, k.Brokers, r.poison, 2, consumeTimeout); len(got) != 2 {
			t.Fatalf("got %d poison records; want 2", len(got))
		}

		// The cause is fixed; replay what the template bug poisoned.
		mu.Lock()
		broken = false
		mu.Unlock()
		brokers := strings.Join(k.Brokers, ",")
		// Replay takes the routes, which say where records may go back
		// to, from the daemon's configuration.
		file, err := os.CreateTemp(t.TempDir(), "eventrouter-*.yaml")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(file, "kafka:\n  brokers: [%s]\n%s", brokers, r.yaml())
		if err := file.Close(); err != nil {
			t.Fatal(err)
		}
		path := file.Name()
		dry := runMain(t, "", nil, "replay", "--config", path, "--brokers", brokers, "--dry-run", r.poison)
		if dry.code != 0 || !strings.Contains(dry.stdout, "would replay 2 record(s)") || !strings.Contains(dry.stdout, "(route welcome,") ||
			strings.Contains(dry.stdout, "replay@example.com") {
			t.Fatalf("replay --dry-run = %d %q %q; want 2 records with their route, and no address", dry.code, dry.stdout, dry.stderr)
		}
		// Discard the junk and replay the event, whichever comes first in
		// the poison topic: each run stops at the record it does not match,
		// and the next takes it from there.
		var replayedN, discardedN int
		for range 2 {
			for _, args := range [][]string{{"--discard", "--reason", "invalid user-registered event"}, {"--reason", "template bug"}} {
				res := runMain(t, "", nil, append(append([]string{"replay", "--config", path, "--brokers", brokers}, args...), r.poison)...)
				if res.code != 0 {
					t.Fatalf("replay %v = %d %q %q", args, res.code, res.stdout, res.stderr)
				}
				m := regexp.MustCompile(`(?m)^(replayed|discarded) (\d+) record`).FindStringSubmatch(res.stdout)
				if m == nil {
					t.Fatalf("replay %v printed %q; want its count", args, res.stdout)
				}
				n, _ := strconv.Atoi(m[2])
				if m[1] == "discarded" {
					discardedN += n
				} else {
					replayedN += n
				}
			}
		}
		if replayedN != 1 || discardedN != 1 {
			t.Fatalf("replayed %d and discarded %d; want 1 each", replayedN, discardedN)
		}
		// Only the replayed event can have been notified: the first attempt
		// failed, and junk is no event.
		sent := kafkatest.Consume(t, k.Brokers, r.out, 1, consumeTimeout)
		if len(sent) != 1 || string(sent[0].Key) != "7" {
			t.Fatalf("got %d notification-sent; want one, keyed 7, for the replayed event", len(sent))
		}
		replayed := kafkatest.Consume(t, k.Brokers, r.in, 3, consumeTimeout)
		if len(replayed) != 3 {
			t.Fatalf("subscribe topic holds %d records; want 3", len(replayed))
		}
		last := replayed[2]
		origin, _ := kafkatest.Header(last, "origin")
		from, _ := kafkatest.Header(last, app.ReplayedFromKey)
		_, poisoned := kafkatest.Header(last, "reason_poisoned")
		// The two bad records are handled at once, so either may be the
		// first in the poison topic.
		wantFrom := ""
		for _, rec := range kafkatest.Consume(t, k.Brokers, r.poison, 2, consumeTimeout) {
			if string(rec.Key) == "7" {
				wantFrom = fmt.Sprintf("%s/0/%d", r.poison, rec.Offset)
			}
		}
		if string(last.Key) != "7" || origin != "signup-form" || from != wantFrom || poisoned {
			t.Errorf("replayed record = key %q origin %q replayed_from %q poison headers %v; want the original key and headers, the source, no poison headers",
				last.Key, origin, from, poisoned)
		}
		again := runMain(t, "", nil, "replay", "--config", path, r.poison)
		if again.code != 0 || !strings.Contains(again.stdout, "replayed 0 record(s)") {
			t.Errorf("second replay = %d %q; want nothing left to replay", again.code, again.stdout)
		}
	})
}
