package kafkatest

import (
	"fmt"
	"slices"
	"strings"

	"github.com/IBM/sarama"
)

// Member is one member of a consumer group and the partitions of a topic it
// owns.
type Member struct {
	ID, ClientID, Host string
	Partitions         []int32
}

// DescribeGroup returns consumer group group's state and its members, with
// the partitions of topic each owns.
func DescribeGroup(brokers []string, group, topic string) (state string, members []Member, err error) {
	admin, err := sarama.NewClusterAdmin(brokers, Config())
	if err != nil {
		return "", nil, fmt.Errorf("connect admin to %v: %w", brokers, err)
	}
	defer admin.Close()
	descs, err := admin.DescribeConsumerGroups([]string{group})
	if err != nil {
		return "", nil, fmt.Errorf("describe group %s: %w", group, err)
	}
	if len(descs) != 1 {
		return "", nil, fmt.Errorf("describe group %s: %d descriptions", group, len(descs))
	}
	d := descs[0]
	for id, m := range d.Members {
		var parts []int32
		if a, err := m.GetMemberAssignment(); err == nil && a != nil {
			parts = slices.Clone(a.Topics[topic])
		}
		slices.Sort(parts)
		members = append(members, Member{ID: id, ClientID: m.ClientId, Host: m.ClientHost, Partitions: parts})
	}
	slices.SortFunc(members, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return d.State, members, nil
}

// GroupStable reports whether group is stable with exactly n members, each
// owning partitions of topic: every member has joined and synced, so none is
// in the middle of a join.
func GroupStable(brokers []string, group, topic string, n int) bool {
	state, members, err := DescribeGroup(brokers, group, topic)
	if err != nil || state != "Stable" || len(members) != n {
		return false
	}
	for _, m := range members {
		if len(m.Partitions) == 0 {
			return false
		}
	}
	return true
}

// GroupReport describes consumer group group on topic for a failure
// message: the group's state and members with their partitions, and per
// partition the committed offset, the end offset and the lag. It never
// fails; what it cannot read it says.
func GroupReport(brokers []string, group, topic string) string {
	var b strings.Builder
	state, members, err := DescribeGroup(brokers, group, topic)
	if err != nil {
		fmt.Fprintf(&b, "%v\n", err)
	} else {
		fmt.Fprintf(&b, "group %s: state %s, %d members\n", group, state, len(members))
		for _, m := range members {
			fmt.Fprintf(&b, "  member %s (%s at %s): partitions %v\n", m.ID, m.ClientID, m.Host, m.Partitions)
		}
	}

	client, err := sarama.NewClient(brokers, Config())
	if err != nil {
		fmt.Fprintf(&b, "connect to %v: %v\n", brokers, err)
		return b.String()
	}
	defer client.Close()
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		fmt.Fprintf(&b, "admin: %v\n", err)
		return b.String()
	}
	partitions, err := client.Partitions(topic)
	if err != nil {
		fmt.Fprintf(&b, "partitions of %s: %v\n", topic, err)
		return b.String()
	}
	offsets, err := admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: partitions})
	if err != nil {
		fmt.Fprintf(&b, "offsets of %s: %v\n", group, err)
		return b.String()
	}
	for _, p := range partitions {
		end, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			fmt.Fprintf(&b, "  %s/%d: end offset: %v\n", topic, p, err)
			continue
		}
		committed := int64(-1)
		if blk := offsets.GetBlock(topic, p); blk != nil {
			committed = blk.Offset
		}
		fmt.Fprintf(&b, "  %s/%d: committed %d, end %d, lag %d\n", topic, p, committed, end, end-max(committed, 0))
	}
	return b.String()
}
