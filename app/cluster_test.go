package app_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/testkit/kafkatest"
	"github.com/eventrouter/eventrouter/testkit/mailtest"
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

// pacedProducer writes events from a first user ID on at a steady rate,
// as a User Service does, in the background, until Stop. It is set as a
// producer that must lose nothing through a failover is: acks=all,
// idempotent, and retrying for as long as the test runs.
type pacedProducer struct {
	mu       sync.Mutex
	sent     int
	acked    int
	failed   int
	err      error
	stopping bool
	// answered is closed once stopping and every record sent has its
	// answer.
	answered chan struct{}
	once     sync.Once
	stop     chan struct{}
	// abort ends the wait for answers, when the test gives up.
	abort   chan struct{}
	aborted sync.Once
	done    chan struct{}
	closed  sync.Once
}

// check closes answered when it is time; p.mu is held.
func (p *pacedProducer) check() {
	if p.stopping && p.acked+p.failed == p.sent {
		p.once.Do(func() { close(p.answered) })
	}
}

func producePaced(t *testing.T, brokers []string, topic string, from, perSecond int) *pacedProducer {
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
	pp := &pacedProducer{stop: make(chan struct{}), abort: make(chan struct{}), done: make(chan struct{}), answered: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range p.Successes() {
			pp.mu.Lock()
			pp.acked++
			pp.check()
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
			pp.check()
			pp.mu.Unlock()
		}
	}()
	go func() {
		defer close(pp.done)
		defer wg.Wait()
		defer p.AsyncClose()
		tick := time.NewTicker(time.Second / time.Duration(perSecond/10))
		defer tick.Stop()
		for i := from; ; {
			select {
			case <-pp.stop:
				// Closing refuses the records still being retried: close
				// once each has its answer.
				pp.mu.Lock()
				pp.stopping = true
				pp.check()
				pp.mu.Unlock()
				select {
				case <-pp.answered:
				case <-pp.abort:
				}
				return
			case <-tick.C:
			}
			for j := 0; j < 10; j, i = j+1, i+1 {
				ev := event(i, userEmail(i))
				select {
				case p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.ByteEncoder(ev.Key), Value: sarama.ByteEncoder(ev.Value)}:
					pp.mu.Lock()
					pp.sent++
					pp.mu.Unlock()
				case <-pp.stop:
					j = 10
				}
			}
		}
	}()
	t.Cleanup(func() {
		pp.closed.Do(func() { close(pp.stop) })
		if t.Failed() {
			// The brokers may be down: the answers may never come.
			pp.aborted.Do(func() { close(pp.abort) })
		}
		select {
		case <-pp.done:
		case <-time.After(30 * time.Second):
			pp.aborted.Do(func() { close(pp.abort) })
			t.Errorf("the producer still had records without an answer 30 s after the test")
		}
	})
	return pp
}

