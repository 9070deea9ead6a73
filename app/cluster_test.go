package app_test

import (
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
)

// The cluster scenarios run once, on the three-node cluster of
// scripts/kafka.sh (make test runs them after the rest of the suite).
// Each topic has 6 partitions on all three brokers; the brokers require
// two in-sync replicas for a write.

// clusterRoute creates a notification route's topics on the cluster,
// replicated three times.
func clusterRoute(t *testing.T, c *kafkatest.Cluster) route {
	t.Helper()
	r := newRoute()
	kafkatest.CreateReplicatedTopic(t, c.Brokers(), r.in, 6, 3)
	kafkatest.CreateReplicatedTopic(t, c.Brokers(), r.out, 6, 3)
	kafkatest.CreateReplicatedTopic(t, c.Brokers(), r.poison, 1, 3)
	return r
}

// startClusterDaemon runs a daemon with the ops server and a recording
// notifier on a notification route of its own on the cluster, and returns
// the route, the notifier and the ops server's URL.
func startClusterDaemon(t *testing.T, c *kafkatest.Cluster) (route, *recorder, string) {
	t.Helper()
	r := clusterRoute(t, c)
	notifier := &recorder{}
	d := startDaemon(t, testConfig(t, c.Brokers(), r, opsYAML), opsOptions(app.Options{Notifier: notifier}))
	return r, notifier, "http://" + d.OpsAddr()
}

// pacedProducer writes events 0..n-1 to a topic at a steady rate, as a
// User Service does, in the background. It is configured as a producer
// that must lose nothing through a failover is: acks=all, idempotent, and
// retrying for as long as the test runs.
type pacedProducer struct {
	mu     sync.Mutex
	acked  int
	failed int
	err    error
	done   chan struct{}
}

// answered returns how many of the records sent the brokers acked or the
// producer gave up on.
func (p *pacedProducer) answered() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked + p.failed
}

func producePaced(t *testing.T, brokers []string, topic string, from, to int, perSecond int) *pacedProducer {
	t.Helper()
	cfg := kafkatest.Config()
	cfg.ClientID = "user-service"
	cfg.Producer.Idempotent = true
	cfg.Net.MaxOpenRequests = 1
	cfg.Producer.Retry.Max = 1000
	cfg.Producer.Retry.Backoff = 200 * time.Millisecond
	cfg.Producer.Return.Errors = true
	cfg.Metadata.Retry.Max = 1000
	p, err := sarama.NewAsyncProducer(brokers, cfg)
	if err != nil {
		t.Fatalf("connect producer to %v: %v", brokers, err)
	}
	pp := &pacedProducer{done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range p.Successes() {
			pp.mu.Lock()
			pp.acked++
			pp.mu.Unlock()
		}
	}()
	go func() {
		defer wg.Done()
		for e := range p.Errors() {
			pp.mu.Lock()
			pp.failed++
			if pp.err == nil {
				pp.err = e.Err
			}
			pp.mu.Unlock()
		}
	}()
	stop := make(chan struct{})
	go func() {
		defer close(pp.done)
		tick := time.NewTicker(time.Second / time.Duration(perSecond/10))
		defer tick.Stop()
	loop:
		for i := from; i < to; {
			select {
			case <-stop:
				break loop
			case <-tick.C:
			}
			for j := 0; j < 10 && i < to; j, i = j+1, i+1 {
				ev := event(i, userEmail(i))
				p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.ByteEncoder(ev.Key), Value: sarama.ByteEncoder(ev.Value)}
			}
		}
		// Closing refuses the records still being retried: close once
		// each has its answer.
		for pp.answered() < to-from {
			select {
			case <-stop:
				p.AsyncClose()
				wg.Wait()
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
		p.AsyncClose()
		wg.Wait()
	}()
	t.Cleanup(func() {
		close(stop)
		<-pp.done
	})
	return pp
}

// Acked returns how many events the brokers acknowledged, and the first
// error the producer gave up with.
func (p *pacedProducer) Acked() (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.acked, p.err
}

// progress samples a count every 100ms, to tell how fast it grew when.
type progress struct {
	mu      sync.Mutex
	at      []time.Time
	n       []int
	stopped chan struct{}
}

func track(t *testing.T, count func() int) *progress {
	p := &progress{stopped: make(chan struct{})}
	stop := make(chan struct{})
	go func() {
		defer close(p.stopped)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			n := count()
			p.mu.Lock()
			p.at, p.n = append(p.at, time.Now()), append(p.n, n)
			p.mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-p.stopped
	})
	return p
}

