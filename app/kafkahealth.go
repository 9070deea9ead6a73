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
)

// kafkaHealth is what readiness says of the Kafka cluster: whether the
// routes can work, and what is down that they can do without.
type kafkaHealth struct {
	// problem is why the routes cannot work now, or "".
	problem string
	// degraded names the brokers that do not answer while the routes still
	// work, or "".
	degraded string
}

// replica is where one partition of a route's topics lives.
type replica struct {
	topic     string
	partition int32
	leader    int32
	isr       []int32
	// written is set for the topics the routes write to, where a write
	// needs min.insync.replicas replicas in sync (acks=all).
	written bool
}

// checkKafka asks for the cluster's metadata, then every broker that holds
// a replica of a route's topics whether it answers. The routes cannot work
// while a partition of theirs has no leader that answers, while a topic
// they write to has fewer in-sync replicas that answer than its
// min.insync.replicas, or while a group's coordinator does not answer.
// A broker down that the routes can do without leaves them ready, and is
// named as degraded.
func (d *Daemon) checkKafka(ctx context.Context) kafkaHealth {
	done := make(chan error, 1)
	go func() { done <- d.probe.RefreshMetadata() }()
	select {
	case err := <-done:
		if err != nil {
			return kafkaHealth{problem: "broker does not answer: " + err.Error()}
		}
	case <-ctx.Done():
		return kafkaHealth{problem: "broker does not answer in time"}
	}

	written := map[string]bool{}
	var topics []string
	for _, r := range d.cfg.Routes {
		for _, t := range []string{r.SubscribeTopic, r.PublishTopic, r.PoisonTopic} {
			if _, ok := written[t]; t != "" && !ok {
				written[t] = false
				topics = append(topics, t)
			}
		}
	}
	for _, r := range d.cfg.Routes {
		for _, t := range []string{r.PublishTopic, r.PoisonTopic} {
			if t != "" {
				written[t] = true
			}
		}
	}
	type described struct {
		metas        []*sarama.TopicMetadata
		coordinators map[string]int32
		err          error
	}
	got := make(chan described, 1)
	go func() {
		// One metadata request: the client's own lookups would ask again
		// for each partition that has no leader.
		metas, err := d.probeAdmin.DescribeTopics(topics)
		coordinators := map[string]int32{}
		for _, r := range d.cfg.Routes {
			if b, err := d.probe.Coordinator(r.ConsumerGroup); err == nil {
				coordinators[r.ConsumerGroup] = b.ID()
			}
		}
		got <- described{metas, coordinators, err}
	}()
	var desc described
	select {
	case desc = <-got:
		if desc.err != nil {
			return kafkaHealth{problem: "broker does not answer: " + desc.err.Error()}
		}
	case <-ctx.Done():
		return kafkaHealth{problem: "broker does not answer in time"}
	}
	var parts []replica
	ids := map[int32]bool{}
	for _, m := range desc.metas {
		// A topic the routes write to may not exist until the first
		// write creates it.
		if !errors.Is(m.Err, sarama.ErrNoError) {
			continue
		}
		for _, p := range m.Partitions {
			parts = append(parts, replica{topic: m.Name, partition: p.ID, leader: p.Leader, isr: p.Isr, written: written[m.Name]})
			for _, id := range p.Replicas {
				ids[id] = true
			}
			if p.Leader >= 0 {
				ids[p.Leader] = true
			}
		}
	}
	coordinators := desc.coordinators
	for _, id := range coordinators {
		ids[id] = true
	}

	down := d.brokersDown(ctx, ids)
	var noLeader, fewInSync, groups []string
	for _, p := range parts {
		name := p.topic + "/" + strconv.Itoa(int(p.partition))
		if p.leader < 0 || down[p.leader] != "" {
			noLeader = append(noLeader, name)
			continue
		}
		if !p.written {
			continue
		}
		answering := 0
		for _, id := range p.isr {
			if down[id] == "" {
				answering++
			}
		}
		if need := d.minInSync(ctx, p.topic); answering < need {
			fewInSync = append(fewInSync, fmt.Sprintf("%s (%d of %d needed)", name, answering, need))
		}
	}
	for group, id := range coordinators {
		if down[id] != "" {
			groups = append(groups, group)
		}
	}
	slices.Sort(groups)
	slices.Sort(noLeader)
	slices.Sort(fewInSync)

	var h kafkaHealth
	var problems []string
	if len(noLeader) > 0 {
		problems = append(problems, "partitions without a leader that answers: "+few(noLeader))
	}
	if len(fewInSync) > 0 {
		problems = append(problems, "partitions with fewer in-sync replicas that answer than min.insync.replicas, so no write can succeed: "+few(fewInSync))
	}
	if len(groups) > 0 {
		problems = append(problems, "the coordinator of group "+strings.Join(groups, ", ")+" does not answer")
	}
	var names []string
	for _, id := range slices.Sorted(maps.Keys(down)) {
		if down[id] != "" {
			names = append(names, down[id])
		}
	}
	switch {
	case len(problems) > 0 && len(names) > 0:
		h.problem = fmt.Sprintf("%d of %d brokers do not answer (%s); %s", len(names), len(ids), strings.Join(names, ", "), strings.Join(problems, "; "))
	case len(problems) > 0:
		h.problem = strings.Join(problems, "; ")
	case len(names) > 0:
		h.degraded = fmt.Sprintf("%d of %d brokers do not answer (%s); every partition of the routes' topics still has a leader and enough in-sync replicas", len(names), len(ids), strings.Join(names, ", "))
	}
	return h
}

