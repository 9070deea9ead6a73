package app_test

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// buildBinary builds the eventrouter command once per test.
func buildBinary(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "eventrouter")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/eventrouter/eventrouter").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// process is an `eventrouter run` child process.
type process struct {
	cmd  *exec.Cmd
	logs *syncBuffer
	done chan error
}

// startProcess starts `eventrouter run` on configPath, with env added to
// its environment.
func startProcess(t *testing.T, bin, configPath string, brokers []string, env ...string) *process {
	t.Helper()
	p := &process{logs: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd = exec.Command(bin, "run", "--config", configPath)
	p.cmd.Env = append(os.Environ(), "EVENTROUTER_KAFKA_BROKERS="+strings.Join(brokers, ","),
		"EVENTROUTER_TEST_LEDGER="+filepath.Join(t.TempDir(), "ledger.db"))
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if !t.Failed() {
			p.signal(syscall.SIGKILL)
			return
		}
		// A still-running process is asked for a goroutine dump first:
		// what it is stuck on is the most useful line of a failure.
		p.signal(syscall.SIGQUIT)
		select {
		case err := <-p.done:
			p.done <- err
		case <-time.After(5 * time.Second):
			p.signal(syscall.SIGKILL)
		}
		logs, dump, _ := strings.Cut(p.logs.String(), "\ngoroutine ")
		t.Logf("eventrouter pid %d log tail:\n%s", p.cmd.Process.Pid, tail(logs, 40))
		if dump != "" {
			t.Logf("eventrouter pid %d goroutines blocked for a minute or more:\n%s", p.cmd.Process.Pid, longBlocked("goroutine "+dump, 150))
		}
	})
	return p
}

// longBlocked returns the goroutines of a Go goroutine dump that were
// blocked for a minute or more, at most n lines of them.
func longBlocked(dump string, n int) string {
	var out []string
	for _, g := range strings.Split(dump, "\n\n") {
		header, _, _ := strings.Cut(g, "\n")
		if strings.Contains(header, "minutes]") {
			out = append(out, strings.Split(g, "\n")...)
			out = append(out, "")
		}
	}
	if len(out) == 0 {
		return "none"
	}
	if len(out) > n {
		out = append(out[:n], "...")
	}
	return strings.Join(out, "\n")
}

func (p *process) signal(sig syscall.Signal) {
	select {
	case err := <-p.done:
		p.done <- err
	default:
		_ = p.cmd.Process.Signal(sig)
	}
}