// rate returns how many per second the count grew in the window before at.
func (p *progress) rate(at time.Time, window time.Duration) float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	before, last := -1, -1
	for i, ts := range p.at {
		if !ts.After(at.Add(-window)) {
			before = i
		}
		if !ts.After(at) {
			last = i
		}
	}
	if before < 0 || last <= before {
		return 0
	}
	return float64(p.n[last]-p.n[before]) / p.at[last].Sub(p.at[before]).Seconds()
}

// longestStall returns the longest time between from and to in which the
// count did not grow.
func (p *progress) longestStall(from, to time.Time) time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var longest time.Duration
	grew := from
	for i := 1; i < len(p.at); i++ {
		if p.at[i].Before(from) || p.at[i].After(to) {
			continue
		}
		if p.n[i] > p.n[i-1] {
			longest = max(longest, p.at[i].Sub(grew))
			grew = p.at[i]
		}
	}
	return max(longest, to.Sub(grew))
}

// recovery returns how long after a kill at k the rate, having dropped
// below half of base, was back at half of base or more; 0 if it never
// dropped; and false if it has not recovered by now.
func (p *progress) recovery(k time.Time, base float64) (time.Duration, bool) {
	dropped := false
	for at := k.Add(time.Second); !at.After(time.Now()); at = at.Add(100 * time.Millisecond) {
		r := p.rate(at, time.Second)
		switch {
		case r < base/2:
			dropped = true
		case dropped:
			return at.Sub(k), true
		}
	}
	return 0, !dropped
}

// waitRecovered waits until the rate recovered after the kill at k.
func (p *progress) waitRecovered(t *testing.T, k time.Time, base float64, within time.Duration) time.Duration {
	t.Helper()
	var took time.Duration
	waitFor(t, within+2*time.Second, "throughput to recover after the kill", func() bool {
		var ok bool
		took, ok = p.recovery(k, base)
		return ok && time.Since(k) > 2*time.Second
	})
	if took > within {
		t.Fatalf("throughput recovered %s after the kill; want within %s", took, within)
	}
	return took
}

// mostLeader returns the broker that leads most of topic's partitions.
func mostLeader(t *testing.T, c *kafkatest.Cluster, topic string) (int32, int) {
	t.Helper()
	var best int32
	most := 0
	for id, n := range c.Leaders(topic) {
		if n > most || n == most && id < best {
			best, most = id, n
		}
	}
	return best, most
}

// emailsByUser counts the emails the recorder sent to each address.
func emailsByUser(n *recorder) map[string]int {
	by := map[string]int{}
	for _, m := range n.Sent() {
		by[m.Email]++
	}
	return by
}

// handledTotal reads the route's handled counter from /metrics.
func handledTotal(t *testing.T, base string) int {
	t.Helper()
	_, body := get(t, base+"/metrics", true)
	v, _ := metric(body, `eventrouter_messages_handled_total{route="welcome"}`)
	return int(v)
}

// readiness returns /readyz's status and answer.
func readiness(t *testing.T, base string) (int, struct {
	Ready    bool              `json:"ready"`
	Checks   map[string]string `json:"checks"`
	Degraded map[string]string `json:"degraded"`
}) {
	t.Helper()
	var rd struct {
		Ready    bool              `json:"ready"`
		Checks   map[string]string `json:"checks"`
		Degraded map[string]string `json:"degraded"`
	}
	status, body := get(t, base+"/readyz", true)
	if status != 0 {
		if err := json.Unmarshal([]byte(body), &rd); err != nil {
			t.Fatalf("readyz answered %d with %q: %v", status, body, err)
		}
	}
	return status, rd
}

