package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"

	"github.com/eventrouter/eventrouter/app"
	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/broker"
	"github.com/eventrouter/eventrouter/msglog"
)

// bench holds the broker and the tools every measurement shares.
type bench struct {
	o        options
	logger   *slog.Logger
	brokers  []string
	root     string // the repository
	tmp      string
	bin      string // the eventrouter binary
	libs     string // Kafka's jars, for its perf tools; empty on the embedded broker
	cleanups []func()
	values   [][]byte
	// Mailpit, started once for the real-SMTP rows.
	mailOnce sync.Once
	mailPort int
	mailErr  error
	// The shared ledger's server: pgDSN is empty, and pgSkip says why,
	// when PostgreSQL is not installed.
	pgDSN  string
	pgSkip string
}

func newBench(ctx context.Context, o options, logger *slog.Logger) (*bench, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "eventrouter-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{o: o, logger: logger, root: root, tmp: tmp}
	b.cleanups = append(b.cleanups, func() { os.RemoveAll(tmp) })

	b.bin = filepath.Join(tmp, "eventrouter")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", b.bin, ".").CombinedOutput(); err != nil {
		b.close()
		return nil, fmt.Errorf("go build: %v\n%s", err, out)
	}

	if o.embedded {
		cfg := config.Defaults().Kafka.Embedded
		cfg.Listen = "127.0.0.1:0"
		cfg.Partitions = o.partitions
		e, err := broker.Start(cfg, slog.New(slog.DiscardHandler))
		if err != nil {
			b.close()
			return nil, err
		}
		b.cleanups = append(b.cleanups, e.Close)
		b.brokers = []string{e.Addr()}
	} else {
		script := filepath.Join(root, "scripts", "kafka.sh")
		if exec.Command(script, "status").Run() != nil {
			if err := runLogged(ctx, script, "start"); err != nil {
				b.close()
				return nil, fmt.Errorf("start kafka: %w", err)
			}
			b.cleanups = append(b.cleanups, func() { _ = runLogged(context.Background(), script, "stop") })
		}
		out, err := exec.Command(script, "bootstrap").Output()
		if err != nil {
			b.close()
			return nil, err
		}
		b.brokers = []string{strings.TrimSpace(string(out))}
		libs, err := exec.Command(script, "libs").Output()
		if err != nil {
			b.close()
			return nil, err
		}
		b.libs = strings.TrimSpace(string(libs))
	}
	if err := b.startPostgres(ctx); err != nil {
		b.close()
		return nil, err
	}
	b.values = makeValues(o.messages, o.size)
	return b, nil
}

// startPostgres starts the shared ledger's server with scripts/postgres.sh
// unless it runs; without PostgreSQL installed its row is skipped.
func (b *bench) startPostgres(ctx context.Context) error {
	script := filepath.Join(b.root, "scripts", "postgres.sh")
	if m, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb"); len(m) == 0 && os.Getenv("POSTGRES_BIN") == "" {
		b.pgSkip = "skipped: PostgreSQL is not installed (apt-get install postgresql)"
		return nil
	}
	if exec.Command(script, "status").Run() != nil {
		if err := runLogged(ctx, script, "start"); err != nil {
			return fmt.Errorf("start postgres: %w", err)
		}
		b.cleanups = append(b.cleanups, func() { _ = runLogged(context.Background(), script, "stop") })
	}
	out, err := exec.Command(script, "dsn").Output()
	if err != nil {
		return fmt.Errorf("postgres dsn: %w", err)
	}
	b.pgDSN = strings.TrimSpace(string(out))
	return nil
}

// pgSchema creates a schema for one run and returns a DSN that uses it,
// and a func that drops it.
func (b *bench) pgSchema(ctx context.Context) (string, func(), error) {
	schema := fmt.Sprintf("bench_%d", time.Now().UnixNano())
	exec1 := func(sql string) error {
		conn, err := pgx.Connect(ctx, b.pgDSN)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec1("CREATE SCHEMA " + schema); err != nil {
		return "", nil, fmt.Errorf("create schema: %w", err)
	}
	u, err := url.Parse(b.pgDSN)
	if err != nil {
		return "", nil, err
	}
	q := u.Query()
	q.Set("search_path", schema)
	u.RawQuery = q.Encode()
	return u.String(), func() { _ = exec1("DROP SCHEMA " + schema + " CASCADE") }, nil
}

func (b *bench) close() {
	for i := len(b.cleanups) - 1; i >= 0; i-- {
		b.cleanups[i]()
	}
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		return "", fmt.Errorf("find the repository (run from inside it): %w", err)
	}
	return strings.TrimSpace(string(out)), nil
}

