package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"golang.org/x/sync/singleflight"
)

// kafkaHealth is what readiness says of the Kafka cluster: whether the
// routes can work, and what is down that they can do without.
type kafkaHealth struct {
	// problem is why the routes cannot work now, or "".
	problem string
	// degraded names what is down or missing while the routes still work,
	// or "".
	degraded string
}

const (
	// kafkaCheckBudget bounds one look at the cluster; the readiness
	// request as a whole has 5 s.
	kafkaCheckBudget = 4 * time.Second
	// kafkaCheckReuse is how long a look's answer serves other probes, so
	// that frequent probes cost the brokers one look a second.
	kafkaCheckReuse = time.Second
	// minInSyncReuse is how long a topic's min.insync.replicas, or the
	// failure to read it, is kept before it is asked again: operators
	// change it rarely.
	minInSyncReuse = 5 * time.Minute
	// dialBudget bounds the wait for the brokers' first answers, and
	// askBudget each request to one broker after that, so that a broker
	// that accepts connections but never answers costs the look a second
	// or two, not all of it.
	dialBudget = 1500 * time.Millisecond
	askBudget  = 1500 * time.Millisecond
)

// kafkaChecker runs one look at the cluster at a time and shares it.
type kafkaChecker struct {
	flight singleflight.Group
	mu     sync.Mutex
	last   kafkaHealth
	at     time.Time
	// minISR is each written topic's min.insync.replicas as last asked.
	minISR map[string]minInSyncAnswer
}

// minInSyncAnswer is a topic's min.insync.replicas, or why it is not
// known, as a broker said at a time.
type minInSyncAnswer struct {
	n   int
	err string
	at  time.Time
}

// checkKafka says whether the Kafka cluster can serve the routes. Callers
// at once share one look (inspectKafka), and a look serves for
// kafkaCheckReuse; one that outlives ctx goes on, within its own budget,
// for the next caller.
func (d *Daemon) checkKafka(ctx context.Context) kafkaHealth {
	k := &d.kafkaCheck
	k.mu.Lock()
	if time.Since(k.at) < kafkaCheckReuse {
		defer k.mu.Unlock()
		return k.last
	}
	k.mu.Unlock()
	ch := k.flight.DoChan("kafka", func() (any, error) {
		lctx, cancel := context.WithTimeout(context.Background(), kafkaCheckBudget)
		defer cancel()
		h := d.inspectKafka(lctx)
		k.mu.Lock()
		k.last, k.at = h, time.Now()
		k.mu.Unlock()
		return h, nil
	})
	select {
	case r := <-ch:
		return r.Val.(kafkaHealth)
	case <-ctx.Done():
		return kafkaHealth{problem: "the brokers did not answer in time"}
	}
}

// partitionState is where one partition of a route's topics stands.
type partitionState struct {
	topic     string
	partition int32
	leader    int32
	isr       []int32
	// written is set for the topics the routes write to, where a write
	// needs min.insync.replicas replicas in sync (acks=all).
	written bool
}