// checkDelivered asserts that every one of n events got exactly one email
// and at least one notification-sent, and that nothing was poisoned. It
// returns the notification-sent records beyond one per user.
func checkDelivered(t *testing.T, c *kafkatest.Cluster, r route, notifier *recorder, n int) int {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d distinct users emailed", n), func() bool { return len(emailsByUser(notifier)) >= n })
	by := emailsByUser(notifier)
	if len(by) != n {
		t.Fatalf("got emails to %d users; want %d", len(by), n)
	}
	for i := 0; i < n; i++ {
		if got := by[userEmail(i)]; got != 1 {
			t.Fatalf("got %d emails to %s; want 1", got, userEmail(i))
		}
	}
	var sent []*sarama.ConsumerMessage
	waitFor(t, time.Minute, "a notification-sent for every user", func() bool {
		if count(t, c.Brokers(), r.out) < int64(n) {
			return false
		}
		sent = kafkatest.Consume(t, c.Brokers(), r.out, int(count(t, c.Brokers(), r.out)), time.Minute)
		users := map[string]bool{}
		for _, m := range sent {
			users[string(m.Key)] = true
		}
		return len(users) == n
	})
	if got := count(t, c.Brokers(), r.poison); got != 0 {
		t.Fatalf("got %d poisoned records; want 0", got)
	}
	return len(sent) - n
}

// TestClusterLeaderFailover streams 20,000 events through the notification
// route while the broker that leads most of its partitions is SIGKILLed,
// and later the group's coordinator. Nothing is lost, no user gets two
// emails, the records handled twice are bounded, and the route's
// throughput recovers within a stated time after each kill.
func TestClusterLeaderFailover(t *testing.T) {
	const (
		events    = 20000
		perSecond = 300
		// recoverWithin bounds the time from a kill until the route runs
		// at half its rate again: the brokers' session timeout (9 s) to
		// fence the dead broker and move its leaderships, the clients'
		// metadata refresh, and for the coordinator the group's rejoin.
		recoverWithin = 45 * time.Second
	)
	c := kafkatest.RealCluster(t)
	r, notifier, base := startClusterDaemon(t, c)
	emailed := func() int { return notifier.Calls() }
	prog := track(t, emailed)
	producer := producePaced(t, c.Brokers(), r.in, 0, events, perSecond)

	// 1. The broker that leads most of the input's partitions crashes.
	waitFor(t, time.Minute, "4,000 events handled", func() bool { return emailed() >= 4000 })
	leader, led := mostLeader(t, c, r.in)
	killed := time.Now()
	baseRate := prog.rate(killed, 3*time.Second)
	c.Kill(leader)
	t.Logf("killed broker %d, leader of %d of 6 partitions, at %d emails (%.0f/s)", leader, led, emailed(), baseRate)
	waitFor(t, 30*time.Second, "/readyz to report the broker down", func() bool {
		status, rd := readiness(t, base)
		return status == 200 && rd.Degraded["kafka"] != ""
	})
	_, rd := readiness(t, base)
	t.Logf("readyz with broker %d down: %q", leader, rd.Degraded["kafka"])
	took1 := prog.waitRecovered(t, killed, baseRate, recoverWithin)
	t.Logf("throughput recovered %s after the leader's SIGKILL", took1.Round(100*time.Millisecond))
	c.Start(leader)
	c.WaitInSync(2 * time.Minute)

	// 2. The group's coordinator crashes.
	waitFor(t, 2*time.Minute, "12,000 events handled", func() bool { return emailed() >= 12000 })
	coordinator := c.Coordinator(r.group)
	killed = time.Now()
	baseRate = prog.rate(killed, 3*time.Second)
	if acked, _ := producer.Acked(); acked >= events {
		t.Fatalf("the producer finished before the coordinator was killed; the kill must come mid-stream")
	}
	c.Kill(coordinator)
	t.Logf("killed broker %d, the group's coordinator, at %d emails (%.0f/s)", coordinator, emailed(), baseRate)
	took2 := prog.waitRecovered(t, killed, baseRate, recoverWithin)
	t.Logf("throughput recovered %s after the coordinator's SIGKILL", took2.Round(100*time.Millisecond))
	c.Start(coordinator)

	waitFor(t, 3*time.Minute, "the producer to finish", func() bool {
		acked, err := producer.Acked()
		if err != nil {
			t.Fatalf("producer gave up: %v", err)
		}
		return acked == events
	})
	extraSent := checkDelivered(t, c, r, notifier, events)
	handled := handledTotal(t, base)
	// A record handled but not yet committed when its partition moved is
	// handled again, and the ledger skips its email. What can be
	// uncommitted is what the route handled within one auto-commit
	// interval (1 s) plus what it had in flight, for each of the two kills.
	redelivered := handled - events
	bound := 2 * (perSecond*2 + 256)
	if redelivered < 0 || redelivered > bound {
		t.Fatalf("got %d records handled again; want between 0 and %d", redelivered, bound)
	}
	if extraSent > bound {
		t.Fatalf("got %d notification-sent records beyond one per user; want at most %d", extraSent, bound)
	}
	t.Logf("failover: %d events, 0 lost, 0 duplicate emails, %d handled again, %d extra notification-sent; recovery %s (leader), %s (coordinator)",
		events, redelivered, extraSent, took1.Round(100*time.Millisecond), took2.Round(100*time.Millisecond))
}

