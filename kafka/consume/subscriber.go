package consume

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/eventrouter/eventrouter/kafka/record"
)

// Unmarshaler turns a Kafka record into a Watermill message.
// record.Marshaler is one.
type Unmarshaler interface {
	Unmarshal(*sarama.ConsumerMessage) (*message.Message, error)
}

// Config configures a Subscriber.
type Config struct {
	// Brokers are the Kafka bootstrap addresses.
	Brokers []string
	// ConsumerGroup is the group every subscription joins.
	ConsumerGroup string
	// Sarama is the client configuration, shared by every subscription.
	Sarama *sarama.Config
	// Unmarshaler turns records into messages. It should never fail: a
	// record it refuses is handed on with its raw value, its identity as
	// UUID and no metadata, so that the handler rejects it into the poison
	// topic instead of it blocking its partition.
	Unmarshaler Unmarshaler
	// Ordering says which records of a partition may be in flight at once.
	Ordering Ordering
	// MaxInFlight bounds the records handed out and not yet finished,
	// across every partition and subscription; default 256.
	MaxInFlight int
	// MaxWindow bounds, per partition, the records taken from Kafka and
	// not yet committed: waiting for their key, in flight, or finished
	// behind an unfinished one. When it is reached, fetching from that
	// partition stops until its oldest records finish. Default 4 ×
	// MaxInFlight.
	MaxWindow int
	// NackDelay is how long a nacked record waits before it is handed out
	// again; its key stays blocked meanwhile. Default 100ms.
	NackDelay time.Duration
	// RevokeTimeout bounds how long a revoked partition waits for its
	// records in flight to finish before it lets the partition go; late
	// acks are dropped, and the new owner handles those records again.
	// Default 30s; keep it under the group's rebalance timeout.
	RevokeTimeout time.Duration
	// StartAtNewest starts a partition the group has never committed at
	// its end, not its start: only records published from the group's
	// first session on are handed out. The end is committed as soon as
	// the partition is claimed, so that records published while the
	// daemon is down after that are not skipped.
	StartAtNewest bool
	// Logger receives the subscriber's own lines; nil discards them.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 256
	}
	if c.MaxWindow <= 0 {
		c.MaxWindow = 4 * c.MaxInFlight
	}
	if c.NackDelay <= 0 {
		c.NackDelay = 100 * time.Millisecond
	}
	if c.RevokeTimeout <= 0 {
		c.RevokeTimeout = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// Validate reports a config the subscriber cannot work with.
func (c Config) Validate() error {
	var errs []error
	if len(c.Brokers) == 0 {
		errs = append(errs, errors.New("no brokers"))
	}
	if c.ConsumerGroup == "" {
		errs = append(errs, errors.New("no consumer group"))
	}
	if c.Sarama == nil {
		errs = append(errs, errors.New("no sarama config"))
	} else if err := c.Sarama.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.Unmarshaler == nil {
		errs = append(errs, errors.New("no unmarshaler"))
	}
	return errors.Join(errs...)
}

// Subscriber is a Watermill subscriber on a Kafka consumer group that
// hands a partition's records out without waiting for earlier acks, as far
// as its Ordering allows, and commits per partition only the offset below
// which every record is finished. Acked and nacked messages can come back
// in any order.
//
// It also stops cleanly: Stop stops handing out records, Wait waits for
// the ones handed out, and Close then commits and leaves the group, so that
// a stop neither loses nor repeats a record.
type Subscriber struct {
	cfg Config
	// slots holds a token per record handed out and not finished.
	slots chan struct{}
	// ctx is cancelled by Close; every message context derives from it.
	ctx    context.Context
	cancel context.CancelFunc
	// stop is closed by Stop.
	stop     chan struct{}
	stopOnce sync.Once
	closed   atomic.Bool
	wg       sync.WaitGroup

	inFlight atomic.Int64
	sessions atomic.Int64

	mu         sync.Mutex
	partitions map[*partition]struct{}
	// orphans counts, per partition, records still running that a revoked
	// claim gave up on.
	orphans map[topicPartition]int
}

// NewSubscriber checks cfg and returns a subscriber. It connects when it
// subscribes.
func NewSubscriber(cfg Config) (*Subscriber, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kafka subscriber: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Subscriber{
		cfg:        cfg,
		slots:      make(chan struct{}, cfg.MaxInFlight),
		ctx:        ctx,
		cancel:     cancel,
		stop:       make(chan struct{}),
		partitions: map[*partition]struct{}{},
		orphans:    map[topicPartition]int{},
	}, nil
}

var _ message.Subscriber = (*Subscriber)(nil)

// Subscribe joins the consumer group for topic and returns the messages
// handed out to this member. The channel closes when ctx is done or the
// subscriber closes, once every partition was let go.
func (s *Subscriber) Subscribe(ctx context.Context, topic string) (<-chan *message.Message, error) {
	if s.closed.Load() {
		return nil, errors.New("kafka subscriber is closed")
	}
	client, err := sarama.NewClient(s.cfg.Brokers, s.cfg.Sarama)
	if err != nil {
		return nil, fmt.Errorf("join consumer group %s at %s: %w", s.cfg.ConsumerGroup, strings.Join(s.cfg.Brokers, ","), err)
	}
	group, err := sarama.NewConsumerGroupFromClient(s.cfg.ConsumerGroup, client)
	if err != nil {
		client.Close()
		return nil, fmt.Errorf("join consumer group %s at %s: %w", s.cfg.ConsumerGroup, strings.Join(s.cfg.Brokers, ","), err)
	}
	// Reads a claimed partition's commit metadata, for rewinds.
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		group.Close()
		client.Close()
		return nil, fmt.Errorf("consumer group %s: %w", s.cfg.ConsumerGroup, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	out := make(chan *message.Message)
	h := &groupHandler{s: s, ctx: ctx, out: out, admin: admin, client: client}
	logger := s.cfg.Logger.With("topic", topic, "consumer_group", s.cfg.ConsumerGroup)

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(out)
		defer cancel()
		stopAfterClose := context.AfterFunc(s.ctx, cancel)
		defer stopAfterClose()

		errsDone := make(chan struct{})
		go func() {
			defer close(errsDone)
			for err := range group.Errors() {
				logger.Warn("kafka consumer error", "err", err)
			}
		}()
		defer func() {
			if err := group.Close(); err != nil {
				logger.Warn("close consumer group", "err", err)
			}
			<-errsDone
			// The admin's Close closes the client it shares with the group.
			_ = admin.Close()
		}()

		wait := 250 * time.Millisecond
		for ctx.Err() == nil {
			err := group.Consume(ctx, []string{topic}, h)
			switch {
			case errors.Is(err, sarama.ErrClosedConsumerGroup):
				return
			case err != nil:
				logger.Warn("consumer group session failed; joining again", "err", err, "in", wait.String())
				select {
				case <-ctx.Done():
				case <-time.After(wait):
				}
				wait = min(2*wait, 10*time.Second)
			default:
				// A rebalance ended the session: join the next one.
				wait = 250 * time.Millisecond
			}
		}
	}()
	return out, nil
}

// SubscribeInitialize creates topic with the broker's default partitions
// and replication factor, unless it exists.
func (s *Subscriber) SubscribeInitialize(topic string) error {
	admin, err := sarama.NewClusterAdmin(s.cfg.Brokers, s.cfg.Sarama)
	if err != nil {
		return fmt.Errorf("connect to kafka at %s: %w", strings.Join(s.cfg.Brokers, ","), err)
	}
	defer admin.Close()
	err = admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: -1, ReplicationFactor: -1}, false)
	if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
		return fmt.Errorf("create topic %s: %w", topic, err)
	}
	return nil
}