func runLogged(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	return cmd.Run()
}

// makeValues returns n valid user-registered events of size bytes each.
func makeValues(n, size int) [][]byte {
	vals := make([][]byte, n)
	for i := range vals {
		v := fmt.Sprintf(`{"user_id": %d, "email": "user%d@example.com", "padding": "`, i, i)
		pad := max(size-len(v)-2, 0)
		vals[i] = []byte(v + strings.Repeat("x", pad) + `"}`)
	}
	return vals
}

func (b *bench) saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version, _ = sarama.ParseKafkaVersion(config.Defaults().Kafka.Version)
	c.ClientID = "eventrouter-bench"
	return c
}

func (b *bench) topic(name string) (string, error) {
	r := make([]byte, 4)
	_, _ = rand.Read(r)
	t := "bench-" + name + "-" + hex.EncodeToString(r)
	admin, err := sarama.NewClusterAdmin(b.brokers, b.saramaConfig())
	if err != nil {
		return "", err
	}
	defer admin.Close()
	if err := admin.CreateTopic(t, &sarama.TopicDetail{NumPartitions: int32(b.o.partitions), ReplicationFactor: 1}, false); err != nil {
		return "", fmt.Errorf("create topic %s: %w", t, err)
	}
	// Wait until every partition has a leader.
	client, err := sarama.NewClient(b.brokers, b.saramaConfig())
	if err != nil {
		return "", err
	}
	defer client.Close()
	deadline := time.Now().Add(30 * time.Second)
	for p := int32(0); p < int32(b.o.partitions); {
		_ = client.RefreshMetadata(t)
		if _, err := client.Leader(t, p); err == nil {
			p++
			continue
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("topic %s has no leader for partition %d", t, p)
		}
		time.Sleep(100 * time.Millisecond)
	}
	return t, nil
}

// fill writes the benchmark's messages to topic with an async producer and
// returns the throughput.
func (b *bench) fill(topic string, values [][]byte) (float64, error) {
	c := b.saramaConfig()
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Flush.Frequency = 5 * time.Millisecond
	p, err := sarama.NewAsyncProducer(b.brokers, c)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	var failed atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range p.Successes() {
		}
	}()
	go func() {
		defer wg.Done()
		for range p.Errors() {
			failed.Add(1)
		}
	}()
	for i, v := range values {
		p.Input() <- &sarama.ProducerMessage{Topic: topic, Key: sarama.StringEncoder(strconv.Itoa(i)), Value: sarama.ByteEncoder(v)}
	}
	p.AsyncClose()
	wg.Wait()
	elapsed := time.Since(start)
	if n := failed.Load(); n > 0 {
		return 0, fmt.Errorf("%d of %d messages failed", n, len(values))
	}
	return float64(len(values)) / elapsed.Seconds(), nil
}