// few lists the first five names and how many more there are.
func few(names []string) string {
	if len(names) <= 5 {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
}

// brokersDown asks each broker in ids for its API versions on a connection
// of its own, and returns each one's state: "" when it answered, else its
// name and why not. A broker the metadata no longer lists is down: the
// controllers fenced it.
func (d *Daemon) brokersDown(ctx context.Context, ids map[int32]bool) map[int32]string {
	addrs := map[int32]string{}
	for _, b := range d.probe.Brokers() {
		addrs[b.ID()] = b.Addr()
	}
	cfg := d.kafka.Config()
	cfg.ClientID = d.cfg.Kafka.ClientID + "-ops"
	cfg.Net.DialTimeout = 3 * time.Second
	cfg.Net.ReadTimeout = 3 * time.Second
	state := make(map[int32]string, len(ids))
	names := make(map[int32]string, len(ids))
	for id := range ids {
		addr, ok := addrs[id]
		names[id] = "broker " + strconv.Itoa(int(id))
		if !ok {
			state[id] = names[id] + " not in the cluster's metadata"
			continue
		}
		names[id] += " at " + addr
		// Until it answers.
		state[id] = names[id] + " does not answer in time"
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for id := range ids {
		addr, ok := addrs[id]
		if !ok {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := answers(cfg, addr)
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				state[id] = ""
			} else {
				state[id] = names[id] + ": " + err.Error()
			}
		}()
	}
	waited := make(chan struct{})
	go func() {
		wg.Wait()
		close(waited)
	}()
	select {
	case <-waited:
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	return maps.Clone(state)
}

// answers opens a connection to the broker at addr and asks it for its API
// versions.
func answers(cfg *sarama.Config, addr string) error {
	b := sarama.NewBroker(addr)
	if err := b.Open(cfg); err != nil {
		return err
	}
	defer b.Close()
	_, err := b.ApiVersions(&sarama.ApiVersionsRequest{})
	if errors.Is(err, sarama.ErrNotConnected) {
		return errors.New("connection refused")
	}
	return err
}

// minInSync returns topic's min.insync.replicas: how many in-sync replicas
// a write with acks=all needs. It is asked once per topic and kept; while
// it is not known, 1.
func (d *Daemon) minInSync(ctx context.Context, topic string) int {
	d.minISRMu.Lock()
	n, ok := d.minISR[topic]
	d.minISRMu.Unlock()
	if ok {
		return n
	}
	found := make(chan int, 1)
	go func() {
		defer close(found)
		entries, err := d.probeAdmin.DescribeConfig(sarama.ConfigResource{
			Type: sarama.TopicResource, Name: topic, ConfigNames: []string{"min.insync.replicas"},
		})
		if err != nil {
			return
		}
		for _, e := range entries {
			if v, err := strconv.Atoi(e.Value); err == nil && e.Name == "min.insync.replicas" {
				d.minISRMu.Lock()
				d.minISR[topic] = v
				d.minISRMu.Unlock()
				found <- v
				return
			}
		}
	}()
	select {
	case v, ok := <-found:
		if ok {
			return v
		}
	case <-ctx.Done():
	}
	return 1
}
