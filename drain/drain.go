// Package drain lets a Kafka consumer stop taking records while the ones it
// already took finish and have their offsets marked, so that a clean stop
// neither loses nor repeats work.
//
// Watermill-kafka's subscriber can only stop by closing, which abandons
// the record in flight on each partition: its handler may still finish,
// but its offset is never marked, so it is handled again after a restart.
// A Gate sits between sarama's consumer group and watermill-kafka (through
// the subscriber's SaramaTracer hook) and does the first half of a stop on
// its own.
package drain

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill-kafka/v3/pkg/kafka"
)

// Gate counts the records handed to the subscriber and not yet marked, and
// stops handing out records once Drain is called. The zero value is not
// usable; call New.
type Gate struct {
	stop     chan struct{}
	stopOnce sync.Once
	inFlight atomic.Int64
	sessions atomic.Int64
}

// New returns an open gate.
func New() *Gate {
	return &Gate{stop: make(chan struct{})}
}

var _ kafka.SaramaTracer = (*Gate)(nil)

// InFlight returns how many records were handed out and not yet marked.
func (g *Gate) InFlight() int64 { return g.inFlight.Load() }

// InSession reports whether a consumer group session is live: the group
// was joined and this consumer takes part, with or without partitions.
func (g *Gate) InSession() bool { return g.sessions.Load() > 0 }

// Drain stops handing out records and waits until every record already
// handed out was marked, or its partition was revoked, or ctx is done.
func (g *Gate) Drain(ctx context.Context) error {
	g.Stop()
	return g.Wait(ctx)
}

// Stop stops handing out records; records already handed out go on.
func (g *Gate) Stop() {
	g.stopOnce.Do(func() { close(g.stop) })
}

// Wait waits until every record handed out was marked, or its partition
// was revoked, or ctx is done.
func (g *Gate) Wait(ctx context.Context) error {
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for g.inFlight.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
	return nil
}

// WrapConsumerGroupHandler puts the gate in front of h.
func (g *Gate) WrapConsumerGroupHandler(h sarama.ConsumerGroupHandler) sarama.ConsumerGroupHandler {
	return handler{ConsumerGroupHandler: h, gate: g}
}

// WrapConsumer returns c: the gate only works with consumer groups.
func (g *Gate) WrapConsumer(c sarama.Consumer) sarama.Consumer { return c }

// WrapPartitionConsumer returns pc: the gate only works with consumer groups.
func (g *Gate) WrapPartitionConsumer(pc sarama.PartitionConsumer) sarama.PartitionConsumer {
	return pc
}

// WrapSyncProducer returns p unchanged.
func (g *Gate) WrapSyncProducer(_ *sarama.Config, p sarama.SyncProducer) sarama.SyncProducer {
	return p
}

type handler struct {
	sarama.ConsumerGroupHandler
	gate *Gate
}

func (h handler) Setup(sess sarama.ConsumerGroupSession) error {
	if err := h.ConsumerGroupHandler.Setup(sess); err != nil {
		return err
	}
	h.gate.sessions.Add(1)
	return nil
}

func (h handler) Cleanup(sess sarama.ConsumerGroupSession) error {
	h.gate.sessions.Add(-1)
	return h.ConsumerGroupHandler.Cleanup(sess)
}

// ConsumeClaim hands the claim's records on one at a time until the gate
// closes. It never closes the records channel early: sarama ends the whole
// session when one partition's ConsumeClaim returns.
func (h handler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	st := &claimState{gate: h.gate}
	done := make(chan struct{})
	defer st.end()
	defer close(done)

	records := make(chan *sarama.ConsumerMessage)
	go func() {
		defer close(records)
		// Records not handed on are left unmarked; after a stop or a
		// rebalance they are consumed again from the committed offset.
		defer func() {
			for range claim.Messages() {
			}
		}()
		for {
			select {
			case <-h.gate.stop:
				return
			case rec, ok := <-claim.Messages():
				if !ok || !st.handOut() {
					return
				}
				select {
				case records <- rec:
				case <-h.gate.stop:
					st.settle()
					return
				case <-done:
					st.settle()
					return
				}
			}
		}
	}()
	return h.ConsumerGroupHandler.ConsumeClaim(
		session{ConsumerGroupSession: sess, st: st},
		gatedClaim{ConsumerGroupClaim: claim, records: records},
	)
}

// claimState counts one claim's records that were handed on and are not
// yet marked. When the claim ends they stop counting: whoever owns the
// partition next consumes them again.
type claimState struct {
	gate    *Gate
	mu      sync.Mutex
	pending int64
	ended   bool
}

func (c *claimState) handOut() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.ended {
		return false
	}
	c.pending++
	c.gate.inFlight.Add(1)
	return true
}

// settle records that one handed-out record was marked or taken back.
func (c *claimState) settle() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.pending > 0 {
		c.pending--
		c.gate.inFlight.Add(-1)
	}
}

func (c *claimState) end() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.ended = true
	c.gate.inFlight.Add(-c.pending)
	c.pending = 0
}

type gatedClaim struct {
	sarama.ConsumerGroupClaim
	records chan *sarama.ConsumerMessage
}

func (c gatedClaim) Messages() <-chan *sarama.ConsumerMessage { return c.records }

type session struct {
	sarama.ConsumerGroupSession
	st *claimState
}

func (s session) MarkMessage(msg *sarama.ConsumerMessage, metadata string) {
	s.ConsumerGroupSession.MarkMessage(msg, metadata)
	s.st.settle()
}
