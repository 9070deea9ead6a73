package app_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/msglog"
	"github.com/eventrouter/eventrouter/notify"
	"github.com/eventrouter/eventrouter/retry"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// route is the topics of one test's notification route.
type route struct {
	in, out, poison, group string
	// ordering and maxInFlight, when set, override the route's defaults
	// (key, 256).
	ordering    string
	maxInFlight int
}

func newRoute() route {
	in := kafkatest.Topic("user-registered")
	return route{in: in, out: in + ".sent", poison: in + ".poison", group: in + "-group"}
}

// yaml returns the routes section that runs the notification handler on r.
func (r route) yaml() string {
	s := fmt.Sprintf(`routes:
  - name: welcome
    handler: notification
    subscribe_topic: %s
    consumer_group: %s
    publish_topic: %s
`, r.in, r.group, r.out)
	if r.ordering != "" {
		s += fmt.Sprintf("    ordering: %s\n", r.ordering)
	}
	if r.maxInFlight != 0 {
		s += fmt.Sprintf("    max_in_flight: %d\n", r.maxInFlight)
	}
	return s
}

// testConfig loads a config through the same path as the daemon, with
// short retry intervals.
func testConfig(t *testing.T, brokers []string, r route, extra string) config.Config {
	t.Helper()
	raw := fmt.Sprintf(`
kafka:
  brokers: [%s]
ledger:
  path: %s
router:
  shutdown_timeout: 20s
retry:
  max_retries: 3
  initial_interval: 10ms
  max_interval: 50ms
  outage_interval: 100ms
  outage_max_interval: 1s
%s%s`, strings.Join(brokers, ","), filepath.Join(t.TempDir(), "ledger.db"), r.yaml(), extra)
	cfg, err := config.Parse([]byte(raw), func(string) string { return "" })
	if err != nil {
		t.Fatalf("config.Parse: %v", err)
	}
	return cfg
}

// syncBuffer is a log sink that tests read while the daemon writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// running is a daemon started by startDaemon.
type running struct {
	*app.Daemon
	stop func() error
	logs *syncBuffer
}

// startDaemon runs a daemon until stop is called or the test ends. Its log
// is printed if the test fails.
func startDaemon(t *testing.T, cfg config.Config, opts app.Options) running {
	t.Helper()
	return startDaemonAt(t, cfg, opts, slog.LevelDebug)
}

// startDaemonAt is startDaemon with the daemon logging at level.
func startDaemonAt(t *testing.T, cfg config.Config, opts app.Options, level slog.Level) running {
	t.Helper()
	logs := &syncBuffer{}
	logger := slog.New(msglog.Handler{Handler: slog.NewTextHandler(logs, &slog.HandlerOptions{Level: level})})
	d, err := app.New(cfg, logger, opts)
	if err != nil {
		t.Fatalf("app.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Running():
	case err := <-done:
		cancel()
		t.Fatalf("daemon stopped before running: %v\n%s", err, logs)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatalf("daemon not running after 30s\n%s", logs)
	}
	var once sync.Once
	var stopErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case stopErr = <-done:
			case <-time.After(60 * time.Second):
				stopErr = errors.New("daemon did not stop within 60s")
			}
		})
		return stopErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("daemon stop: %v", err)
		}
		if t.Failed() {
			t.Logf("daemon log:\n%s", logs)
		}
	})
	return running{Daemon: d, stop: stop, logs: logs}
}

// realBrokerControl returns the real broker and funcs that stop and start
// it, or skips the test when this run may not restart it.
func realBrokerControl(t *testing.T) (brokers []string, stop, start func()) {
	t.Helper()
	brokers = kafkatest.Real(t)
	script := os.Getenv("EVENTROUTER_TEST_KAFKA_SCRIPT")
	if script == "" {
		t.Skip("EVENTROUTER_TEST_KAFKA_SCRIPT is not set; make test sets it to scripts/kafka.sh")
	}
	run := func(arg string) func() {
		return func() {
			if out, err := exec.Command(script, arg).CombinedOutput(); err != nil {
				t.Fatalf("%s %s: %v\n%s", script, arg, err, out)
			}
		}
	}
	return brokers, run("stop"), run("start")
}