// Stop stops producing, waits until every record sent has its answer, and
// returns how many there were. It fails the test if the producer gave up
// on one.
func (p *pacedProducer) Stop(t *testing.T) int {
	t.Helper()
	p.closed.Do(func() { close(p.stop) })
	select {
	case <-p.done:
	case <-time.After(3 * time.Minute):
		t.Fatalf("the producer's records were not all answered within 3 minutes of the stop")
	}
	acked, err := p.Acked()
	if err != nil {
		t.Fatalf("producer gave up: %v", err)
	}
	return acked
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
	// The last samples at or before each end.
	before := sort.Search(len(p.at), func(i int) bool { return p.at[i].After(at.Add(-window)) }) - 1
	last := sort.Search(len(p.at), func(i int) bool { return p.at[i].After(at) }) - 1
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

// A kill is judged on 2-second windows of the handling rate, against the
// rate measured over the 5 s before it: it dropped once a window fell
// below 3/4 of that, and recovered at the first window after the drop
// from which on the rate stayed at 9/10 or more for 3 s. Where it never
// dropped, that is known only once the brokers have had their session
// timeout (9 s) and a margin to notice the crash.
const (
	rateWindow   = 2 * time.Second
	steadyFor    = 3 * time.Second
	quietAfter   = 20 * time.Second
	droppedBelow = 0.75
	recoveredAt  = 0.9
)

// recovery returns how long after the kill at k the rate was back, whether
// it dropped at all, and whether the answer is known yet.
func (p *progress) recovery(k time.Time, base float64) (took time.Duration, dropped, known bool) {
	step := 100 * time.Millisecond
	var back time.Time
	for at := k.Add(rateWindow / 2); !at.After(time.Now()); at = at.Add(step) {
		r := p.rate(at, rateWindow)
		switch {
		case r < base*droppedBelow:
			dropped, back = true, time.Time{}
		case dropped && r >= base*recoveredAt:
			if back.IsZero() {
				back = at
			}
			if at.Sub(back) >= steadyFor {
				return back.Sub(k), true, true
			}
		case dropped:
			back = time.Time{}
		}
	}
	return 0, dropped, !dropped && time.Since(k) >= quietAfter
}

// waitRecovered waits until the rate recovered after the kill at k, and
// fails the test if that took longer than within.
func (p *progress) waitRecovered(t *testing.T, k time.Time, base float64, within time.Duration) (time.Duration, bool) {
	t.Helper()
	var took time.Duration
	var dropped bool
	waitEvery(t, max(within, quietAfter)+steadyFor+rateWindow, 500*time.Millisecond, "the route's rate to recover after the kill", func() bool {
		var known bool
		took, dropped, known = p.recovery(k, base)
		return known
	})
	if took > within {
		t.Fatalf("the route's rate recovered %s after the kill; want within %s", took, within)
	}
	return took, dropped
}

// steadyRate waits until the route handles events as fast as they are
// written, over 5 s (within a tenth, with written the producer's acks
// sampled by acks), and returns that rate, at most the producer's: a kill
// is judged against it. A route that cannot keep up for 30 s fails the
// test.
func (p *progress) steadyRate(t *testing.T, acks *progress, perSecond int) float64 {
	t.Helper()
	var r float64
	waitEvery(t, 30*time.Second, 500*time.Millisecond, "the route to keep up with the producer", func() bool {
		now := time.Now()
		r = p.rate(now, 5*time.Second)
		w := acks.rate(now, 5*time.Second)
		return w > 0 && r >= 0.9*w && r <= 1.1*w
	})
	return min(r, float64(perSecond))
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

// scrape returns the series' value from /metrics, and false if the scrape
// failed or lacked it.
func scrape(t *testing.T, base, series string) (float64, bool) {
	t.Helper()
	status, body := get(t, base+"/metrics", true)
	if status != 200 {
		return 0, false
	}
	return metric(body, series)
}

// mustScrape is scrape that fails the test when the value is missing.
func mustScrape(t *testing.T, base, series string) float64 {
	t.Helper()
	var v float64
	var ok bool
	waitFor(t, 30*time.Second, "a scrape of "+series, func() bool {
		v, ok = scrape(t, base, series)
		return ok
	})
	return v
}

const (
	handledSeries  = `eventrouter_messages_handled_total{route="welcome"}`
	poisonedSeries = `eventrouter_messages_poisoned_total{route="welcome"}`
	pausedSeries   = `eventrouter_route_paused{route="welcome"}`
)

// readyAnswer is /readyz's answer.
type readyAnswer struct {
	Ready    bool              `json:"ready"`
	Checks   map[string]string `json:"checks"`
	Degraded map[string]string `json:"degraded"`
}

// readiness returns /readyz's status and answer; status 0 if it did not
// answer.
func readiness(t *testing.T, base string) (int, readyAnswer) {
	t.Helper()
	var rd readyAnswer
	status, body := get(t, base+"/readyz", true)
	if status != 0 {
		if err := json.Unmarshal([]byte(body), &rd); err != nil {
			t.Fatalf("readyz answered %d with %q: %v", status, body, err)
		}
	}
	return status, rd
}

// checkDelivered asserts that every one of n users got exactly one email
// and at least one notification-sent, and that nothing was poisoned. It
// returns the notification-sent records beyond one per user.
func checkDelivered(t *testing.T, c *kafkatest.Cluster, r route, emails func() map[string]int, n int) int {
	t.Helper()
	waitFor(t, 2*time.Minute, fmt.Sprintf("%d distinct users emailed", n), func() bool { return len(emails()) >= n })
	by := emails()
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
		total := int(count(t, c.Brokers(), r.out))
		if total < n {
			return false
		}
		sent = kafkatest.Consume(t, c.Brokers(), r.out, total, time.Minute)
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

// waitCaughtUp waits until handled is within slack of what the producer
// has written.
func waitCaughtUp(t *testing.T, producer *pacedProducer, handled func() int, slack int, within time.Duration) {
	t.Helper()
	waitFor(t, within, "the route to catch up with the producer", func() bool {
		acked, _ := producer.Acked()
		return handled() >= acked-slack
	})
}

// waitWhole waits until /readyz is ready with nothing degraded.
func waitWhole(t *testing.T, base string) {
	t.Helper()
	var rd readyAnswer
	waitFor(t, time.Minute, "/readyz ready with nothing degraded", func() bool {
		var status int
		status, rd = readiness(t, base)
		return status == 200 && len(rd.Degraded) == 0
	})
}

// TestClusterLeaderFailover streams at least 20,000 events through the
// notification route while the broker that leads most of its partitions
// is SIGKILLed, and later the group's coordinator. Nothing is lost, no
// user gets two emails, the records handled twice are bounded, and the
// route's rate recovers within a stated time after each kill.
func TestClusterLeaderFailover(t *testing.T) {
	const (
		events    = 20000
		perSecond = 300
		// recoverWithin bounds the time from a kill until the route runs
		// at the producer's rate again: the brokers' session timeout (9 s)
		// to fence the dead broker and move its leaderships, the clients'
		// metadata refresh, and for the coordinator the group's rejoin.
		recoverWithin = 45 * time.Second
		// drainWithin bounds the time from a kill until the route has
		// handled the backlog the outage left.
		drainWithin = 60 * time.Second
	)
	c := kafkatest.RealCluster(t)
	r, notifier, base := startClusterDaemon(t, c)
	emailed := notifier.Calls
	prog := track(t, emailed)
	producer := producePaced(t, c.Brokers(), r.in, 0, perSecond)
	acks := track(t, func() int { n, _ := producer.Acked(); return n })
	caughtUp := func(k time.Time) time.Duration {
		t.Helper()
		waitCaughtUp(t, producer, emailed, perSecond, drainWithin)
		return time.Since(k)
	}
	waitWhole(t, base)

	// 1. The broker that leads most of the input's partitions crashes.
	waitFor(t, time.Minute, "4,000 events handled", func() bool { return emailed() >= 4000 })
	leader, led := mostLeader(t, c, r.in)
	base1 := prog.steadyRate(t, acks, perSecond)
	killed := time.Now()
	c.Kill(leader)
	var rd readyAnswer
	waitFor(t, 30*time.Second, "/readyz to name the broker down while ready", func() bool {
		var status int
		status, rd = readiness(t, base)
		return status == 200 && strings.Contains(rd.Degraded["kafka"], "1 of 3 brokers do not answer")
	})
	t.Logf("killed broker %d, leader of %d of 6 partitions, at %d emails; readyz: %q", leader, led, emailed(), rd.Degraded["kafka"])
	took1, dropped1 := prog.waitRecovered(t, killed, base1, recoverWithin)
	drained1 := caughtUp(killed)
	c.Start(leader)
	c.WaitInSync(2 * time.Minute)
	waitWhole(t, base)

	// 2. The group's coordinator crashes.
	waitFor(t, 2*time.Minute, "12,000 events handled", func() bool { return emailed() >= 12000 })
	coordinator := c.Coordinator(r.group)
	base2 := prog.steadyRate(t, acks, perSecond)
	killed = time.Now()
	c.Kill(coordinator)
	t.Logf("killed broker %d, the group's coordinator, at %d emails", coordinator, emailed())
	took2, dropped2 := prog.waitRecovered(t, killed, base2, recoverWithin)
	drained2 := caughtUp(killed)
	c.Start(coordinator)
	c.WaitInSync(2 * time.Minute)
	waitWhole(t, base)

	waitFor(t, 2*time.Minute, fmt.Sprintf("%d events produced", events), func() bool {
		acked, _ := producer.Acked()
		return acked >= events
	})
	n := producer.Stop(t)
	extraSent := checkDelivered(t, c, r, func() map[string]int { return emailsByUser(notifier) }, n)
	handled := int(mustScrape(t, base, handledSeries))
	// A record handled but not yet committed when its partition moved is
	// handled again, and the ledger skips its email. What can be
	// uncommitted is what the route handled within one auto-commit
	// interval (1 s) plus what it had in flight (max_in_flight, 256), for
	// each of the two kills; a record retried for its notification-sent
	// publish counts once more per try.
	redelivered := handled - n
	bound := 2 * (perSecond + 256)
	if redelivered < 0 || redelivered > bound {
		t.Fatalf("got %d records handled again; want between 0 and %d", redelivered, bound)
	}
	if extraSent > bound {
		t.Fatalf("got %d notification-sent records beyond one per user; want at most %d", extraSent, bound)
	}
	t.Logf("failover: %d events, 0 lost, 0 duplicate emails, %d handled again, %d extra notification-sent", n, redelivered, extraSent)
	t.Logf("leader SIGKILL: rate dropped %v, back in %s, backlog drained in %s", dropped1, took1.Round(100*time.Millisecond), drained1.Round(100*time.Millisecond))
	t.Logf("coordinator SIGKILL: rate dropped %v, back in %s, backlog drained in %s", dropped2, took2.Round(100*time.Millisecond), drained2.Round(100*time.Millisecond))
}

// pausedFor samples the route's pause gauge and returns a func that
// returns the longest time it was 1. A failed scrape is no sample.
func pausedFor(t *testing.T, base string) func() time.Duration {
	var mu sync.Mutex
	var longest time.Duration
	var since time.Time
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			if v, ok := scrape(t, base, pausedSeries); ok {
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
			}
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
// is lost or poisoned, the route is never paused for long, and it never
// stops handling events for long.
func TestClusterRollingRestart(t *testing.T) {
	const (
		perSecond = 300
		// pauseWithin bounds one pause of the route, and one stretch with
		// no event handled: a controlled shutdown hands each partition's
		// leadership over before the broker stops, so a write waits only
		// for the clients to learn the new leader.
		pauseWithin = 15 * time.Second
	)
	c := kafkatest.RealCluster(t)
	r, notifier, base := startClusterDaemon(t, c)
	paused := pausedFor(t, base)
	prog := track(t, notifier.Calls)
	producer := producePaced(t, c.Brokers(), r.in, 0, perSecond)

	waitFor(t, time.Minute, "1,000 events handled", func() bool { return notifier.Calls() >= 1000 })
	began := time.Now()
	for n := int32(1); n <= 3; n++ {
		step := time.Now()
		c.Stop(n)
		c.Start(n)
		c.WaitInSync(2 * time.Minute)
		t.Logf("broker %d restarted and back in sync in %s, at %d emails", n, time.Since(step).Round(100*time.Millisecond), notifier.Calls())
	}
	ended := time.Now()
	waitCaughtUp(t, producer, notifier.Calls, perSecond, time.Minute)
	n := producer.Stop(t)
	extraSent := checkDelivered(t, c, r, func() map[string]int { return emailsByUser(notifier) }, n)
	longest := paused()
	stall := prog.longestStall(began, ended)
	if longest > pauseWithin {
		t.Fatalf("the route was paused for %s at once; want at most %s", longest, pauseWithin)
	}
	if stall > pauseWithin {
		t.Fatalf("no event was handled for %s during the rolling restart; want at most %s", stall, pauseWithin)
	}
	// Without a crash, nothing is handled twice: a leadership handed over
	// loses no commit and no produced record.
	if extraSent != 0 {
		t.Fatalf("got %d notification-sent records beyond one per user; want 0", extraSent)
	}
	t.Logf("rolling restart: %d events in %s, 0 lost, 0 poisoned, 0 extra notification-sent, longest pause %s, longest stall %s",
		n, ended.Sub(began).Round(100*time.Millisecond), longest.Round(100*time.Millisecond), stall.Round(100*time.Millisecond))
}

// TestClusterQuorumLost SIGKILLs two of the three brokers: the controllers
// lose their quorum and no partition has two in-sync replicas that answer,
// so nothing can be written. An `eventrouter run` process waits: the
// producer's events stop, its route handles and poisons nothing, and
// /readyz says why it is not ready. Then the daemon is SIGKILLed too, one
// broker is started, and a new daemon handles every event: had the first
// acked a record early, the second would never see it, and its user would
// get no notification-sent.
func TestClusterQuorumLost(t *testing.T) {
	c := kafkatest.RealCluster(t)
	bin := buildBinary(t)
	mail := mailtest.Start(t)
	r := clusterRoute(t, c)
	path := writeConfig(t, r, filepath.Join(t.TempDir(), "ledger.db"), smtpYAML(mail)+opsYAML)
	start := func() (*process, string) {
		t.Helper()
		p := startProcess(t, bin, path, c.Brokers(), "TEST_OPS_TOKEN="+opsToken)
		var m []string
		waitFor(t, time.Minute, "the ops server", func() bool {
			m = opsAddr.FindStringSubmatch(p.logs.String())
			return m != nil
		})
		return p, "http://" + m[1]
	}
	p, base := start()
	emails := func() map[string]int { return emailsPerUser(mail) }
	produceEvents(t, c.Brokers(), r.in, 0, 500)
	waitFor(t, time.Minute, "500 events handled", func() bool { return mail.Total() >= 500 })
	waitWhole(t, base)

	producer := producePaced(t, c.Brokers(), r.in, 500, 300)
	waitFor(t, time.Minute, "600 events handled", func() bool { return mail.Total() >= 600 })
	c.Kill(2)
	c.Kill(3)
	down := time.Now()
	var why string
	waitFor(t, 30*time.Second, "/readyz to say why the daemon is not ready", func() bool {
		status, rd := readiness(t, base)
		why = rd.Checks["kafka"]
		return status == 503 && strings.Contains(why, "2 of 3 brokers do not answer") &&
			(strings.Contains(why, "without a leader that answers") || strings.Contains(why, "fewer in-sync replicas"))
	})
	t.Logf("readyz with 2 of 3 brokers down: %q", why)

	// Once the clients have noticed, nothing moves: no event is written,
	// none handled, none poisoned.
	waitFor(t, time.Minute, "10 s with two brokers down", func() bool { return time.Since(down) > 10*time.Second })
	handled := mustScrape(t, base, handledSeries)
	acked, _ := producer.Acked()
	waitFor(t, time.Minute, "20 s with two brokers down", func() bool { return time.Since(down) > 20*time.Second })
	if got := mustScrape(t, base, handledSeries); got != handled {
		t.Fatalf("got %v records handled between 10 s and 20 s after the quorum was lost; want 0", got-handled)
	}
	if got, _ := producer.Acked(); got != acked {
		t.Fatalf("got %d events written between 10 s and 20 s after the quorum was lost; want 0", got-acked)
	}
	if v := mustScrape(t, base, poisonedSeries); v != 0 {
		t.Fatalf("got %v records poisoned while the brokers were down; want 0", v)
	}
	p.signal(syscall.SIGKILL)
	// Put back for the process's cleanup.
	p.done <- <-p.done

	back := time.Now()
	c.Start(2)
	_, base = start()
	waitFor(t, time.Minute, "/readyz to be ready again", func() bool {
		status, _ := readiness(t, base)
		return status == 200
	})
	t.Logf("a new daemon ready %s after broker 2 was started", time.Since(back).Round(100*time.Millisecond))
	waitFor(t, time.Minute, "200 more events written", func() bool {
		got, _ := producer.Acked()
		return got >= acked+200
	})
	n := producer.Stop(t)
	extraSent := checkDelivered(t, c, r, emails, 500+n)
	// A notification-sent the killed daemon was writing when the quorum
	// went may have reached the surviving leader's log, to count once the
	// quorum was back; the new daemon writes it again, with the same UUID
	// for consumers to drop. Only records in flight can be such, at most
	// max_in_flight (256).
	if extraSent > 256 {
		t.Fatalf("got %d notification-sent records beyond one per user; want at most 256", extraSent)
	}
	t.Logf("quorum lost: %d events, 0 lost, 0 poisoned, 0 duplicate emails, %d extra notification-sent", 500+n, extraSent)
}
