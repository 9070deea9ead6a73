// Package poison is what eventrouter writes on a poisoned record and what
// it does with one replayed: the headers that say why and where it failed,
// and the plan that sends it back to the route that poisoned it.
package poison

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/IBM/sarama"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/eventrouter/eventrouter/config"
	"github.com/eventrouter/eventrouter/kafka/record"
)

// Headers that eventrouter adds to a poisoned record, beside Watermill's
// reason_poisoned, topic_poisoned, handler_poisoned and subscriber_poisoned.
const (
	PartitionKey = "partition_poisoned"
	OffsetKey    = "offset_poisoned"
)

// ForGroupKey is the header that sends a replayed record to the route
// that poisoned it: the consumer group of that route. Other routes of the
// topic skip the record; consumers other than eventrouter can do the same.
const ForGroupKey = "replay_for_group"

// Headers are dropped on replay: they describe the failure, not the
// event.
var Headers = map[string]bool{
	middleware.ReasonForPoisonedKey:  true,
	middleware.PoisonedTopicKey:      true,
	middleware.PoisonedHandlerKey:    true,
	middleware.PoisonedSubscriberKey: true,
	PartitionKey:                     true,
	OffsetKey:                        true,
}

// Rules says which records of one poison topic may go where.
type Rules struct {
	// Poison is the poison topic.
	Poison string
	// Allowed holds the subscribe topics of the routes whose poison topic
	// is poison: the only topics its records can have failed on.
	Allowed map[string]bool
	// To, when set, is the target of every record instead of its
	// topic_poisoned header.
	To string
	// Reason, when set, stops at records whose reason_poisoned does not
	// contain it.
	Reason string
	// Routes names the routes of each allowed topic, for the dry run.
	Routes map[string]string
	// Groups holds the consumer group of each route whose poison topic is
	// Poison, by route name (the handler_poisoned header).
	Groups map[string]RouteGroup
}

// RouteGroup is a route's subscribe topic and consumer group.
type RouteGroup struct {
	Topic, Group string
}

// RulesFor returns the rules for poison under routes, or why the
// command line asks for something the routes do not allow.
func RulesFor(routes []config.Route, poison, to, reason string) (Rules, error) {
	rules := Rules{Poison: poison, Allowed: map[string]bool{}, To: to, Reason: reason, Routes: map[string]string{}, Groups: map[string]RouteGroup{}}
	var poisons []string
	for _, r := range routes {
		if r.PoisonTopic == poison {
			rules.Allowed[r.SubscribeTopic] = true
			if rules.Routes[r.SubscribeTopic] != "" {
				rules.Routes[r.SubscribeTopic] += ","
			}
			rules.Routes[r.SubscribeTopic] += r.Name
			rules.Groups[r.Name] = RouteGroup{Topic: r.SubscribeTopic, Group: r.ConsumerGroup}
		}
		if !slices.Contains(poisons, r.PoisonTopic) {
			poisons = append(poisons, r.PoisonTopic)
		}
	}
	if len(rules.Allowed) == 0 {
		return Rules{}, fmt.Errorf("no route has poison topic %q; the routes' poison topics are %s", poison, strings.Join(poisons, ", "))
	}
	if to != "" && !rules.Allowed[to] {
		return Rules{}, fmt.Errorf("--to %q is not the subscribe topic of a route with poison topic %s; it can be %s", to, poison, strings.Join(slices.Sorted(maps.Keys(rules.Allowed)), ", "))
	}
	return rules, nil
}

// Plan is what replay does with one poisoned record.
type Plan struct {
	// Target is the topic to replay into; empty when the record is skipped.
	Target string
	// Headers are the record's own headers, without the poison headers,
	// and one replayed_from header, and a replay_for_group header when the
	// Route that poisoned it is known.
	Headers []sarama.RecordHeader
	// Route is the route the record goes back to, when known.
	Route string
	// Reason is the record's reason_poisoned.
	Reason string
	// Skip says why the record is not replayed; empty when it is.
	Skip string
	// Filtered means skip is --reason's doing, which is no news to report.
	Filtered bool
}