func (b *bench) runAll(ctx context.Context) (Results, error) {
	res := Results{
		Date: time.Now().UTC().Format(time.RFC3339), Machine: machine(),
		Messages: b.o.messages, Size: b.o.size, Partitions: b.o.partitions, Repeats: b.o.repeats,
		Broker: "Apache Kafka 4.1.1 (scripts/kafka.sh, single node, KRaft)",
	}
	if b.o.embedded {
		res.Broker = "embedded kfake broker (in the benchmark process)"
	}
	in, err := b.topic("in")
	if err != nil {
		return res, err
	}
	b.logger.Info("filling the consume topic", "topic", in, "messages", b.o.messages, "size", b.o.size)
	if _, err := b.fill(in, b.values); err != nil {
		return res, err
	}

	type side struct {
		name string
		run  func(ctx context.Context) (float64, error)
		note string
	}
	consume := []side{
		{"router end to end (daemon, no-op notifier)", func(ctx context.Context) (float64, error) { return b.consumeDaemon(ctx, in, &res) }, ""},
		{"router, no-op handler", func(ctx context.Context) (float64, error) { return b.consumeRouterNoop(ctx, in) }, ""},
		{"bare sarama consumer group", func(ctx context.Context) (float64, error) { return b.consumeSarama(ctx, in) }, ""},
		{"kafka ConsumerPerformance", func(ctx context.Context) (float64, error) { return b.consumeKafkaTool(ctx, in) }, ""},
		{"bare sarama pipe (consume, async produce, mark)", func(ctx context.Context) (float64, error) { return b.saramaPipe(ctx, in) }, ""},
		{"router end to end, shared PostgreSQL ledger", func(ctx context.Context) (float64, error) { return b.consumeDaemonShared(ctx, in, &res) },
			"the daemon above with ledger.kind postgres (scripts/postgres.sh, same machine)"},
	}
	syncN := max(b.o.messages/5, 1)
	publish := []side{
		{"eventrouter publish (stdin)", func(ctx context.Context) (float64, error) { return b.publishCommand(ctx) }, ""},
		{"watermill publisher (daemon config)", func(ctx context.Context) (float64, error) { return b.publishWatermill(ctx, syncN) },
			fmt.Sprintf("synchronous, one message per call as the router publishes; %d messages", syncN)},
		{"bare sarama async producer", func(ctx context.Context) (float64, error) {
			t, err := b.topic("pub")
			if err != nil {
				return 0, err
			}
			return b.fill(t, b.values)
		}, ""},
		{"kafka ProducerPerformance", func(ctx context.Context) (float64, error) { return b.publishKafkaTool(ctx) }, ""},
	}
	measure := func(sides []side) ([]Row, error) {
		var rows []Row
		for _, s := range sides {
			row := Row{Name: s.name, Note: s.note}
			if b.o.only != "" && !strings.Contains(s.name, b.o.only) {
				row.Note = "skipped: not in --only " + b.o.only
				rows = append(rows, row)
				continue
			}
			for i := 0; i < b.o.repeats; i++ {
				if ctx.Err() != nil {
					return nil, ctx.Err()
				}
				v, err := s.run(ctx)
				if errors.Is(err, errSkipped) {
					row.Note = err.Error()
					break
				}
				if err != nil {
					return nil, fmt.Errorf("%s: %w", s.name, err)
				}
				b.logger.Info("measured", "side", s.name, "run", i+1, "msgs_per_sec", int(v))
				row.Runs = append(row.Runs, v)
			}
			row.MsgsPerSec = median(row.Runs)
			rows = append(rows, row)
		}
		ratios(rows)
		return rows, nil
	}
	if res.Consume, err = measure(consume); err != nil {
		return res, err
	}
	// The router's end-to-end work against the bare pipe that does the
	// same with the client alone; the no-op router against the bare group.
	if pipe := res.Consume[4].MsgsPerSec; pipe > 0 {
		res.Consume[0].Baseline, res.Consume[0].VsBaseline = "sarama pipe", res.Consume[0].MsgsPerSec/pipe
	}
	res.Consume[1].Baseline, res.Consume[1].VsBaseline = "sarama group", res.Consume[1].VsSarama
	if bbolt := res.Consume[0].MsgsPerSec; bbolt > 0 && res.Consume[5].MsgsPerSec > 0 {
		res.Consume[5].Baseline, res.Consume[5].VsBaseline = "bbolt ledger", res.Consume[5].MsgsPerSec/bbolt
	}
	if res.Publish, err = measure(publish); err != nil {
		return res, err
	}
	if b.o.only != "" {
		return res, nil
	}
	if res.Latency, err = b.latency(ctx); err != nil {
		return res, fmt.Errorf("latency: %w", err)
	}
	if err := b.ioRows(ctx, &res); err != nil {
		return res, err
	}
	if b.o.cpuProfile != "" {
		if err := b.profile(ctx, in); err != nil {
			return res, fmt.Errorf("cpu profile: %w", err)
		}
	}
	return res, nil
}