// pausedFor samples the route's pause gauge and returns the longest time
// it was 1.
func pausedFor(t *testing.T, base string) func() time.Duration {
	var mu sync.Mutex
	var longest time.Duration
	var since time.Time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			_, body := get(t, base+"/metrics", true)
			v, _ := metric(body, `eventrouter_route_paused{route="welcome"}`)
			now := time.Now()
			mu.Lock()
			switch {
			case v == 1 && since.IsZero():
				since = now
			case v != 1 && !since.IsZero():
				longest = max(longest, now.Sub(since))
				since = time.Time{}
			}
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	finish := func() time.Duration {
		once.Do(func() {
			close(stop)
			<-done
		})
		mu.Lock()
		defer mu.Unlock()
		if !since.IsZero() {
			return max(longest, time.Since(since))
		}
		return longest
	}
	t.Cleanup(func() { finish() })
	return finish
}

// TestClusterRollingRestart restarts the three brokers one after the
// other, as an upgrade does, while events stream through the route: none
// is lost or poisoned, and the route is never paused for long.
func TestClusterRollingRestart(t *testing.T) {
	const (
		events    = 18000
		perSecond = 300
		// pauseWithin bounds one pause of the route: a controlled shutdown
		// hands each partition's leadership over before the broker stops,
		// so a write waits only for the clients to learn the new leader.
		pauseWithin = 15 * time.Second
	)
	c := kafkatest.RealCluster(t)
	r, notifier, base := startClusterDaemon(t, c)
	paused := pausedFor(t, base)
	producer := producePaced(t, c.Brokers(), r.in, 0, events, perSecond)

	prog := track(t, notifier.Calls)
	waitFor(t, time.Minute, "1,000 events handled", func() bool { return notifier.Calls() >= 1000 })
	began := time.Now()
	for n := int32(1); n <= 3; n++ {
		if acked, _ := producer.Acked(); acked >= events {
			t.Fatalf("the producer finished before broker %d was restarted; the restarts must come mid-stream", n)
		}
		step := time.Now()
		c.Stop(n)
		c.Start(n)
		c.WaitInSync(2 * time.Minute)
		t.Logf("broker %d restarted and back in sync in %s, at %d emails", n, time.Since(step).Round(100*time.Millisecond), notifier.Calls())
	}
	// While events keep coming, the route may stop handling them only for
	// as long as the clients take to follow a leadership to its new broker.
	stall := prog.longestStall(began, time.Now())
	if stall > pauseWithin {
		t.Fatalf("no event was handled for %s during the rolling restart; want at most %s", stall, pauseWithin)
	}
	waitFor(t, 3*time.Minute, "the producer to finish", func() bool {
		acked, err := producer.Acked()
		if err != nil {
			t.Fatalf("producer gave up: %v", err)
		}
		return acked == events
	})
	extraSent := checkDelivered(t, c, r, notifier, events)
	longest := paused()
	if longest > pauseWithin {
		t.Fatalf("the route was paused for %s at once; want at most %s", longest, pauseWithin)
	}
	t.Logf("rolling restart: %d events, 0 lost, 0 poisoned, %d extra notification-sent, longest pause %s, longest stall %s",
		events, extraSent, longest.Round(50*time.Millisecond), stall.Round(100*time.Millisecond))
}