// stop sends SIGTERM and returns the exit error, bounded in time.
func (p *process) stop(t *testing.T) error {
	t.Helper()
	p.signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(60 * time.Second):
		p.signal(syscall.SIGKILL)
		return fmt.Errorf("pid %d ignored SIGTERM for 60s", p.cmd.Process.Pid)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// tallySent reads every notification-sent record in topic and returns how
// many there are and how many distinct source events they cover.
func tallySent(t *testing.T, brokers []string, topic string) (total, distinct int) {
	t.Helper()
	seen := sentSources(t, brokers, topic)
	for _, n := range seen {
		total += n
	}
	return total, len(seen)
}

// sentSources counts topic's notification-sent records by the identity of
// the event that caused them (topic/partition/offset).
func sentSources(t *testing.T, brokers []string, topic string) map[string]int {
	t.Helper()
	n := count(t, brokers, topic)
	seen := map[string]int{}
	for _, rec := range kafkatest.Consume(t, brokers, topic, int(n), consumeTimeout) {
		var ev struct {
			SourceEventID string `json:"source_event_id"`
		}
		_ = json.Unmarshal(rec.Value, &ev)
		seen[ev.SourceEventID]++
	}
	return seen
}

// sourceOffset splits a source_event_id, topic/partition/offset.
func sourceOffset(t *testing.T, id string) (partition int32, offset int64) {
	t.Helper()
	parts := strings.Split(id, "/")
	if len(parts) != 3 {
		t.Fatalf("source_event_id %q is not topic/partition/offset", id)
	}
	p, err1 := strconv.ParseInt(parts[1], 10, 32)
	o, err2 := strconv.ParseInt(parts[2], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("source_event_id %q is not topic/partition/offset", id)
	}
	return int32(p), o
}

// waitForDistinct waits until topic's notification-sent records cover want
// distinct events, reading the broker's offsets between full reads.
func waitForDistinct(t *testing.T, brokers []string, topic string, want int, timeout time.Duration) (total, distinct int) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if count(t, brokers, topic) >= int64(want) {
			if total, distinct = tallySent(t, brokers, topic); distinct >= want {
				return total, distinct
			}
		}
		if time.Now().After(deadline) {
			total, distinct = tallySent(t, brokers, topic)
			t.Fatalf("after %s, %s covers %d distinct events in %d records; want %d", timeout, topic, distinct, total, want)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// writeConfig writes the config file of `eventrouter run` processes: the
// brokers come from the environment (startProcess), and the ledger from
// ledger, or, when that is empty, from each process's own
// EVENTROUTER_TEST_LEDGER.
func writeConfig(t *testing.T, r route, ledger, extra string) string {
	t.Helper()
	if ledger == "" {
		ledger = "${EVENTROUTER_TEST_LEDGER}"
	}
	path := filepath.Join(t.TempDir(), "eventrouter.yaml")
	raw := fmt.Sprintf(`
kafka:
  brokers: [unused:9092]
ledger:
  path: %s
log:
  level: debug
%s%s`, ledger, r.yaml(), extra)
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func produceEvents(t *testing.T, brokers []string, topic string, from, to int) {
	t.Helper()
	const batch = 500
	for i := from; i < to; i += batch {
		var recs []kafkatest.Record
		for j := i; j < min(i+batch, to); j++ {
			recs = append(recs, event(j, fmt.Sprintf("user%d@example.com", j)))
		}
		kafkatest.Produce(t, brokers, topic, recs...)
	}
}

// TestScaleOutSurvivesSIGKILL runs three daemons in one consumer group on a
// six-partition topic, kills one with SIGKILL mid-stream, and checks that
// every event was still handled, reporting the duplicates.
func TestScaleOutSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three processes and sends 10,000 events")
	}
	bin := buildBinary(t)
	kafkatest.Each(t, func(t *testing.T, k kafkatest.Target) {
		const events = 10_000
		r := newRoute()
		kafkatest.CreateTopic(t, k.Brokers, r.in, 6)
		kafkatest.CreateTopic(t, k.Brokers, r.out, 6)
		path := writeConfig(t, r, "", "")

		procs := []*process{
			startProcess(t, bin, path, k.Brokers),
			startProcess(t, bin, path, k.Brokers),
			startProcess(t, bin, path, k.Brokers),
		}
		// Registered after the processes, so it runs while they are alive.
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("at failure:\n%s", kafkatest.GroupReport(k.Brokers, r.group, r.in))
			}
		})
		// The stream starts once all three have joined, so the kill lands
		// mid-stream in a settled group. The embedded broker (kfake) never
		// expires a member that dies while the broker holds its JoinGroup:
		// it starts the session timer only once the join's answer is
		// delivered. Apache Kafka expires such a member after
		// session_timeout; see the README's limits of the embedded broker.
		waitFor(t, 2*time.Minute, "three processes in a stable group", func() bool {
			return kafkatest.GroupStable(k.Brokers, r.group, r.in, len(procs))
		})
		// Half the events first, the kill once a third are handled, the
		// rest after it: the kill lands mid-stream however fast the group
		// handles them.
		victim := procs[0]
		produceEvents(t, k.Brokers, r.in, 0, events/2)
		waitFor(t, 3*time.Minute, "a third of the events", func() bool { return count(t, k.Brokers, r.out) >= events/3 })
		victim.signal(syscall.SIGKILL)
		victim.done <- <-victim.done
		// Nobody else commits the victim's partitions before the broker
		// expires it (session_timeout): what is committed now is what it
		// committed.
		committedAtKill := map[int32]int64{}
		for p := int32(0); p < 6; p++ {
			committedAtKill[p] = committed(t, k.Brokers, r.group, r.in, p)
		}
		sentAtKill := sentSources(t, k.Brokers, r.out)
		atKill := len(sentAtKill)
		// Handled but not committed when the process died: the work a
		// SIGKILL can repeat.
		uncommitted := 0
		for id := range sentAtKill {
			if p, o := sourceOffset(t, id); o >= committedAtKill[p] {
				uncommitted++
			}
		}
		t.Logf("SIGKILL pid %d after %d of %d events; %d handled but uncommitted", victim.cmd.Process.Pid, atKill, events, uncommitted)
		produceEvents(t, k.Brokers, r.in, events/2, events)

		waitForDistinct(t, k.Brokers, r.out, events, 5*time.Minute)
		for _, p := range procs[1:] {
			if err := p.stop(t); err != nil {
				t.Errorf("SIGTERM: %v", err)
			}
		}
		sent := sentSources(t, k.Brokers, r.out)
		total, distinct := tallySent(t, k.Brokers, r.out)
		if distinct != events {
			t.Errorf("%d distinct events handled; want %d", distinct, events)
		}
		// The bound of at-least-once: only records at or past an offset the
		// victim had not committed come twice, and no more of them than it
		// had handled past its commits, plus those in flight (at most
		// max_in_flight, 256) whose notification-sent was on its way to the
		// broker when it died.
		for id, n := range sent {
			if n < 2 {
				continue
			}
			if p, o := sourceOffset(t, id); o < committedAtKill[p] {
				t.Errorf("event %s handled %d times; want once: it was committed (partition %d at %d) before the kill", id, n, p, committedAtKill[p])
			}
		}
		if dups := total - distinct; dups > uncommitted+256 {
			t.Errorf("%d duplicates; want at most %d, the events handled but uncommitted at the kill plus max_in_flight", dups, uncommitted+256)
		}
		fmt.Printf("scale-out on %s: 3 processes, 6 partitions, %d events, SIGKILL after %d (%d uncommitted): %d handled, %d distinct, %d duplicates\n",
			k.Name, events, atKill, uncommitted, total, distinct, total-distinct)
		if n := count(t, k.Brokers, r.poison); n != 0 {
			t.Errorf("poison topic holds %d records; want 0", n)
		}
	})
}

