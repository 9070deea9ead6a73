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
	var meta *sarama.MetadataResponse
	err := d.askAny(ctx, conns, func(b *sarama.Broker) error {
		resp, err := b.GetMetadata(sarama.NewMetadataRequest(version, topics))
		if err == nil {
			meta = resp
		}
		return err
	})
	if err != nil {
		return kafkaHealth{problem: "brokers answer but not with the routes' topics: " + err.Error()}
	}
	// The brokers of this answer are the cluster's now: one missing was
	// fenced by the controllers; one the clients did not know yet is
	// dialed too.
	addrs := map[int32]string{}
	unknown := map[int32]string{}
	for _, b := range meta.Brokers {
		addrs[b.ID()] = b.Addr()
		if _, dialed := targets[b.ID()]; !dialed {
			unknown[b.ID()] = b.Addr()
		}
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
		var id int32
		err := d.askAny(ctx, conns, func(b *sarama.Broker) error {
			var err error
			id, err = findCoordinator(b, version, group)
			return err
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
	minISR, unknownISR := d.minInSync(ctx, conns, parts)

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
	if len(problems) > 0 {
		return kafkaHealth{problem: strings.Join(append(notes, problems...), "; ")}
	}
	if len(notes) > 0 {
		notes[0] += "; every partition of the routes' topics still has a leader and enough in-sync replicas"
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		notes = append(notes, "topics not created yet: "+strings.Join(missing, ", "))
	}
	if len(unknownISR) > 0 {
		notes = append(notes, "min.insync.replicas counted as 1, as it could not be read: "+strings.Join(unknownISR, "; "))
	}
	return kafkaHealth{degraded: strings.Join(notes, "; ")}
}

// within runs f and returns its error, or ctx's once ctx is done; f goes
// on then, and its error is dropped.
func within(ctx context.Context, f func() error) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("no time left: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return fmt.Errorf("no answer in time: %w", ctx.Err())
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

// askAny calls ask with the answering brokers in turn, lowest id first,
// each for at most askBudget, until one call succeeds or ctx is done.
func (d *Daemon) askAny(ctx context.Context, conns map[int32]*sarama.Broker, ask func(*sarama.Broker) error) error {
	var errs []error
	for _, id := range slices.Sorted(maps.Keys(conns)) {
		actx, cancel := context.WithTimeout(ctx, askBudget)
		err := within(actx, func() error { return ask(conns[id]) })
		cancel()
		if err == nil {
			return nil
		}
		errs = append(errs, fmt.Errorf("broker %d: %w", id, err))
		if ctx.Err() != nil {
			break
		}
	}
	return errors.Join(errs...)
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
func (d *Daemon) minInSync(ctx context.Context, conns map[int32]*sarama.Broker, parts []partitionState) (map[string]int, []string) {
	k := &d.kafkaCheck
	k.mu.Lock()
	known := maps.Clone(k.minISR)
	k.mu.Unlock()
	if known == nil {
		known = map[string]minInSyncAnswer{}
	}
	var ask []string
	for _, p := range parts {
		if a, ok := known[p.topic]; p.written && (!ok || time.Since(a.at) >= minInSyncReuse) && !slices.Contains(ask, p.topic) {
			ask = append(ask, p.topic)
		}
	}
	if len(ask) > 0 {
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
		for _, t := range ask {
			req.Resources = append(req.Resources, &sarama.ConfigResource{
				Type: sarama.TopicResource, Name: t, ConfigNames: []string{"min.insync.replicas"},
			})
		}
		var resp *sarama.DescribeConfigsResponse
		err := d.askAny(ctx, conns, func(b *sarama.Broker) error {
			r, err := b.DescribeConfigs(req)
			if err == nil {
				resp = r
			}
			return err
		})
		now := time.Now()
		got := map[string]minInSyncAnswer{}
		if err == nil {
			for _, r := range resp.Resources {
				a := minInSyncAnswer{err: "the answer lacks it", at: now}
				if r.ErrorCode != 0 {
					a.err = sarama.KError(r.ErrorCode).Error()
				}
				for _, c := range r.Configs {
					if n, err := strconv.Atoi(c.Value); err == nil && c.Name == "min.insync.replicas" && r.ErrorCode == 0 {
						a = minInSyncAnswer{n: n, at: now}
					}
				}
				got[r.Name] = a
			}
		}
		for _, t := range ask {
			if _, ok := got[t]; !ok && err != nil {
				// Asked again at the next look: no broker answered.
				known[t] = minInSyncAnswer{err: err.Error()}
				continue
			}
			if a, ok := got[t]; ok {
				known[t] = a
			}
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
		if a := known[p.topic]; a.err != "" {
			unknown = append(unknown, p.topic+" ("+a.err+")")
		} else if a.n > 0 {
			need[p.topic] = a.n
		}
	}
	slices.Sort(unknown)
	return need, unknown
}