// Stop stops handing out records; the ones handed out go on, and their
// acks are still committed. Records not handed out are left to be consumed
// again from the committed offset.
func (s *Subscriber) Stop() { s.stopOnce.Do(func() { close(s.stop) }) }

// Wait waits until no record is handed out and unfinished, or ctx is done.
// After Stop, that is when every record this member handed out finished,
// including those a revoke gave up on while their handlers still ran.
func (s *Subscriber) Wait(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for s.inFlight.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// Close leaves the consumer group of every subscription, committing what
// was finished, and cancels the contexts of messages still in flight: their
// acks count no more.
func (s *Subscriber) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	s.Stop()
	s.cancel()
	s.wg.Wait()
	return nil
}

// InFlight returns how many records are handed out and not finished.
func (s *Subscriber) InFlight() int64 { return s.inFlight.Load() }

// InSession reports whether a consumer group session is live: the group
// was joined and this member takes part, with or without partitions.
func (s *Subscriber) InSession() bool { return s.sessions.Load() > 0 }

// PartitionStats describes one partition this member consumes.
type PartitionStats struct {
	Topic     string
	Partition int32
	// InFlight counts the records taken and not finished, waiting for
	// their key or handed out.
	InFlight int
	// Window counts the records taken and not committed.
	Window int
	// Oldest is when the oldest unfinished record was taken; zero when none
	// is unfinished.
	Oldest time.Time
}

