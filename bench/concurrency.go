package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/notify"
)

// ioLatency is what the benchmark notifier takes per send: the Confluent
// Parallel Consumer tutorial's 20 ms per record.
const ioLatency = 20 * time.Millisecond

// sleepNotifier is the benchmark's I/O-bound notifier: every send takes a
// fixed time, as a remote API would.
type sleepNotifier struct{ d time.Duration }

func (sleepNotifier) Channel() string { return "bench" }

func (n sleepNotifier) Send(ctx context.Context, _ notify.Message) error {
	t := time.NewTimer(n.d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// daemonRun says how startDaemon runs the in-process daemon.
type daemonRun struct {
	handler     string
	ordering    string
	maxInFlight int
	// notifier replaces the configured one ("none") when set.
	notifier sleepNotifier
	// smtp, when set, configures the SMTP notifier instead.
	smtp *config.SMTP
}

// ioBound measures the notification route with a notifier that takes
// ioLatency per send, on a topic of new users, in one ordering mode.
func (b *bench) ioBound(ctx context.Context, ordering string, users int) (float64, error) {
	in, err := b.topic("io-" + ordering)
	if err != nil {
		return 0, err
	}
	if _, err := b.fill(in, makeValues(users, b.o.size)); err != nil {
		return 0, err
	}
	out, err := b.topic("io-sent")
	if err != nil {
		return 0, err
	}
	return b.handleAll(ctx, in, out, users, daemonRun{handler: "notification", ordering: ordering, notifier: sleepNotifier{ioLatency}})
}

// smtpBound measures welcome emails per second into Mailpit, in one
// ordering mode.
func (b *bench) smtpBound(ctx context.Context, ordering string, users int) (float64, error) {
	host, port, err := b.mailpit(ctx)
	if err != nil {
		return 0, err
	}
	in, err := b.topic("smtp-" + ordering)
	if err != nil {
		return 0, err
	}
	if _, err := b.fill(in, makeValues(users, b.o.size)); err != nil {
		return 0, err
	}
	out, err := b.topic("smtp-sent")
	if err != nil {
		return 0, err
	}
	smtp := config.Defaults().Notifier.SMTP
	smtp.Host, smtp.Port, smtp.TLS, smtp.From = host, port, "none", "Bench <bench@example.com>"
	smtp.MaxConnections = 16
	return b.handleAll(ctx, in, out, users, daemonRun{handler: "notification", ordering: ordering, smtp: &smtp})
}

// handleAll runs an in-process daemon on in until out holds n records and
// returns the rate between the first and the last of them.
func (b *bench) handleAll(ctx context.Context, in, out string, n int, run daemonRun) (float64, error) {
	stop, err := b.startDaemon(ctx, in, out, run, nil)
	if err != nil {
		return 0, err
	}
	client, err := sarama.NewClient(b.brokers, b.saramaConfig())
	if err != nil {
		_ = stop()
		return 0, err
	}
	defer client.Close()
	err = waitUntil(ctx, 15*time.Minute, func() bool { return records(client, out) >= int64(n) })
	if stopErr := stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return 0, err
	}
	first, last, err := timeSpan(client, out)
	if err != nil {
		return 0, err
	}
	return float64(n) / last.Sub(first).Seconds(), nil
}

// mailpit starts Mailpit (built by scripts/mailpit.sh) once, on free
// ports, for the rest of the benchmark.
func (b *bench) mailpit(ctx context.Context) (string, int, error) {
	b.mailOnce.Do(func() {
		path, err := exec.CommandContext(ctx, filepath.Join(b.root, "scripts", "mailpit.sh")).Output()
		if err != nil {
			b.mailErr = fmt.Errorf("build mailpit: %w", err)
			return
		}
		smtpPort, err1 := freePort()
		httpPort, err2 := freePort()
		if err1 != nil || err2 != nil {
			b.mailErr = fmt.Errorf("free ports: %v %v", err1, err2)
			return
		}
		cmd := exec.Command(strings.TrimSpace(string(path)),
			"--smtp", fmt.Sprintf("127.0.0.1:%d", smtpPort), "--listen", fmt.Sprintf("127.0.0.1:%d", httpPort),
			"--database", filepath.Join(b.tmp, "mailpit.db"), "--max", "1000000",
			"--disable-version-check", "--smtp-disable-rdns", "--quiet")
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Start(); err != nil {
			b.mailErr = err
			return
		}
		b.cleanups = append(b.cleanups, func() {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		b.mailErr = waitUntil(ctx, 30*time.Second, func() bool {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", smtpPort), time.Second)
			if err == nil {
				c.Close()
			}
			return err == nil
		})
		b.mailPort = smtpPort
	})
	return "127.0.0.1", b.mailPort, b.mailErr
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// saramaPipe is the bare-client version of the router's end-to-end work:
// consume, produce an output record with an async producer (acks=all,
// idempotent, as the daemon's publisher), and mark the input record once
// its output succeeded. No decoding, ledger or framework. It marks each
// record when its own output succeeded, which may pass a record still
// producing on another partition: what a bare pipe does, not what a
// correct one must.
func (b *bench) saramaPipe(ctx context.Context, in string) (float64, error) {
	out, err := b.topic("pipe")
	if err != nil {
		return 0, err
	}
	pc := b.saramaConfig()
	pc.Producer.Return.Successes = true
	pc.Producer.RequiredAcks = sarama.WaitForAll
	pc.Producer.Idempotent = true
	pc.Net.MaxOpenRequests = 1
	producer, err := sarama.NewAsyncProducer(b.brokers, pc)
	if err != nil {
		return 0, err
	}
	cc := b.saramaConfig()
	cc.Consumer.Offsets.Initial = sarama.OffsetOldest
	group, err := sarama.NewConsumerGroup(b.brokers, fmt.Sprintf("bench-pipe-%d", time.Now().UnixNano()), cc)
	if err != nil {
		producer.Close()
		return 0, err
	}
	s := &span{}
	h := &pipeHandler{producer: producer, out: out, s: s}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for m := range producer.Successes() {
			h.done(m)
		}
	}()
	go func() {
		defer wg.Done()
		for err := range producer.Errors() {
			b.logger.Warn("bare pipe produce failed", "err", err.Err)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for ctx.Err() == nil {
			if err := group.Consume(ctx, []string{in}, h); err != nil {
				return
			}
		}
	}()
	err = waitUntil(ctx, 10*time.Minute, func() bool { return s.count() >= int64(b.o.messages) })
	cancel()
	<-consumed
	_ = group.Close()
	producer.AsyncClose()
	wg.Wait()
	if err != nil {
		return 0, err
	}
	return s.rate(), nil
}

type pipeHandler struct {
	producer sarama.AsyncProducer
	out      string
	s        *span
	mu       sync.Mutex
	sess     sarama.ConsumerGroupSession
}

func (h *pipeHandler) Setup(sess sarama.ConsumerGroupSession) error {
	h.mu.Lock()
	h.sess = sess
	h.mu.Unlock()
	h.s.mu.Lock()
	if h.s.first.IsZero() {
		h.s.first = time.Now()
	}
	h.s.mu.Unlock()
	return nil
}

func (h *pipeHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }

func (h *pipeHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.producer.Input() <- &sarama.ProducerMessage{
			Topic: h.out, Key: sarama.ByteEncoder(m.Key), Value: sarama.ByteEncoder(m.Value), Metadata: m,
		}
	}
	return nil
}

// done marks the input record of an output that succeeded.
func (h *pipeHandler) done(m *sarama.ProducerMessage) {
	h.mu.Lock()
	sess := h.sess
	h.mu.Unlock()
	if rec, ok := m.Metadata.(*sarama.ConsumerMessage); ok && sess != nil {
		sess.MarkMessage(rec, "")
	}
	h.s.hit()
}

// ioRows runs the I/O-bound and real-SMTP sides in key and partition mode.
func (b *bench) ioRows(ctx context.Context, res *Results) error {
	users := 10_000
	mails := 5_000
	if b.o.short {
		users, mails = 1_000, 500
	}
	maxInFlight := config.DefaultRoute(config.Retry{}).MaxInFlight
	res.IOBound = IOBound{
		Users: users, LatencyMs: float64(ioLatency.Milliseconds()), MaxInFlight: maxInFlight,
		BoundPerSec: float64(maxInFlight) / ioLatency.Seconds(), Emails: mails,
	}
	for _, side := range []struct {
		rows *[]Row
		name string
		run  func(ctx context.Context, ordering string) (float64, error)
	}{
		{&res.IOBound.Rows, "20 ms notifier", func(ctx context.Context, o string) (float64, error) { return b.ioBound(ctx, o, users) }},
		{&res.IOBound.SMTP, "emails into Mailpit", func(ctx context.Context, o string) (float64, error) { return b.smtpBound(ctx, o, mails) }},
	} {
		for _, ordering := range []string{"key", "partition"} {
			row := Row{Name: fmt.Sprintf("%s, ordering: %s", side.name, ordering)}
			for i := 0; i < b.o.repeats; i++ {
				v, err := side.run(ctx, ordering)
				if err != nil {
					return fmt.Errorf("%s: %w", row.Name, err)
				}
				b.logger.Info("measured", "side", row.Name, "run", i+1, "msgs_per_sec", int(v))
				row.Runs = append(row.Runs, v)
			}
			row.MsgsPerSec = median(row.Runs)
			*side.rows = append(*side.rows, row)
		}
		// Key mode against partition mode.
		rows := *side.rows
		if rows[1].MsgsPerSec > 0 {
			rows[0].VsBaseline, rows[0].Baseline = rows[0].MsgsPerSec/rows[1].MsgsPerSec, "partition mode"
		}
		rows[1].VsBaseline, rows[1].Baseline = 1, "partition mode"
	}
	return nil
}

// label names a row's baseline ratio for the table.
func label(r Row) string {
	if r.Baseline == "" {
		return "-"
	}
	return ratio(r.VsBaseline) + " " + r.Baseline
}
