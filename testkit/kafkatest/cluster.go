package kafkatest

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
)

// ClusterEnv names the variable that points tests at the script that runs
// the three-node Kafka cluster (scripts/kafka.sh, whose `cluster` command
// it uses).
const ClusterEnv = "EVENTROUTER_TEST_KAFKA_CLUSTER"

// Cluster is the three-node Kafka cluster of scripts/kafka.sh: each node a
// broker and a controller, node N being broker N.
type Cluster struct {
	t       testing.TB
	script  string
	brokers []string
}

// RealCluster returns the running three-node cluster, or skips the test
// when none is configured (fails it under CI=true). Nodes the test leaves
// stopped are started again when it ends, so that the next test has all
// three.
func RealCluster(t *testing.T) *Cluster {
	t.Helper()
	script := need(t, ClusterEnv, "CI runs the cluster scenarios on a three-node cluster (make test starts one)", "run make test, or scripts/kafka.sh cluster start and set it to scripts/kafka.sh")
	out, err := exec.Command(script, "cluster", "bootstrap").Output()
	if err != nil {
		t.Fatalf("%s cluster bootstrap: %v", script, err)
	}
	c := &Cluster{t: t, script: script, brokers: strings.Split(strings.TrimSpace(string(out)), ",")}
	t.Cleanup(func() {
		for n := int32(1); n <= 3; n++ {
			c.run("start", n)
		}
	})
	c.WaitInSync(2 * time.Minute)
	return c
}

// Brokers returns the three bootstrap addresses.
func (c *Cluster) Brokers() []string { return c.brokers }

// Kill sends node n SIGKILL: a crash.
func (c *Cluster) Kill(n int32) { c.run("kill", n) }

// Stop shuts node n down as an operator does (SIGTERM, a controlled
// shutdown that hands its leadership over first).
func (c *Cluster) Stop(n int32) { c.run("stop", n) }

// Start starts node n and waits until it has rejoined the cluster.
func (c *Cluster) Start(n int32) { c.run("start", n) }

func (c *Cluster) run(cmd string, n int32) {
	c.t.Helper()
	if out, err := exec.Command(c.script, "cluster", cmd, strconv.Itoa(int(n))).CombinedOutput(); err != nil {
		c.t.Fatalf("%s cluster %s %d: %v\n%s", c.script, cmd, n, err, out)
	}
}

// Client connects a sarama client to the cluster; the test closes it.
func (c *Cluster) Client() sarama.Client {
	c.t.Helper()
	client, err := sarama.NewClient(c.brokers, Config())
	if err != nil {
		c.t.Fatalf("connect to %v: %v", c.brokers, err)
	}
	c.t.Cleanup(func() { client.Close() })
	return client
}

// Leaders returns how many of topic's partitions each broker leads.
func (c *Cluster) Leaders(topic string) map[int32]int {
	c.t.Helper()
	client := c.Client()
	if err := client.RefreshMetadata(topic); err != nil {
		c.t.Fatalf("metadata of %s: %v", topic, err)
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		c.t.Fatalf("partitions of %s: %v", topic, err)
	}
	leaders := map[int32]int{}
	for _, p := range parts {
		b, err := client.Leader(topic, p)
		if err != nil {
			c.t.Fatalf("leader of %s/%d: %v", topic, p, err)
		}
		leaders[b.ID()]++
	}
	return leaders
}

// Coordinator returns the broker that coordinates group.
func (c *Cluster) Coordinator(group string) int32 {
	c.t.Helper()
	b, err := c.Client().Coordinator(group)
	if err != nil {
		c.t.Fatalf("coordinator of %s: %v", group, err)
	}
	return b.ID()
}

// WaitInSync waits until three brokers answer and every partition of
// every topic has all its replicas in sync: what an operator waits for
// between two steps of a rolling restart.
func (c *Cluster) WaitInSync(timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	var why string
	for {
		why = c.outOfSync()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("cluster not in sync after %s: %s", timeout, why)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// outOfSync says what keeps the cluster from being whole, or "".
func (c *Cluster) outOfSync() string {
	admin, err := sarama.NewClusterAdmin(c.brokers, Config())
	if err != nil {
		return err.Error()
	}
	defer admin.Close()
	brokers, _, err := admin.DescribeCluster()
	if err != nil {
		return err.Error()
	}
	if len(brokers) != 3 {
		return strconv.Itoa(len(brokers)) + " brokers answer"
	}
	topics, err := admin.ListTopics()
	if err != nil {
		return err.Error()
	}
	names := make([]string, 0, len(topics))
	for name := range topics {
		names = append(names, name)
	}
	metas, err := admin.DescribeTopics(append(names, "__consumer_offsets"))
	if err != nil {
		return err.Error()
	}
	for _, m := range metas {
		if m.Err != sarama.ErrNoError && m.Err != sarama.ErrUnknownTopicOrPartition {
			return m.Name + ": " + m.Err.Error()
		}
		for _, p := range m.Partitions {
			if len(p.Isr) < len(p.Replicas) || p.Leader < 0 {
				return m.Name + "/" + strconv.Itoa(int(p.ID)) + " has " + strconv.Itoa(len(p.Isr)) + " of " + strconv.Itoa(len(p.Replicas)) + " replicas in sync"
			}
		}
	}
	return ""
}

// Running reports whether the script says node n runs.
func (c *Cluster) Running(n int32) bool {
	out, _ := exec.Command(c.script, "cluster", "status").Output()
	return strings.Contains(string(out), "node "+strconv.Itoa(int(n))+": running")
}