var errSkipped = errors.New("skipped")

// ratios fills each row's ratio to the bare sarama row (the third) and to
// Kafka's tool (the fourth).
func ratios(rows []Row) {
	sarama, tool := rows[2].MsgsPerSec, rows[3].MsgsPerSec
	for i := range rows {
		if sarama > 0 {
			rows[i].VsSarama = rows[i].MsgsPerSec / sarama
		}
		if tool > 0 {
			rows[i].VsKafkaTool = rows[i].MsgsPerSec / tool
		}
	}
}

// consumeDaemon runs `eventrouter run` as its own process and measures its
// throughput from the timestamps of the first and last notification-sent
// records, which leaves out start-up and the group join. It also reads the
// process's peak RSS.
func (b *bench) consumeDaemon(ctx context.Context, in string, res *Results) (float64, error) {
	dir, err := os.MkdirTemp(b.tmp, "daemon-")
	if err != nil {
		return 0, err
	}
	return b.runDaemon(ctx, in, dir, "ledger:\n  path: "+filepath.Join(dir, "ledger.db")+"\n", nil, res)
}

// consumeDaemonShared is consumeDaemon with the shared PostgreSQL ledger,
// in a schema of its own.
func (b *bench) consumeDaemonShared(ctx context.Context, in string, res *Results) (float64, error) {
	if b.pgDSN == "" {
		return 0, fmt.Errorf("%w: %s", errSkipped, b.pgSkip)
	}
	dir, err := os.MkdirTemp(b.tmp, "daemon-")
	if err != nil {
		return 0, err
	}
	dsn, drop, err := b.pgSchema(ctx)
	if err != nil {
		return 0, err
	}
	defer drop()
	yaml := "ledger:\n  kind: postgres\n  postgres:\n    dsn_env: EVENTROUTER_BENCH_LEDGER_DSN\n"
	// Its memory is not the daemon's reported one: that stays the
	// default ledger's.
	return b.runDaemon(ctx, in, dir, yaml, []string{"EVENTROUTER_BENCH_LEDGER_DSN=" + dsn}, nil)
}

// runDaemon runs `eventrouter run` in dir with the ledger section
// ledgerYAML and env added to its environment, and measures it as
// consumeDaemon says.
func (b *bench) runDaemon(ctx context.Context, in, dir, ledgerYAML string, env []string, res *Results) (float64, error) {
	out, err := b.topic("sent")
	if err != nil {
		return 0, err
	}
	path := filepath.Join(dir, "eventrouter.yaml")
	raw := fmt.Sprintf(`
kafka:
  brokers: [%s]
notifier:
  kind: none
%s
log:
  level: warn
routes:
  - handler: notification
    subscribe_topic: %s
    consumer_group: bench-%d
    publish_topic: %s
`, strings.Join(b.brokers, ","), ledgerYAML, in, time.Now().UnixNano(), out)
	if err := os.WriteFile(path, []byte(raw), 0o600); err != nil {
		return 0, err
	}
	cmd := exec.CommandContext(ctx, b.bin, "run", "--config", path)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
	}()
	client, err := sarama.NewClient(b.brokers, b.saramaConfig())
	if err != nil {
		return 0, err
	}
	defer client.Close()
	if err := waitUntil(ctx, 10*time.Minute, func() bool { return records(client, out) >= int64(b.o.messages) }); err != nil {
		return 0, fmt.Errorf("waiting for %d notification-sent: %w", b.o.messages, err)
	}
	if rss := statusMiB(cmd.Process.Pid, "VmHWM:"); res != nil && rss > res.PeakRSSMiB {
		res.PeakRSSMiB = rss
		res.FileRSSMiB = statusMiB(cmd.Process.Pid, "RssFile:")
	}
	first, last, err := timeSpan(client, out)
	if err != nil {
		return 0, err
	}
	return float64(b.o.messages) / last.Sub(first).Seconds(), nil
}