// inspectKafka dials every broker the clients know, each on a connection
// of its own, and asks one that answers for the routes' topics, with the
// cluster's brokers as they are now, their groups' coordinators and the
// written topics' min.insync.replicas: fresh answers, not the clients'
// cached ones. The routes cannot work while a partition of their topics
// has no leader that answers, while a topic they write to has fewer
// in-sync replicas that answer than its min.insync.replicas, or while a
// group's coordinator does not answer. A broker down that they can do
// without, or a topic that does not exist yet, leaves them ready, named as
// degraded.
func (d *Daemon) inspectKafka(ctx context.Context) kafkaHealth {
	targets := map[int32]string{}
	for _, b := range d.probe.Brokers() {
		targets[b.ID()] = b.Addr()
	}
	if len(targets) == 0 {
		// The clients never had an answer: the bootstrap addresses, with
		// ids of their own.
		for i, addr := range d.kafka.Brokers() {
			targets[int32(-1-i)] = addr
		}
	}
	dctx, cancel := context.WithTimeout(ctx, dialBudget)
	conns, down := d.dialBrokers(dctx, targets)
	cancel()
	defer func() {
		// A request that outlived its budget holds its broker's lock
		// until its read times out; Close waits for it.
		for _, b := range conns {
			go b.Close()
		}
	}()
	if len(conns) == 0 {
		return kafkaHealth{problem: "broker does not answer: " + strings.Join(slices.Sorted(maps.Values(down)), "; ")}
	}

	written := map[string]bool{}
	var topics []string
	for _, r := range d.cfg.Routes {
		for i, t := range []string{r.SubscribeTopic, r.PublishTopic, r.PoisonTopic} {
			if t == "" {
				continue
			}
			if _, ok := written[t]; !ok {
				topics = append(topics, t)
			}
			written[t] = written[t] || i > 0
		}
	}
	version := d.probe.Config().Version
	l := &look{conns: conns, slow: map[int32]bool{}}
	meta, err := ask(ctx, l, func(b *sarama.Broker) (*sarama.MetadataResponse, error) {
		return b.GetMetadata(sarama.NewMetadataRequest(version, topics))
	})
	if err != nil {
		return kafkaHealth{problem: "brokers answer but not with the routes' topics: " + err.Error()}
	}
	// The brokers of this answer are the cluster's now: one missing was
	// fenced by the controllers; one the clients did not know yet is
	// dialed too.
	addrs := map[int32]string{}
	unknown := map[int32]string{}
	seeds := map[string]int32{}
	for id, addr := range targets {
		if id < 0 {
			seeds[addr] = id
		}
	}
	for _, b := range meta.Brokers {
		id, addr := b.ID(), b.Addr()
		addrs[id] = addr
		if dialed, ok := targets[id]; ok && dialed == addr {
			continue
		}
		// Dialed at another address: that answer is not this broker's.
		if c, ok := conns[id]; ok {
			go c.Close()
			delete(conns, id)
		}
		delete(down, id)
		// Dialed already as a bootstrap address.
		if seed, ok := seeds[addr]; ok {
			if c, ok := conns[seed]; ok {
				conns[id] = c
				delete(conns, seed)
			} else {
				down[id] = fmt.Sprintf("broker %d at %s%s", id, addr, strings.TrimPrefix(down[seed], fmt.Sprintf("broker %d at %s", seed, addr)))
			}
			continue
		}
		unknown[id] = addr
	}
	if len(unknown) > 0 {
		dctx, cancel := context.WithTimeout(ctx, dialBudget)
		more, moreDown := d.dialBrokers(dctx, unknown)
		cancel()
		maps.Copy(conns, more)
		maps.Copy(down, moreDown)
	}
	// Only the brokers of the answer count, as replicas name them below;
	// the bootstrap addresses' own ids go.
	for id := range down {
		if _, listed := addrs[id]; !listed {
			delete(down, id)
		}
	}

	var problems, missing []string
	coordinators := map[string]int32{}
	for _, r := range d.cfg.Routes {
		group := r.ConsumerGroup
		if _, ok := coordinators[group]; ok {
			continue
		}
		id, err := ask(ctx, l, func(b *sarama.Broker) (int32, error) {
			return findCoordinator(b, version, group)
		})
		if err != nil {
			problems = append(problems, "group "+group+" has no coordinator: "+err.Error())
			continue
		}
		coordinators[group] = id
	}

	var parts []partitionState
	ids := map[int32]bool{}
	for _, m := range meta.Topics {
		switch {
		case errors.Is(m.Err, sarama.ErrNoError):
		case errors.Is(m.Err, sarama.ErrUnknownTopicOrPartition):
			// The first write creates it, where the brokers create
			// topics; where they do not, that write pauses the route.
			missing = append(missing, m.Name)
			continue
		default:
			problems = append(problems, "topic "+m.Name+": "+m.Err.Error())
			continue
		}
		for _, p := range m.Partitions {
			parts = append(parts, partitionState{topic: m.Name, partition: p.ID, leader: p.Leader, isr: p.Isr, written: written[m.Name]})
			for _, id := range p.Replicas {
				ids[id] = true
			}
		}
	}
	for _, id := range coordinators {
		ids[id] = true
	}
	for id := range ids {
		if _, ok := addrs[id]; !ok {
			down[id] = "broker " + strconv.Itoa(int(id)) + " is not in the cluster's metadata"
		}
	}
	minISR, unknownISR := d.minInSync(ctx, l, parts)

	var noLeader, fewInSync, groups []string
	for _, p := range parts {
		name := p.topic + "/" + strconv.Itoa(int(p.partition))
		if _, ok := down[p.leader]; p.leader < 0 || ok {
			noLeader = append(noLeader, name)
			continue
		}
		if !p.written {
			continue
		}
		answering := 0
		for _, id := range p.isr {
			if _, ok := down[id]; !ok {
				answering++
			}
		}
		if need := minISR[p.topic]; answering < need {
			fewInSync = append(fewInSync, fmt.Sprintf("%s (%d of %d needed)", name, answering, need))
		}
	}
	for group, id := range coordinators {
		if _, ok := down[id]; ok {
			groups = append(groups, group)
		}
	}
	slices.Sort(noLeader)
	slices.Sort(fewInSync)
	slices.Sort(groups)
	if len(noLeader) > 0 {
		problems = append(problems, "partitions without a leader that answers: "+few(noLeader))
	}
	if len(fewInSync) > 0 {
		problems = append(problems, "partitions with fewer in-sync replicas that answer than min.insync.replicas, so no write can succeed: "+few(fewInSync))
	}
	if len(groups) > 0 {
		problems = append(problems, "the coordinator of group "+strings.Join(groups, ", ")+" does not answer")
	}

	var notes []string
	if len(down) > 0 {
		known := maps.Clone(ids)
		for id := range addrs {
			known[id] = true
		}
		notes = append(notes, fmt.Sprintf("%d of %d brokers do not answer (%s)", len(down), len(known), strings.Join(slices.Sorted(maps.Values(down)), "; ")))
	}
	var after []string
	if len(unknownISR) > 0 {
		after = append(after, "min.insync.replicas counted as 1, as it could not be read: "+strings.Join(unknownISR, "; "))
	}
	if len(problems) > 0 {
		return kafkaHealth{problem: strings.Join(slices.Concat(notes, problems, after), "; ")}
	}
	if len(notes) > 0 {
		notes[0] += "; every partition of the routes' topics still has a leader and enough in-sync replicas"
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		notes = append(notes, "topics not created yet: "+strings.Join(missing, ", "))
	}
	return kafkaHealth{degraded: strings.Join(append(notes, after...), "; ")}
}