// Partitions returns the partitions this member consumes now.
func (s *Subscriber) Partitions() []PartitionStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	stats := make([]PartitionStats, 0, len(s.partitions))
	for p := range s.partitions {
		stats = append(stats, p.stats())
	}
	slices.SortFunc(stats, func(a, b PartitionStats) int {
		if c := strings.Compare(a.Topic, b.Topic); c != 0 {
			return c
		}
		return int(a.Partition - b.Partition)
	})
	return stats
}

func (s *Subscriber) orphansOf(tp topicPartition) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.orphans[tp]
}

func (s *Subscriber) addOrphans(tp topicPartition, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.orphans[tp] += n
}

func (s *Subscriber) orphanDone(tp topicPartition) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.orphans[tp]--; s.orphans[tp] <= 0 {
		delete(s.orphans, tp)
	}
}

// groupHandler is the sarama side of one subscription.
type groupHandler struct {
	s      *Subscriber
	ctx    context.Context
	out    chan<- *message.Message
	admin  sarama.ClusterAdmin
	client sarama.Client
}

// RewindMarker starts the commit metadata that `eventrouter rewind` writes:
// "eventrouter-rewind until=N ...", where N is the offset the group had
// committed before. The records below N are handled again: the subscriber
// marks them Replayed, and keeps the metadata on its commits until it
// passes N, so that a restart mid-replay still knows.
const RewindMarker = "eventrouter-rewind until="

// rewoundUntil returns the end of the rewound range of a claimed
// partition, and its metadata, or 0 when it was not rewound.
func (h *groupHandler) rewoundUntil(claim sarama.ConsumerGroupClaim) (int64, string) {
	if h.admin == nil {
		return 0, ""
	}
	offsets, err := h.admin.ListConsumerGroupOffsets(h.s.cfg.ConsumerGroup, map[string][]int32{claim.Topic(): {claim.Partition()}})
	if err != nil {
		return 0, ""
	}
	b := offsets.GetBlock(claim.Topic(), claim.Partition())
	if b == nil || !strings.HasPrefix(b.Metadata, RewindMarker) {
		return 0, ""
	}
	var until int64
	if _, err := fmt.Sscanf(strings.TrimPrefix(b.Metadata, RewindMarker), "%d", &until); err != nil || until <= claim.InitialOffset() {
		return 0, ""
	}
	return until, b.Metadata
}

func (h *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	if h.s.cfg.StartAtNewest {
		if err := h.startAtNewest(sess); err != nil {
			return err
		}
	}
	h.s.sessions.Add(1)
	return nil
}

// startMarker is the commit metadata of the offsets startAtNewest
// commits.
const startMarker = "eventrouter-start=latest"