// records returns how many records topic holds.
func records(client sarama.Client, topic string) int64 {
	_ = client.RefreshMetadata(topic)
	parts, err := client.Partitions(topic)
	if err != nil {
		return 0
	}
	var n int64
	for _, p := range parts {
		end, err1 := client.GetOffset(topic, p, sarama.OffsetNewest)
		start, err2 := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err1 == nil && err2 == nil {
			n += end - start
		}
	}
	return n
}

// timeSpan returns the earliest and latest record timestamps in topic,
// reading only the first and last record of each partition.
func timeSpan(client sarama.Client, topic string) (first, last time.Time, err error) {
	consumer, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		return first, last, err
	}
	defer consumer.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		return first, last, err
	}
	read := func(p int32, off int64) (time.Time, error) {
		pc, err := consumer.ConsumePartition(topic, p, off)
		if err != nil {
			return time.Time{}, err
		}
		defer pc.Close()
		select {
		case m := <-pc.Messages():
			return m.Timestamp, nil
		case <-time.After(30 * time.Second):
			return time.Time{}, fmt.Errorf("no record at %s/%d@%d", topic, p, off)
		}
	}
	for _, p := range parts {
		start, err := client.GetOffset(topic, p, sarama.OffsetOldest)
		if err != nil {
			return first, last, err
		}
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return first, last, err
		}
		if end == start {
			continue
		}
		t0, err := read(p, start)
		if err != nil {
			return first, last, err
		}
		t1, err := read(p, end-1)
		if err != nil {
			return first, last, err
		}
		if first.IsZero() || t0.Before(first) {
			first = t0
		}
		if t1.After(last) {
			last = t1
		}
	}
	if !last.After(first) {
		return first, last, errors.New("records span no time")
	}
	return first, last, nil
}

// statusMiB reads one of a process's memory figures (such as VmHWM:, its
// peak resident set, or RssFile:, its resident file pages) in MiB.
func statusMiB(pid int, field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range splitLines(string(b)) {
		if strings.HasPrefix(line, field) {
			f := strings.Fields(line)
			if kb, err := strconv.ParseFloat(f[1], 64); err == nil {
				return kb / 1024
			}
		}
	}
	return 0
}

func waitUntil(ctx context.Context, timeout time.Duration, cond func() bool) error {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return errors.New("timed out")
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// span records the first and last time something happened, and how often.
type span struct {
	mu          sync.Mutex
	first, last time.Time
	n           int64
}

func (s *span) hit() {
	now := time.Now()
	s.mu.Lock()
	if s.first.IsZero() {
		s.first = now
	}
	s.last = now
	s.n++
	s.mu.Unlock()
}

func (s *span) rate() float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.last.After(s.first) {
		return 0
	}
	return float64(s.n) / s.last.Sub(s.first).Seconds()
}

func (s *span) count() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// startDaemon runs a daemon in this process as run says, with the given
// registry (nil for the real one), until the returned func stops it.
func (b *bench) startDaemon(ctx context.Context, in, out string, run daemonRun, registry map[string]handlers.Spec) (func() error, error) {
	cfg := config.Defaults()
	cfg.Kafka.Brokers = b.brokers
	cfg.Notifier.Kind = "none"
	if run.smtp != nil {
		cfg.Notifier.Kind, cfg.Notifier.SMTP = "smtp", *run.smtp
	}
	cfg.Ledger.Path = filepath.Join(b.tmp, fmt.Sprintf("ledger-%d.db", time.Now().UnixNano()))
	r := config.DefaultRoute(cfg.Retry)
	r.Name, r.Handler, r.SubscribeTopic, r.PublishTopic = "bench", run.handler, in, out
	r.ConsumerGroup, r.PoisonTopic = fmt.Sprintf("bench-%d", time.Now().UnixNano()), in+".poison"
	if run.ordering != "" {
		r.Ordering = run.ordering
	}
	if run.maxInFlight > 0 {
		r.MaxInFlight = run.maxInFlight
	}
	cfg.Routes = []config.Route{r}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	logger := slog.New(msglog.Handler{Handler: slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})})
	opts := app.Options{Registry: registry}
	if run.notifier.d > 0 {
		opts.Notifier = run.notifier
	}
	d, err := app.New(cfg, logger, opts)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx) }()
	select {
	case <-d.Running():
	case err := <-done:
		cancel()
		return nil, err
	}
	stop := func() error { cancel(); return <-done }
	// Running means subscribed; the group's first join (Kafka holds it
	// for group.initial.rebalance.delay.ms) would count as the first
	// records' latency.
	if err := b.waitStable(ctx, r.ConsumerGroup); err != nil {
		_ = stop()
		return nil, err
	}
	return stop, nil
}