// within runs f and returns what it returns, or ctx's error once ctx is
// done: sarama's calls take no context. f goes on then, and what it
// returns is dropped. It starts nothing once ctx is done.
func within[T any](ctx context.Context, f func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("kafka: no time left: %w", err)
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		v, err := f()
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		return r.v, r.err
	case <-ctx.Done():
		return zero, fmt.Errorf("kafka did not answer in time: %w", ctx.Err())
	}
}

// few lists the first five names and how many more there are.
func few(names []string) string {
	if len(names) <= 5 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
}

// dialBrokers opens a connection of its own to each broker and asks it for
// its API versions. It returns the connections of those that answered
// before ctx was done, and why each other one did not.
func (d *Daemon) dialBrokers(ctx context.Context, addrs map[int32]string) (map[int32]*sarama.Broker, map[int32]string) {
	cfg := d.kafka.Config()
	cfg.ClientID = d.cfg.Kafka.ClientID + "-ops"
	cfg.Net.DialTimeout = 3 * time.Second
	cfg.Net.ReadTimeout = 3 * time.Second
	cfg.Net.WriteTimeout = 3 * time.Second
	type answer struct {
		id  int32
		b   *sarama.Broker
		err error
	}
	answers := make(chan answer, len(addrs))
	for id, addr := range addrs {
		go func() {
			b := sarama.NewBroker(addr)
			err := b.Open(cfg)
			if err == nil {
				_, err = b.ApiVersions(&sarama.ApiVersionsRequest{})
			}
			if err != nil {
				_ = b.Close()
				b = nil
			}
			answers <- answer{id, b, err}
		}()
	}
	conns := map[int32]*sarama.Broker{}
	down := map[int32]string{}
	for id, addr := range addrs {
		down[id] = fmt.Sprintf("broker %d at %s does not answer in time", id, addr)
	}
	for pending := len(addrs); pending > 0; pending-- {
		select {
		case a := <-answers:
			if a.err != nil {
				down[a.id] = fmt.Sprintf("broker %d at %s: %v", a.id, addrs[a.id], a.err)
				continue
			}
			conns[a.id] = a.b
			delete(down, a.id)
		case <-ctx.Done():
			// The late answers' connections are closed as they come.
			go func() {
				for ; pending > 0; pending-- {
					if a := <-answers; a.b != nil {
						_ = a.b.Close()
					}
				}
			}()
			return conns, down
		}
	}
	return conns, down
}

// look is the connections of one look at the cluster, and the brokers
// that let a request of it time out: such a broker holds its connection
// until the read times out, so it is asked last from then on.
type look struct {
	conns map[int32]*sarama.Broker
	slow  map[int32]bool
}

// ask calls f with the answering brokers in turn, lowest id first and the
// slow ones last, each for at most askBudget, until one call succeeds or
// ctx is done.
func ask[T any](ctx context.Context, l *look, f func(*sarama.Broker) (T, error)) (T, error) {
	ids := slices.Sorted(maps.Keys(l.conns))
	slices.SortStableFunc(ids, func(a, b int32) int {
		switch {
		case l.slow[a] == l.slow[b]:
			return 0
		case l.slow[a]:
			return 1
		}
		return -1
	})
	var zero T
	var errs []string
	for _, id := range ids {
		b := l.conns[id]
		actx, cancel := context.WithTimeout(ctx, askBudget)
		v, err := within(actx, func() (T, error) { return f(b) })
		cancel()
		if err == nil {
			return v, nil
		}
		if errors.Is(err, context.DeadlineExceeded) {
			l.slow[id] = true
		}
		errs = append(errs, fmt.Sprintf("broker %d: %v", id, err))
		if ctx.Err() != nil {
			break
		}
	}
	return zero, errors.New(strings.Join(errs, "; "))
}