// TestBrokerRestartMidStream stops the broker while the daemon consumes and
// starts it again: the daemon reconnects by itself and loses nothing.
func TestBrokerRestartMidStream(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts the broker")
	}
	t.Run("embedded", func(t *testing.T) {
		b := kafkatest.NewRestartable(t)
		testBrokerRestart(t, []string{b.Addr()}, b.Stop, b.Start)
	})
	t.Run("kafka", func(t *testing.T) {
		brokers, stop, start := realBrokerControl(t)
		testBrokerRestart(t, brokers, stop, start)
	})
}

func testBrokerRestart(t *testing.T, brokers []string, stopBroker, startBroker func()) {
	const events = 400
	r := newRoute()
	kafkatest.CreateTopic(t, brokers, r.out, 1)
	cfg := testConfig(t, brokers, r, "")
	notifier := &recorder{}
	d := startDaemon(t, cfg, app.Options{Notifier: notifier})
	produceEvents(t, brokers, r.in, 0, events/2)
	waitForDistinct(t, brokers, r.out, events/2, consumeTimeout)

	stopBroker()
	time.Sleep(3 * time.Second) // the daemon notices and keeps trying
	startBroker()
	// The producer gives up after a few retries; a restarted broker
	// elects its partitions' leaders first (count waits for that).
	count(t, brokers, r.in)
	count(t, brokers, r.out)

	produceEvents(t, brokers, r.in, events/2, events)
	waitForDistinct(t, brokers, r.out, events, 3*time.Minute)
	if err := d.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	total, distinct := tallySent(t, brokers, r.out)
	if distinct != events {
		t.Errorf("%d distinct events handled across the broker restart; want %d", distinct, events)
	}
	// Offsets marked in the last auto-commit interval before the broker
	// went away are not committed, so those events come again.
	fmt.Printf("broker restart: %d events, %d notification-sent, %d distinct, %d duplicates\n",
		events, total, distinct, total-distinct)
}