// waitStable waits until group is stable with a member.
func (b *bench) waitStable(ctx context.Context, group string) error {
	admin, err := sarama.NewClusterAdmin(b.brokers, b.saramaConfig())
	if err != nil {
		return err
	}
	defer admin.Close()
	err = waitUntil(ctx, time.Minute, func() bool {
		groups, err := admin.DescribeConsumerGroups([]string{group})
		return err == nil && len(groups) == 1 && groups[0].State == "Stable" && len(groups[0].Members) > 0
	})
	if err != nil {
		return fmt.Errorf("consumer group %s did not settle: %w", group, err)
	}
	return nil
}

// consumeRouterNoop measures the router, its middleware and watermill-kafka
// with a handler that does nothing.
func (b *bench) consumeRouterNoop(ctx context.Context, in string) (float64, error) {
	s := &span{}
	registry := map[string]handlers.Spec{"noop": {New: func(any, handlers.Services) (handlers.Handler, error) {
		return handlers.Func(func(*message.Message) ([]*message.Message, error) { s.hit(); return nil, nil }), nil
	}}}
	stop, err := b.startDaemon(ctx, in, "", daemonRun{handler: "noop"}, registry)
	if err != nil {
		return 0, err
	}
	err = waitUntil(ctx, 10*time.Minute, func() bool { return s.count() >= int64(b.o.messages) })
	if stopErr := stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return 0, err
	}
	return s.rate(), nil
}

type saramaHandler struct{ s *span }

// Setup starts the clock when the session starts, before the first fetch:
// with a first-record start a fast consumer reads much of the topic in the
// first fetch round and looks faster than it is.
func (h saramaHandler) Setup(sarama.ConsumerGroupSession) error {
	h.s.mu.Lock()
	if h.s.first.IsZero() {
		h.s.first = time.Now()
	}
	h.s.mu.Unlock()
	return nil
}

func (saramaHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h saramaHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	for m := range claim.Messages() {
		h.s.hit()
		sess.MarkMessage(m, "")
	}
	return nil
}

// consumeSarama measures a bare sarama consumer group that marks every
// message, as the router does.
func (b *bench) consumeSarama(ctx context.Context, in string) (float64, error) {
	c := b.saramaConfig()
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	group, err := sarama.NewConsumerGroup(b.brokers, fmt.Sprintf("bench-sarama-%d", time.Now().UnixNano()), c)
	if err != nil {
		return 0, err
	}
	s := &span{}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := group.Consume(ctx, []string{in}, saramaHandler{s: s}); err != nil {
				return
			}
		}
	}()
	err = waitUntil(ctx, 10*time.Minute, func() bool { return s.count() >= int64(b.o.messages) })
	cancel()
	<-done
	_ = group.Close()
	if err != nil {
		return 0, err
	}
	return s.rate(), nil
}

func (b *bench) java(ctx context.Context, class string, args ...string) (string, error) {
	if b.libs == "" {
		return "", fmt.Errorf("%w: Kafka's tools run only against Apache Kafka (not --embedded)", errSkipped)
	}
	full := append([]string{"-Xmx512m", "-cp", b.libs + "/*", "-Dlog4j2.level=warn", class}, args...)
	cmd := exec.CommandContext(ctx, "java", full...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = io.Discard
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s: %w\n%s", class, err, out.String())
	}
	return out.String(), nil
}