// startAtNewest commits the end of every claimed partition the group has
// no offset for, while the group is new: while every offset it committed
// for the topic is one of these marks. A partition added to the topic
// after the group handled a record starts at its oldest record instead,
// so that what was written to it before it was claimed is not skipped.
// sarama reads a claim's first offset after Setup, from the marks made
// here; the commit is read back, so that a mark that did not reach the
// coordinator fails the session instead of moving on.
func (h *groupHandler) startAtNewest(sess sarama.ConsumerGroupSession) error {
	group := h.s.cfg.ConsumerGroup
	marked := map[string]map[int32]int64{}
	for topic, claimed := range sess.Claims() {
		all, err := h.client.Partitions(topic)
		if err != nil {
			return fmt.Errorf("list partitions of %s: %w", topic, err)
		}
		offsets, err := h.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: all})
		if err != nil {
			return fmt.Errorf("read committed offsets of %s: %w", topic, err)
		}
		isNew := true
		missing := map[int32]bool{}
		for _, p := range all {
			b := offsets.GetBlock(topic, p)
			switch {
			case b == nil || b.Err == sarama.ErrNoError && b.Offset < 0:
				missing[p] = true
			case b.Err != sarama.ErrNoError:
				return fmt.Errorf("read committed offset of %s/%d: %w", topic, p, b.Err)
			case b.Metadata != startMarker:
				isNew = false
			}
		}
		if !isNew {
			continue
		}
		for _, p := range claimed {
			if !missing[p] {
				continue
			}
			end, err := h.client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return fmt.Errorf("read end of %s/%d: %w", topic, p, err)
			}
			sess.MarkOffset(topic, p, end, startMarker)
			if marked[topic] == nil {
				marked[topic] = map[int32]int64{}
			}
			marked[topic][p] = end
			h.s.cfg.Logger.Info("new consumer group starts at the end of the partition (start_from: latest)",
				"topic", topic, "partition", p, "offset", end)
		}
	}
	if len(marked) == 0 {
		return nil
	}
	sess.Commit()
	for topic, ends := range marked {
		ps := make([]int32, 0, len(ends))
		for p := range ends {
			ps = append(ps, p)
		}
		offsets, err := h.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: ps})
		if err != nil {
			return fmt.Errorf("read back the start offsets of %s: %w", topic, err)
		}
		for p, end := range ends {
			if b := offsets.GetBlock(topic, p); b == nil || b.Offset < end {
				return fmt.Errorf("the start offset %d of %s/%d was not committed", end, topic, p)
			}
		}
	}
	return nil
}

func (h *groupHandler) Cleanup(sarama.ConsumerGroupSession) error {
	h.s.sessions.Add(-1)
	return nil
}

// ConsumeClaim runs one partition until it is revoked or the subscription
// ends. It never returns early: sarama ends the whole session when one
// partition's ConsumeClaim returns.
func (h *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	p := &partition{
		s: h.s, sess: sess, claim: claim, out: h.out, ctx: h.ctx,
		w:       NewWindow(h.s.cfg.Ordering, 0),
		records: map[int64]*sarama.ConsumerMessage{},
		running: map[int64]context.CancelFunc{},
		results: make(chan result),
		requeue: make(chan *sarama.ConsumerMessage),
		done:    make(chan struct{}),
	}
	p.replayedUntil, p.rewindMeta = h.rewoundUntil(claim)
	h.s.mu.Lock()
	h.s.partitions[p] = struct{}{}
	h.s.mu.Unlock()
	defer func() {
		h.s.mu.Lock()
		delete(h.s.partitions, p)
		h.s.mu.Unlock()
	}()
	p.run()
	return nil
}

// partition is the state of one claimed partition. Only its run goroutine
// changes it; mu guards the window for Partitions.
type partition struct {
	s     *Subscriber
	sess  sarama.ConsumerGroupSession
	claim sarama.ConsumerGroupClaim
	out   chan<- *message.Message
	ctx   context.Context

	mu sync.Mutex
	w  *Window

	// records holds the records taken and not finished, by offset.
	records map[int64]*sarama.ConsumerMessage
	// ready holds records that may start and wait for a slot.
	ready []*sarama.ConsumerMessage
	// running holds the records handed out whose result is due, with the
	// cancel func of their message's context.
	running map[int64]context.CancelFunc

	results chan result
	requeue chan *sarama.ConsumerMessage
	// done is closed when run returns: results and requeues after it are
	// dropped.
	done chan struct{}
	// orphaned says, once done is closed, that run gave up on records
	// still running (a revoke that timed out); they count in the
	// subscriber's orphans until they finish.
	orphaned bool
	// replayedUntil ends the range a rewind hands out again (0: none),
	// and rewindMeta is the rewind's commit metadata.
	replayedUntil int64
	rewindMeta    string
}

type result struct {
	rec   *sarama.ConsumerMessage
	acked bool
	// closed says that the subscriber closed before the record finished.
	closed bool
}

type topicPartition struct {
	topic     string
	partition int32
}

func (p *partition) tp() topicPartition {
	return topicPartition{p.claim.Topic(), p.claim.Partition()}
}

func (p *partition) stats() PartitionStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	st := PartitionStats{Topic: p.claim.Topic(), Partition: p.claim.Partition(), InFlight: p.w.InFlight(), Window: p.w.Span()}
	if t, ok := p.w.Oldest(); ok {
		st.Oldest = t
	}
	return st
}

