package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/events"
	"github.com/eventrouter/eventrouter/handlers"
	"github.com/eventrouter/eventrouter/kafka/poison"
	"github.com/eventrouter/eventrouter/kafka/record"
	"github.com/eventrouter/eventrouter/ledger"
	"github.com/eventrouter/eventrouter/ops/console"
)

// consoleSource is what the console reads and does, from the running
// daemon and the brokers.
type consoleSource struct {
	d *Daemon
	// mask hides email addresses in what a console without a token shows
	// to whoever reaches it.
	mask   bool
	client sarama.Client
	admin  sarama.ClusterAdmin

	mu       sync.Mutex
	producer sarama.SyncProducer
	reader   sarama.Consumer
	// reading holds the one read of the poison topic at a time.
	reading chan struct{}
}

var _ console.Source = (*consoleSource)(nil)

func (s *consoleSource) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer != nil {
		_ = s.producer.Close()
	}
	if s.reader != nil {
		_ = s.reader.Close()
	}
}

func (s *consoleSource) Routes() []console.Route {
	d := s.d
	var out []console.Route
	for _, r := range d.cfg.Routes {
		cr := console.Route{
			Name: r.Name, Handler: r.Handler, Topic: r.SubscribeTopic, Group: r.ConsumerGroup, PoisonTopic: r.PoisonTopic,
			Handled:  counterValue(d.metrics.handled.WithLabelValues(r.Name)),
			Retried:  counterValue(d.metrics.retried.WithLabelValues(r.Name)),
			Poisoned: counterValue(d.metrics.poisoned.WithLabelValues(r.Name)),
			Errors:   d.failures[r.Name].list(),
		}
		if s.mask {
			for i := range cr.Errors {
				cr.Errors[i].Message = events.MaskEmails(cr.Errors[i].Message)
			}
		}
		sub := d.subs[r.Name]
		select {
		case <-d.running:
			cr.State = "running"
		default:
			cr.State = "starting"
		}
		if sub != nil {
			cr.InFlight = sub.InFlight()
			if cr.State == "running" && !sub.InSession() {
				cr.State = "joining"
			}
		}
		if b := d.breakers[r.Name]; b != nil {
			if paused, cause := b.Paused(); paused {
				cr.State, cr.Cause = "paused", cause.Error()
			}
		}
		if d.stopping.Load() {
			cr.State = "draining"
		}
		if s.mask {
			cr.Cause = events.MaskEmails(cr.Cause)
		}
		out = append(out, cr)
	}
	return out
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		return 0
	}
	return m.GetCounter().GetValue()
}

func (s *consoleSource) route(name string) (config.Route, bool) {
	for _, r := range s.d.cfg.Routes {
		if r.Name == name {
			return r, true
		}
	}
	return config.Route{}, false
}

func (s *consoleSource) Partitions(ctx context.Context, name string) ([]console.Partition, error) {
	r, ok := s.route(name)
	if !ok {
		return nil, fmt.Errorf("no route %q", name)
	}
	return within(ctx, func() ([]console.Partition, error) {
		offsets, err := groupOffsets(s.client, s.admin, r)
		if err != nil {
			return nil, err
		}
		mine := map[int32]console.Partition{}
		if sub := s.d.subs[r.Name]; sub != nil {
			for _, st := range sub.Partitions() {
				if st.Topic != r.SubscribeTopic {
					continue
				}
				p := console.Partition{Owned: true, Uncommitted: st.Window}
				if !st.Oldest.IsZero() {
					p.Oldest = time.Since(st.Oldest)
				}
				mine[st.Partition] = p
			}
		}
		out := make([]console.Partition, 0, len(offsets))
		for _, o := range offsets {
			cp := mine[o.partition]
			cp.Partition, cp.Committed, cp.End, cp.Lag = o.partition, o.committed, o.end, o.lag
			out = append(out, cp)
		}
		return out, nil
	})
}

// poisonScan bounds how many of a poison partition's newest records the
// explorer reads.
const poisonScan = 1000

// consoleIdle is how long a poison partition may send nothing before the
// explorer takes it as read.
const consoleIdle = 2 * time.Second

// maxShown bounds a payload as the console shows it.
const maxShown = 4096