// consumeKafkaTool runs Kafka's ConsumerPerformance and takes its fetch
// rate, which, like the other rows, leaves out the group join.
func (b *bench) consumeKafkaTool(ctx context.Context, in string) (float64, error) {
	out, err := b.java(ctx, "org.apache.kafka.tools.ConsumerPerformance",
		"--bootstrap-server", b.brokers[0], "--topic", in, "--messages", strconv.Itoa(b.o.messages),
		"--group", fmt.Sprintf("bench-perf-%d", time.Now().UnixNano()), "--timeout", "60000")
	if err != nil {
		return 0, err
	}
	return csvColumn(out, "fetch.nMsg.sec")
}

// csvColumn returns the named column of the tool's CSV output.
func csvColumn(out, name string) (float64, error) {
	lines := splitLines(strings.TrimSpace(out))
	for i := 0; i+1 < len(lines); i++ {
		head := strings.Split(lines[i], ",")
		for j, h := range head {
			if strings.TrimSpace(h) == name {
				vals := strings.Split(lines[i+1], ",")
				if j < len(vals) {
					return strconv.ParseFloat(strings.TrimSpace(vals[j]), 64)
				}
			}
		}
	}
	return 0, fmt.Errorf("no column %s in %q", name, out)
}

// publishCommand times `eventrouter publish` reading every message from
// stdin, start-up included.
func (b *bench) publishCommand(ctx context.Context) (float64, error) {
	t, err := b.topic("cmd")
	if err != nil {
		return 0, err
	}
	input := bytes.Join(b.values, []byte("\n"))
	cmd := exec.CommandContext(ctx, b.bin, "publish", "--brokers", strings.Join(b.brokers, ","), "--topic", t)
	cmd.Stdin = bytes.NewReader(input)
	cmd.Stdout = io.Discard
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("eventrouter publish: %w: %s", err, stderr.String())
	}
	return float64(len(b.values)) / time.Since(start).Seconds(), nil
}