// acquired counts a record whose slot was just taken as in flight: from
// here, so that Wait never sees zero while one is on its
// way to the router.
func (p *partition) acquired() { p.s.inFlight.Add(1) }

// release gives back a slot taken for a record.
func (p *partition) release() {
	p.s.inFlight.Add(-1)
	<-p.s.slots
}

// run takes records, hands them out as the ordering allows, and marks
// offsets as results come, until the partition is revoked or the
// subscription ends.
func (p *partition) run() {
	defer close(p.done)
	if !p.waitOrphans() {
		return
	}
	stop := p.s.stop
	stopped := false
	// pending is ready[0] as a message, once it holds a slot.
	var pending *message.Message
	var pendingCancel context.CancelFunc
	drop := func() {
		if pending != nil {
			pendingCancel()
			p.release()
			pending, pendingCancel = nil, nil
		}
	}
	defer drop()
	for {
		// A stop wins over everything else that is ready, so that nothing
		// is handed out once a loop has seen it (select picks at random).
		if !stopped {
			select {
			case <-stop:
				stopped, stop = true, nil
				drop()
			default:
			}
		}
		// Neither once stopped nor with a full window: the session's end
		// is seen through its context. (A cooperative rebalance that
		// revokes one partition would be seen once the window drains.)
		var in <-chan *sarama.ConsumerMessage
		if !stopped && p.window() < p.s.cfg.MaxWindow {
			in = p.claim.Messages()
		}
		var acquire chan<- struct{}
		var send chan<- *message.Message
		if !stopped && len(p.ready) > 0 {
			if pending == nil {
				acquire = p.s.slots
			} else {
				send = p.out
			}
		}
		select {
		case rec, ok := <-in:
			if !ok {
				drop()
				p.revoke()
				return
			}
			p.take(rec)
		case acquire <- struct{}{}:
			p.acquired()
			pending, pendingCancel = p.message(p.ready[0])
		case send <- pending:
			rec := p.ready[0]
			p.ready = p.ready[1:]
			p.running[rec.Offset] = pendingCancel
			go p.watch(pending, pendingCancel, rec)
			pending, pendingCancel = nil, nil
		case r := <-p.results:
			p.result(r)
		case rec := <-p.requeue:
			p.ready = append(p.ready, rec)
		case <-stop:
			// Seen at the top of the next loop.
		case <-p.sess.Context().Done():
			drop()
			p.revoke()
			return
		case <-p.ctx.Done():
			drop()
			p.revoke()
			return
		}
	}
}

// waitOrphans waits, at most RevokeTimeout, until no record of this
// partition that an earlier claim gave up on is still running, so that a
// partition claimed again never has the same record, or two of one key, in
// flight at once. It reports false when the claim ended meanwhile.
func (p *partition) waitOrphans() bool {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(p.s.cfg.RevokeTimeout)
	for n := p.s.orphansOf(p.tp()); n > 0; n = p.s.orphansOf(p.tp()) {
		if time.Now().After(deadline) {
			p.s.cfg.Logger.Warn("partition claimed again with records of its last claim still running; going on",
				"topic", p.claim.Topic(), "partition", p.claim.Partition(), "running", n)
			return true
		}
		select {
		case <-tick.C:
		case <-p.sess.Context().Done():
			return false
		case <-p.ctx.Done():
			return false
		}
	}
	return true
}

func (p *partition) window() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.w.Span()
}

// take adds a record from Kafka to the window.
func (p *partition) take(rec *sarama.ConsumerMessage) {
	p.mu.Lock()
	start, err := p.w.Add(rec.Offset, rec.Key, time.Now())
	p.mu.Unlock()
	if err != nil {
		// An offset at or below one already taken: sarama hands a claim's
		// records out in offset order, so this one was taken before.
		p.s.cfg.Logger.Warn("kafka record taken twice; ignored", "topic", rec.Topic, "partition", rec.Partition, "err", err)
		return
	}
	p.records[rec.Offset] = rec
	if start {
		p.ready = append(p.ready, rec)
	}
}