func (s *consoleSource) Poisoned(ctx context.Context, name string, q console.Query) ([]console.Poisoned, error) {
	r, ok := s.route(name)
	if !ok {
		return nil, fmt.Errorf("no route %q", name)
	}
	recs, err := s.read(ctx, r.PoisonTopic, nil)
	if err != nil {
		return nil, err
	}
	var out []console.Poisoned
	for _, m := range recs {
		p := console.Poisoned{Ref: console.Ref{Partition: m.Partition, Offset: m.Offset}, Time: m.Timestamp, Key: string(m.Key), Headers: map[string]string{}}
		for _, h := range m.Headers {
			if h != nil {
				p.Headers[string(h.Key)] = string(h.Value)
			}
		}
		// The poison topic is the route's own, but a record may name
		// another handler: one written by a tool, or by an older config.
		if h := p.Headers[middleware.PoisonedHandlerKey]; h != "" && h != r.Name {
			continue
		}
		p.Reason = p.Headers[middleware.ReasonForPoisonedKey]
		if q.Reason != "" && !strings.Contains(p.Reason, q.Reason) || !q.Since.IsZero() && p.Time.Before(q.Since) {
			continue
		}
		p.Payload = pretty(m.Value)
		if s.mask {
			p.Payload, p.Reason, p.Key = events.MaskEmails(p.Payload), events.MaskEmails(p.Reason), events.MaskEmails(p.Key)
			for k, v := range p.Headers {
				p.Headers[k] = events.MaskEmails(v)
			}
		}
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].Time.Equal(out[j].Time) {
			return out[i].Time.After(out[j].Time)
		}
		return out[i].Offset > out[j].Offset
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

// pretty shows a payload: indented when it is JSON, cut to maxShown.
func pretty(v []byte) string {
	var b bytes.Buffer
	if json.Valid(v) && json.Indent(&b, v, "", "  ") == nil {
		v = b.Bytes()
	}
	if len(v) > maxShown {
		return strings.ToValidUTF8(string(v[:maxShown]), "") + fmt.Sprintf("\n… (%d bytes)", len(v))
	}
	return strings.ToValidUTF8(string(v), "\uFFFD")
}

// read returns the newest records of topic, up to poisonScan a partition,
// or, with only set, those records alone.
func (s *consoleSource) read(ctx context.Context, topic string, only map[int32][]int64) ([]*sarama.ConsumerMessage, error) {
	return within(ctx, func() ([]*sarama.ConsumerMessage, error) {
		if err := s.client.RefreshMetadata(topic); err != nil {
			if errors.Is(err, sarama.ErrUnknownTopicOrPartition) {
				return nil, nil
			}
			return nil, err
		}
		partitions, err := s.client.Partitions(topic)
		if err != nil {
			return nil, err
		}
		consumer, err := s.consumer()
		if err != nil {
			return nil, err
		}
		// One read at a time: a consumer takes a partition once, until it
		// is closed, and the live page, the explorer and a replay may read
		// the same one at once.
		select {
		case s.reading <- struct{}{}:
			defer func() { <-s.reading }()
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		var out []*sarama.ConsumerMessage
		for _, p := range partitions {
			oldest, err := s.client.GetOffset(topic, p, sarama.OffsetOldest)
			if err != nil {
				return nil, err
			}
			end, err := s.client.GetOffset(topic, p, sarama.OffsetNewest)
			if err != nil {
				return nil, err
			}
			from := max(oldest, end-poisonScan)
			want := only[p]
			if only != nil {
				if len(want) == 0 {
					continue
				}
				from = max(oldest, slices.Min(want))
				end = min(end, slices.Max(want)+1)
			}
			if from >= end {
				continue
			}
			pc, err := consumer.ConsumePartition(topic, p, from)
			if err != nil {
				return nil, err
			}
			// Offsets may have gaps (transaction markers, compaction): a
			// partition that sends nothing for a while has nothing more.
			idle := time.NewTimer(consoleIdle)
		records:
			for next := from; next < end; {
				select {
				case m, ok := <-pc.Messages():
					if !ok {
						// sarama closes it on an error it does not return,
						// such as the offset falling out of retention.
						idle.Stop()
						_ = pc.Close()
						return nil, fmt.Errorf("reading %s/%d stopped", topic, p)
					}
					next = m.Offset + 1
					if only == nil || slices.Contains(want, m.Offset) {
						out = append(out, m)
					}
					idle.Reset(consoleIdle)
				case err := <-pc.Errors():
					idle.Stop()
					_ = pc.Close()
					return nil, err
				case <-idle.C:
					break records
				case <-ctx.Done():
					idle.Stop()
					_ = pc.Close()
					return nil, ctx.Err()
				}
			}
			idle.Stop()
			// Closed before the next read may take the partition again.
			_ = pc.Close()
		}
		return out, nil
	})
}

func (s *consoleSource) Replay(ctx context.Context, name string, refs []console.Ref) (int, []string, error) {
	r, ok := s.route(name)
	if !ok {
		return 0, nil, fmt.Errorf("no route %q", name)
	}
	rules, err := poison.RulesFor(s.d.cfg.Routes, r.PoisonTopic, "", "")
	if err != nil {
		return 0, nil, err
	}
	only := map[int32][]int64{}
	for _, ref := range refs {
		only[ref.Partition] = append(only[ref.Partition], ref.Offset)
	}
	recs, err := s.read(ctx, r.PoisonTopic, only)
	if err != nil {
		return 0, nil, err
	}
	producer, err := s.syncProducer()
	if err != nil {
		return 0, nil, err
	}
	var skipped []string
	found := map[console.Ref]bool{}
	n := 0
	for _, m := range recs {
		ref := console.Ref{Partition: m.Partition, Offset: m.Offset}
		found[ref] = true
		plan := rules.Plan(record.ID(m.Topic, m.Partition, m.Offset), m.Headers)
		handler := ""
		for _, h := range m.Headers {
			if h != nil && string(h.Key) == middleware.PoisonedHandlerKey {
				handler = string(h.Value)
			}
		}
		switch {
		case handler != "" && handler != r.Name:
			skipped = append(skipped, fmt.Sprintf("%d/%d: poisoned by route %s", m.Partition, m.Offset, handler))
			continue
		case plan.Skip != "":
			skipped = append(skipped, fmt.Sprintf("%d/%d: %s", m.Partition, m.Offset, plan.Skip))
			continue
		}
		msg := &sarama.ProducerMessage{Topic: plan.Target, Headers: plan.Headers}
		if m.Key != nil {
			msg.Key = sarama.ByteEncoder(m.Key)
		}
		if m.Value != nil {
			msg.Value = sarama.ByteEncoder(m.Value)
		}
		if _, _, err := producer.SendMessage(msg); err != nil {
			return n, skipped, fmt.Errorf("replay %d/%d: %w", m.Partition, m.Offset, err)
		}
		n++
	}
	for _, ref := range refs {
		if !found[ref] {
			skipped = append(skipped, fmt.Sprintf("%d/%d: no longer in %s", ref.Partition, ref.Offset, r.PoisonTopic))
		}
	}
	return n, skipped, nil
}

// consumer returns the console's consumer, on a client of its own: its
// fetches must not wait in line with readiness and the lag metric.
func (s *consoleSource) consumer() (sarama.Consumer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.reader == nil {
		c := s.d.kafka.Config()
		c.ClientID = s.d.cfg.Kafka.ClientID + "-console"
		c.Consumer.Return.Errors = true
		c.Metadata.AllowAutoTopicCreation = false
		consumer, err := sarama.NewConsumer(s.d.kafka.Brokers(), c)
		if err != nil {
			return nil, fmt.Errorf("connect consumer: %w", err)
		}
		s.reader = consumer
	}
	return s.reader, nil
}

func (s *consoleSource) syncProducer() (sarama.SyncProducer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.producer == nil {
		c := s.d.kafka.Publisher()
		c.ClientID = s.d.cfg.Kafka.ClientID + "-console"
		// A replay goes to a route's topic, which exists.
		c.Metadata.AllowAutoTopicCreation = false
		p, err := sarama.NewSyncProducer(s.d.kafka.Brokers(), c)
		if err != nil {
			return nil, fmt.Errorf("connect producer: %w", err)
		}
		s.producer = p
	}
	return s.producer, nil
}

func (s *consoleSource) Sent(ctx context.Context, user string) ([]console.Sent, error) {
	l := s.d.opened.Load()
	if l == nil {
		return nil, errors.New("the ledger is not open")
	}
	key := handlers.WelcomeTemplate + "/" + user
	type found struct {
		e  ledger.Entry
		ok bool
	}
	f, err := within(ctx, func() (found, error) {
		e, ok, err := (*l).Lookup(key)
		return found{e, ok}, err
	})
	if err != nil || !f.ok {
		return nil, err
	}
	return []console.Sent{{Template: handlers.WelcomeTemplate, EventID: f.e.EventID, Channel: f.e.Channel, SentAt: f.e.SentAt, Published: f.e.Published}}, nil
}

// failures keeps a route's last failed attempts for the console.
type failures struct {
	mu   sync.Mutex
	last []console.Error
}

// maxFailures bounds the attempts a route keeps.
const maxFailures = 20

func (f *failures) add(msg *message.Message, err error) {
	if f == nil {
		return
	}
	e := console.Error{Time: time.Now(), CorrelationID: middleware.MessageCorrelationID(msg), Message: err.Error()}
	if o, ok := record.OriginFrom(msg.Context()); ok {
		e.Record = o.Topic + "/" + strconv.Itoa(int(o.Partition)) + "/" + strconv.FormatInt(o.Offset, 10)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last = append([]console.Error{e}, f.last...)
	if len(f.last) > maxFailures {
		f.last = f.last[:maxFailures]
	}
}

func (f *failures) list() []console.Error {
	if f == nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.last)
}