// Plan decides what happens to the poisoned record from, a
// topic/partition/offset, given its headers. It reads nothing else, so
// it is the whole of what a record's headers can make replay do.
func (rules Rules) Plan(from string, headers []*sarama.RecordHeader) Plan {
	var kept []sarama.RecordHeader
	var topics, reasons, handlers []string
	var partition, offset string
	original := false
	for _, h := range headers {
		if h == nil {
			continue
		}
		switch key := string(h.Key); {
		case key == PartitionKey:
			partition = string(h.Value)
			continue
		case key == OffsetKey:
			offset = string(h.Value)
			continue
		case key == record.OriginalKey:
			// Poisoned again after a replay: the first record stays the
			// event's identity.
			original = true
		}
		switch key := string(h.Key); {
		case key == middleware.PoisonedTopicKey:
			topics = appendNew(topics, string(h.Value))
		case key == middleware.ReasonForPoisonedKey:
			reasons = appendNew(reasons, string(h.Value))
		case key == middleware.PoisonedHandlerKey:
			handlers = appendNew(handlers, string(h.Value))
		case key == ForGroupKey:
			// This replay says who it is for.
		case Headers[key]:
		case key == record.ReplayedFromKey:
			// A record poisoned again after a replay: it names the older
			// source, and replayed_from is this replay's to set.
		default:
			kept = append(kept, *h)
		}
	}
	// The daemon writes each header once (Watermill's metadata is a map):
	// two values mean someone else wrote the record, and replay does not
	// guess which one counts.
	switch {
	case len(reasons) > 1 && rules.Reason != "":
		return Plan{Skip: "conflicting " + middleware.ReasonForPoisonedKey + " headers"}
	case len(topics) > 1 && rules.To == "":
		return Plan{Skip: "conflicting " + middleware.PoisonedTopicKey + " headers"}
	}
	p := Plan{}
	if len(reasons) > 0 {
		p.Reason = reasons[0]
	}
	if rules.Reason != "" && !strings.Contains(p.Reason, rules.Reason) {
		return Plan{Reason: p.Reason, Skip: "reason does not contain --reason", Filtered: true}
	}
	target := rules.To
	if target == "" && len(topics) > 0 {
		target = topics[0]
	}
	switch {
	case target == "":
		p.Skip = "no " + middleware.PoisonedTopicKey + " header and no --to"
	case !rules.Allowed[target]:
		p.Skip = fmt.Sprintf("%s %q is not the subscribe topic of a route with poison topic %s", middleware.PoisonedTopicKey, target, rules.Poison)
	}
	if p.Skip != "" {
		return p
	}
	p.Target = target
	if !original && len(topics) == 1 && partition != "" && offset != "" {
		// The record's stable identity (handlers.Record.ID), so that a
		// receiver which dedupes on it knows the event again.
		kept = append(kept, sarama.RecordHeader{Key: []byte(record.OriginalKey),
			Value: []byte(topics[0] + "/" + partition + "/" + offset)})
	}
	p.Headers = append(kept, sarama.RecordHeader{Key: []byte(record.ReplayedFromKey), Value: []byte(from)})
	// Back to the route that poisoned it alone, when the record names one
	// route of the target topic; otherwise every route of the topic sees
	// it, as any consumer would.
	if len(handlers) == 1 {
		if rg, ok := rules.Groups[handlers[0]]; ok && rg.Topic == target {
			p.Route = handlers[0]
			p.Headers = append(p.Headers, sarama.RecordHeader{Key: []byte(ForGroupKey), Value: []byte(rg.Group)})
		}
	}
	return p
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// RouteName is the route the record goes back to: the one that poisoned
// it when known, else every route of the target topic.
func (p Plan) RouteName(rules Rules) string {
	if p.Route != "" {
		return p.Route
	}
	return rules.Routes[p.Target]
}