// message builds the message that hands rec out, with its origin in the
// context. The context is cancelled when the record finishes.
func (p *partition) message(rec *sarama.ConsumerMessage) (*message.Message, context.CancelFunc) {
	msg, err := p.s.cfg.Unmarshaler.Unmarshal(rec)
	if err != nil || msg == nil {
		p.s.cfg.Logger.Error("kafka record could not be unmarshaled; handing on its raw value",
			"topic", rec.Topic, "partition", rec.Partition, "offset", rec.Offset, "err", err)
		msg = message.NewMessage(record.ID(rec.Topic, rec.Partition, rec.Offset), rec.Value)
	}
	ctx := record.WithOrigin(p.ctx, record.Origin{
		Topic: rec.Topic, Partition: rec.Partition, Offset: rec.Offset, Key: rec.Key, Timestamp: rec.Timestamp,
		Replayed: rec.Offset < p.replayedUntil,
	})
	ctx, cancel := context.WithCancel(ctx)
	msg.SetContext(ctx)
	return msg, cancel
}

// watch waits for the message's ack or nack and reports it to run.
func (p *partition) watch(msg *message.Message, cancel context.CancelFunc, rec *sarama.ConsumerMessage) {
	r := result{rec: rec}
	select {
	case <-msg.Acked():
		r.acked = true
	case <-msg.Nacked():
	case <-p.s.ctx.Done():
		// Closed with the record in flight: an ack that came already still
		// counts; run marks it before it lets the partition go.
		select {
		case <-msg.Acked():
			r.acked = true
		default:
			r.closed = true
		}
	}
	cancel()
	select {
	case p.results <- r:
	case <-p.done:
		// The partition was let go: the next owner handles the record
		// again.
		p.release()
		if p.orphaned {
			p.s.orphanDone(p.tp())
		}
	}
}

// result finishes an acked record, or schedules a nacked one again.
func (p *partition) result(r result) {
	delete(p.running, r.rec.Offset)
	p.release()
	if r.closed {
		return
	}
	if !r.acked {
		rec := r.rec
		time.AfterFunc(p.s.cfg.NackDelay, func() {
			select {
			case p.requeue <- rec:
			case <-p.done:
			}
		})
		return
	}
	p.mu.Lock()
	next, commit, err := p.w.Finish(r.rec.Offset, r.rec.Key)
	p.mu.Unlock()
	if err != nil {
		p.s.cfg.Logger.Error("kafka record finished twice", "topic", r.rec.Topic, "partition", r.rec.Partition, "err", err)
		return
	}
	delete(p.records, r.rec.Offset)
	if next >= 0 {
		p.ready = append(p.ready, p.records[next])
	}
	meta := ""
	if commit < p.replayedUntil {
		meta = p.rewindMeta
	}
	p.sess.MarkOffset(r.rec.Topic, r.rec.Partition, commit, meta)
}

// revoke lets the partition go: it hands nothing more out, waits (at most
// RevokeTimeout, and not at all once the subscriber closes) for the
// records in flight, marks what they finished, and drops the rest. Records
// still running when it gives up have their contexts cancelled, and a new
// claim of the partition on this member waits for them (waitOrphans).
func (p *partition) revoke() {
	p.ready = nil
	if len(p.running) == 0 {
		return
	}
	timer := time.NewTimer(p.s.cfg.RevokeTimeout)
	defer timer.Stop()
	for len(p.running) > 0 {
		select {
		case r := <-p.results:
			if r.acked {
				p.result(r)
				continue
			}
			delete(p.running, r.rec.Offset)
			p.release()
		case <-p.requeue:
		case <-timer.C:
			p.s.cfg.Logger.Warn("partition revoked with records in flight; cancelling them, and the next owner handles them again",
				"topic", p.claim.Topic(), "partition", p.claim.Partition(), "in_flight", len(p.running))
			p.giveUp()
			return
		case <-p.s.ctx.Done():
			// Every record still running reports at once (acked, or
			// closed): mark the acks that came, give up the rest.
			for len(p.running) > 0 {
				r := <-p.results
				if r.acked {
					p.result(r)
					continue
				}
				delete(p.running, r.rec.Offset)
				p.release()
			}
			return
		}
	}
}

// giveUp cancels the records still running and counts them as orphans of
// the partition until they finish.
func (p *partition) giveUp() {
	p.s.addOrphans(p.tp(), len(p.running))
	p.orphaned = true
	for _, cancel := range p.running {
		cancel()
	}
}