// publishWatermill measures the publisher the daemon uses, one message per
// Publish call.
func (b *bench) publishWatermill(ctx context.Context, n int) (float64, error) {
	t, err := b.topic("wm")
	if err != nil {
		return 0, err
	}
	pub, err := app.NewPublisher(config.Defaults().Kafka, b.brokers, os.Getenv)
	if err != nil {
		return 0, err
	}
	defer pub.Close()
	start := time.Now()
	for i := 0; i < n; i++ {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if err := pub.Publish(t, message.NewMessage(strconv.Itoa(i), b.values[i%len(b.values)])); err != nil {
			return 0, err
		}
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// publishKafkaTool runs Kafka's ProducerPerformance with acks=all, as the
// other producers use.
func (b *bench) publishKafkaTool(ctx context.Context) (float64, error) {
	t, err := b.topic("perf")
	if err != nil {
		return 0, err
	}
	out, err := b.java(ctx, "org.apache.kafka.tools.ProducerPerformance",
		"--topic", t, "--num-records", strconv.Itoa(b.o.messages), "--record-size", strconv.Itoa(b.o.size),
		"--throughput", "-1", "--producer-props", "bootstrap.servers="+b.brokers[0], "acks=all")
	if err != nil {
		return 0, err
	}
	// The last line: "N records sent, X records/sec (...)".
	lines := splitLines(strings.TrimSpace(out))
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 4 && f[1] == "records" && f[2] == "sent," {
			return strconv.ParseFloat(f[3], 64)
		}
	}
	return 0, fmt.Errorf("no result in ProducerPerformance output %q", out)
}

// latency offers events at a fixed rate to an in-process daemon with the
// real notification handler and a no-op notifier, and measures produce to
// handled (the handler's sent_at) per event.
func (b *bench) latency(ctx context.Context) (Latency, error) {
	in, err := b.topic("lat")
	if err != nil {
		return Latency{}, err
	}
	out, err := b.topic("latsent")
	if err != nil {
		return Latency{}, err
	}
	stop, err := b.startDaemon(ctx, in, out, daemonRun{handler: "notification"}, nil)
	if err != nil {
		return Latency{}, err
	}
	defer stop()

	n := int(float64(b.o.rate) * b.o.latencyFor.Seconds())
	c := b.saramaConfig()
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Flush.Frequency = time.Millisecond
	p, err := sarama.NewAsyncProducer(b.brokers, c)
	if err != nil {
		return Latency{}, err
	}
	go func() {
		for range p.Successes() {
		}
	}()
	go func() {
		for range p.Errors() {
		}
	}()
	sentAt := make([]time.Time, n)
	values := makeValues(n, b.o.size)
	tick := time.NewTicker(10 * time.Millisecond)
	perTick := max(b.o.rate/100, 1)
	for i := 0; i < n; {
		<-tick.C
		for j := 0; j < perTick && i < n; j, i = j+1, i+1 {
			sentAt[i] = time.Now()
			p.Input() <- &sarama.ProducerMessage{Topic: in, Key: sarama.StringEncoder(strconv.Itoa(i)), Value: sarama.ByteEncoder(values[i])}
		}
	}
	tick.Stop()
	p.AsyncClose()

	consumer, err := sarama.NewConsumer(b.brokers, b.saramaConfig())
	if err != nil {
		return Latency{}, err
	}
	defer consumer.Close()
	lat := make([]float64, 0, n)
	var mu sync.Mutex
	var wg sync.WaitGroup
	deadline := time.After(2 * time.Minute)
	done := make(chan struct{})
	for part := 0; part < b.o.partitions; part++ {
		pc, err := consumer.ConsumePartition(out, int32(part), sarama.OffsetOldest)
		if err != nil {
			return Latency{}, err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer pc.Close()
			for {
				select {
				case <-done:
					return
				case m := <-pc.Messages():
					var ev struct {
						UserID int       `json:"user_id"`
						SentAt time.Time `json:"sent_at"`
					}
					if json.Unmarshal(m.Value, &ev) == nil && ev.UserID < n {
						mu.Lock()
						lat = append(lat, float64(ev.SentAt.Sub(sentAt[ev.UserID]).Microseconds())/1000)
						mu.Unlock()
					}
				}
			}
		}()
	}
	for {
		mu.Lock()
		got := len(lat)
		mu.Unlock()
		if got >= n {
			break
		}
		select {
		case <-deadline:
			close(done)
			wg.Wait()
			return Latency{}, fmt.Errorf("only %d of %d events handled", got, n)
		case <-ctx.Done():
			close(done)
			wg.Wait()
			return Latency{}, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	close(done)
	wg.Wait()
	return Latency{RatePerSec: b.o.rate, Messages: n, P50Ms: quantile(lat, 0.5), P99Ms: quantile(lat, 0.99), P999Ms: quantile(lat, 0.999)}, nil
}

func quantile(xs []float64, q float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(int(q*float64(len(s))), len(s)-1)]
}

// profile writes a CPU profile of an in-process end-to-end router run.
func (b *bench) profile(ctx context.Context, in string) error {
	out, err := b.topic("prof")
	if err != nil {
		return err
	}
	f, err := os.Create(b.o.cpuProfile)
	if err != nil {
		return err
	}
	defer f.Close()
	stop, err := b.startDaemon(ctx, in, out, daemonRun{handler: "notification"}, nil)
	if err != nil {
		return err
	}
	client, err := sarama.NewClient(b.brokers, b.saramaConfig())
	if err != nil {
		return err
	}
	defer client.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	err = waitUntil(ctx, 10*time.Minute, func() bool { return records(client, out) >= int64(b.o.messages) })
	pprof.StopCPUProfile()
	if stopErr := stop(); err == nil {
		err = stopErr
	}
	if err != nil {
		return err
	}
	b.logger.Info("wrote CPU profile", "file", b.o.cpuProfile)

	// The no-op router, whose cost is the router, its middleware and the
	// subscriber alone.
	noop := strings.TrimSuffix(b.o.cpuProfile, ".pprof") + ".noop.pprof"
	g, err := os.Create(noop)
	if err != nil {
		return err
	}
	defer g.Close()
	if err := pprof.StartCPUProfile(g); err != nil {
		return err
	}
	_, err = b.consumeRouterNoop(ctx, in)
	pprof.StopCPUProfile()
	if err == nil {
		b.logger.Info("wrote CPU profile", "file", noop)
	}
	return err
}

func splitLines(s string) []string {
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	return lines
}