// findCoordinator asks b which broker coordinates group.
func findCoordinator(b *sarama.Broker, v sarama.KafkaVersion, group string) (int32, error) {
	req := &sarama.FindCoordinatorRequest{CoordinatorKey: group, CoordinatorType: sarama.CoordinatorGroup, Version: 1}
	switch {
	case v.IsAtLeast(sarama.V2_4_0_0):
		req.Version = 3
	case v.IsAtLeast(sarama.V2_0_0_0):
		req.Version = 2
	}
	resp, err := b.FindCoordinator(req)
	if err != nil {
		return 0, err
	}
	if !errors.Is(resp.Err, sarama.ErrNoError) {
		return 0, fmt.Errorf("coordinator of group %s: %w", group, resp.Err)
	}
	if resp.Coordinator == nil {
		return 0, fmt.Errorf("coordinator of group %s: the answer names none", group)
	}
	return resp.Coordinator.ID(), nil
}

// minInSync returns the min.insync.replicas of the written topics among
// parts: how many in-sync replicas a write with acks=all needs, and the
// topics whose value could not be read, with why. Each answer, or
// failure, is kept for minInSyncReuse. A topic whose value is not known
// needs 1: readiness then leaves the rest to the route, which pauses when
// its writes fail.
func (d *Daemon) minInSync(ctx context.Context, l *look, parts []partitionState) (map[string]int, []string) {
	k := &d.kafkaCheck
	k.mu.Lock()
	known := maps.Clone(k.minISR)
	k.mu.Unlock()
	if known == nil {
		known = map[string]minInSyncAnswer{}
	}
	var topics []string
	for _, p := range parts {
		if a, ok := known[p.topic]; p.written && (!ok || time.Since(a.at) >= minInSyncReuse) && !slices.Contains(topics, p.topic) {
			topics = append(topics, p.topic)
		}
	}
	if len(topics) > 0 {
		req := &sarama.DescribeConfigsRequest{}
		switch v := d.probe.Config().Version; {
		case v.IsAtLeast(sarama.V2_8_0_0):
			req.Version = 4
		case v.IsAtLeast(sarama.V2_6_0_0):
			req.Version = 3
		case v.IsAtLeast(sarama.V2_0_0_0):
			req.Version = 2
		case v.IsAtLeast(sarama.V1_1_0_0):
			req.Version = 1
		}
		for _, t := range topics {
			req.Resources = append(req.Resources, &sarama.ConfigResource{
				Type: sarama.TopicResource, Name: t, ConfigNames: []string{"min.insync.replicas"},
			})
		}
		resp, err := ask(ctx, l, func(b *sarama.Broker) (*sarama.DescribeConfigsResponse, error) {
			return b.DescribeConfigs(req)
		})
		now := time.Now()
		got := map[string]minInSyncAnswer{}
		if err == nil {
			for _, r := range resp.Resources {
				// A refusal for the topic is asked again in 10 s, as it may
				// be one of a moment.
				a := minInSyncAnswer{err: "the answer lacks it", at: now}
				if r.ErrorCode != 0 {
					a = minInSyncAnswer{err: sarama.KError(r.ErrorCode).Error(), at: now.Add(10*time.Second - minInSyncReuse)}
				}
				for _, c := range r.Configs {
					if n, err := strconv.Atoi(c.Value); err == nil && c.Name == "min.insync.replicas" && r.ErrorCode == 0 {
						a = minInSyncAnswer{n: n, at: now}
					}
				}
				got[r.Name] = a
			}
		}
		for _, t := range topics {
			a, ok := got[t]
			switch {
			case ok:
			case err == nil:
				a = minInSyncAnswer{err: "the answer lacks it", at: now}
			default:
				// No broker answered: the value known stands, and is
				// asked again at the next look.
				a = known[t]
				a.at = time.Time{}
				if a.n == 0 {
					a.err = err.Error()
				}
			}
			known[t] = a
		}
		k.mu.Lock()
		k.minISR = maps.Clone(known)
		k.mu.Unlock()
	}
	need := map[string]int{}
	var unknown []string
	for _, p := range parts {
		if _, done := need[p.topic]; done || !p.written {
			continue
		}
		need[p.topic] = 1
		if a := known[p.topic]; a.n > 0 {
			need[p.topic] = a.n
		} else {
			unknown = append(unknown, p.topic+" ("+a.err+")")
		}
	}
	slices.Sort(unknown)
	return need, unknown
}