// recorder is a notifier that records what it sends and can fail, panic or
// block on demand.
type recorder struct {
	mu    sync.Mutex
	calls int
	sent  []notify.Message
	// before, if set, runs before each send with the 1-based call number;
	// an error it returns fails that send.
	before func(call int) error
}

func (r *recorder) Channel() string { return "test" }

func (r *recorder) Send(ctx context.Context, m notify.Message) error {
	r.mu.Lock()
	r.calls++
	call := r.calls
	before := r.before
	r.mu.Unlock()
	if before != nil {
		if err := before(call); err != nil {
			return err
		}
	}
	// As a real channel does when it gets an answer: a route paused for
	// an outage resumes.
	retry.Reached(ctx, notify.Dependency)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, m)
	return nil
}

func (r *recorder) Calls() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls
}

func (r *recorder) Sent() []notify.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]notify.Message(nil), r.sent...)
}

// count returns how many records topic holds, from its offsets. Right
// after a broker restart its partitions may have no leader yet, so it asks
// again for up to consumeTimeout while the broker answers with a retriable
// error.
func count(t *testing.T, brokers []string, topic string) int64 {
	t.Helper()
	var n int64
	var err error
	waitFor(t, consumeTimeout, "partition leaders of "+topic, func() bool {
		n, err = countOnce(brokers, topic)
		return !errors.Is(err, sarama.ErrNotLeaderForPartition) && !errors.Is(err, sarama.ErrLeaderNotAvailable) &&
			!errors.Is(err, sarama.ErrOffsetNotAvailable)
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func countOnce(brokers []string, topic string) (int64, error) {
	client, err := sarama.NewClient(brokers, kafkatest.Config())
	if err != nil {
		return 0, fmt.Errorf("connect to %v: %w", brokers, err)
	}
	defer client.Close()
	partitions, err := client.Partitions(topic)
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	var n int64
	for _, p := range partitions {
		newest, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return 0, fmt.Errorf("newest offset of %s/%d: %w", topic, p, err)
		}
		oldest, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return 0, fmt.Errorf("oldest offset of %s/%d: %w", topic, p, err)
		}
		n += newest - oldest
	}
	return n, nil
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	waitEvery(t, timeout, 20*time.Millisecond, what, cond)
}

// waitEvery is waitFor polling every interval, for conditions that cost.
func waitEvery(t *testing.T, timeout, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(interval)
	}
}

func event(userID any, email string) kafkatest.Record {
	var id string
	switch v := userID.(type) {
	case string:
		id = fmt.Sprintf("%q", v)
	default:
		id = fmt.Sprint(v)
	}
	return kafkatest.Record{
		Key:   []byte(strings.Trim(id, `"`)),
		Value: []byte(fmt.Sprintf(`{"user_id": %s, "email": %q}`, id, email)),
	}
}

type int64counter struct {
	mu sync.Mutex
	n  int64
}

func (c *int64counter) add(d int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += d
}

func (c *int64counter) get() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// committed returns the group's committed offset of topic/partition, or -1.
func committed(t *testing.T, brokers []string, group, topic string, partition int32) int64 {
	t.Helper()
	off, err := committedOffset(brokers, group, topic, partition)
	if err != nil {
		t.Fatal(err)
	}
	return off
}

// committedOffset is committed that returns its error, for conditions
// polled while the group may not exist yet.
func committedOffset(brokers []string, group, topic string, partition int32) (int64, error) {
	admin, err := sarama.NewClusterAdmin(brokers, kafkatest.Config())
	if err != nil {
		return 0, fmt.Errorf("connect admin to %v: %w", brokers, err)
	}
	defer admin.Close()
	resp, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: {partition}})
	if err != nil {
		return 0, fmt.Errorf("offsets of group %s: %w", group, err)
	}
	if b := resp.GetBlock(topic, partition); b != nil {
		return b.Offset, nil
	}
	return -1, nil
}