// TestClusterQuorumLost stops two of the three brokers: the controllers
// lose their quorum and no partition has two in-sync replicas, so nothing
// can be written. The route waits: it poisons nothing and acks nothing
// early, /readyz says why it is not ready, and every event is handled
// once a broker is back.
func TestClusterQuorumLost(t *testing.T) {
	c := kafkatest.RealCluster(t)
	r, notifier, base := startClusterDaemon(t, c)
	produceEvents(t, c.Brokers(), r.in, 0, 500)
	waitFor(t, time.Minute, "500 events handled", func() bool { return notifier.Calls() >= 500 })
	if status, rd := readiness(t, base); status != 200 {
		t.Fatalf("readyz with the whole cluster: got %d %v; want 200", status, rd.Checks)
	}

	// Events keep coming while two brokers are down; the producer waits.
	producer := producePaced(t, c.Brokers(), r.in, 500, 2000, 300)
	waitFor(t, time.Minute, "600 events handled", func() bool { return notifier.Calls() >= 600 })
	c.Kill(2)
	c.Kill(3)
	down := time.Now()
	var why string
	waitFor(t, 30*time.Second, "/readyz to say why the daemon is not ready", func() bool {
		status, rd := readiness(t, base)
		why = rd.Checks["kafka"]
		return status == 503 && why != "ok" && why != ""
	})
	t.Logf("readyz with 2 of 3 brokers down: %q", why)
	// The route waits: no record is acked while nothing can be written
	// (its notification-sent could not be), and nothing is poisoned.
	waitFor(t, time.Minute, "10 s with two brokers down", func() bool { return time.Since(down) > 10*time.Second })
	handled := handledTotal(t, base)
	waitFor(t, time.Minute, "20 s with two brokers down", func() bool { return time.Since(down) > 20*time.Second })
	if got := handledTotal(t, base); got != handled {
		t.Fatalf("got %d records handled between 10 s and 20 s after the quorum was lost; want 0", got-handled)
	}
	_, body := get(t, base+"/metrics", true)
	if v, _ := metric(body, `eventrouter_messages_poisoned_total{route="welcome"}`); v != 0 {
		t.Fatalf("got %v records poisoned while the brokers were down; want 0", v)
	}

	back := time.Now()
	c.Start(2)
	waitFor(t, time.Minute, "/readyz to be ready again", func() bool {
		status, _ := readiness(t, base)
		return status == 200
	})
	t.Logf("ready again %s after broker 2 was started", time.Since(back).Round(100*time.Millisecond))
	waitFor(t, 3*time.Minute, "the producer to finish", func() bool {
		acked, err := producer.Acked()
		if err != nil {
			t.Fatalf("producer gave up: %v", err)
		}
		return acked == 1500
	})
	checkDelivered(t, c, r, notifier, 2000)
}
