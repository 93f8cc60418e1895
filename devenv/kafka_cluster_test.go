package devenv

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// clusterTestsEnv names the environment variable that opts in to the tests
// that start a three-node Apache Kafka cluster (make test-cluster sets it).
const clusterTestsEnv = "GROUPMATCH_CLUSTER_TESTS"

func requireClusterTests(t *testing.T) {
	t.Helper()
	if os.Getenv(clusterTestsEnv) != "1" {
		t.Skip("starts a three-node Apache Kafka cluster (minutes on 2 cores): run `make test-cluster`, or set " + clusterTestsEnv + "=1")
	}
}

// Three KRaft nodes, each broker and controller: a partition with three
// replicas keeps taking acknowledged writes (acks from all in-sync
// replicas, min.insync.replicas 2) when its leader is killed, the
// leadership moves, and the killed node comes back on its log and ports
// and catches up; no acknowledged record is lost.
func TestStartKafkaCluster(t *testing.T) {
	requireClusterTests(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	c, err := StartKafkaCluster(ctx, KafkaClusterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("three nodes answered after %s", time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() {
		start := time.Now()
		if err := c.Close(); err != nil {
			t.Error(err)
		}
		t.Logf("closed in %s", time.Since(start).Round(time.Millisecond))
	})
	addrs := c.Addrs()
	if c.Size() != 3 || len(addrs) != 3 || len(slices.Compact(slices.Sorted(slices.Values(addrs)))) != 3 {
		t.Fatalf("addresses %v", addrs)
	}

	const topic = "devenv.cluster"
	client := &kafka.Client{Addr: kafka.TCP(addrs...), Timeout: 10 * time.Second, Transport: &kafka.Transport{}}
	created, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{
		Topic: topic, NumPartitions: 3, ReplicationFactor: 3,
		ConfigEntries: []kafka.ConfigEntry{{ConfigName: "min.insync.replicas", ConfigValue: "2"}},
	}}})
	if err != nil || created.Errors[topic] != nil {
		t.Fatalf("create topic: %v %v", err, created)
	}
	var leader int
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if leader, err = c.Leader(ctx, topic, 0); err == nil && leader >= 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition 0 has no leader: %d %v", leader, err)
		}
	}
	write := func(values ...string) {
		t.Helper()
		w := &kafka.Writer{Addr: kafka.TCP(addrs...), Topic: topic, Balancer: partitionZero{}, RequiredAcks: kafka.RequireAll,
			BatchTimeout: time.Millisecond, MaxAttempts: 30, WriteBackoffMax: time.Second, Transport: &kafka.Transport{}}
		defer w.Close()
		var msgs []kafka.Message
		for _, v := range values {
			msgs = append(msgs, kafka.Message{Value: []byte(v)})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatalf("write %v: %v", values, err)
		}
	}
	write("1", "2")

	c.Kill(leader)
	killed := time.Now()
	write("3") // waits until the controller fences the dead leader
	t.Logf("a write to the killed leader's partition was acknowledged %s after the kill", time.Since(killed).Round(time.Millisecond))
	now, err := c.Leader(ctx, topic, 0)
	if err != nil || now == leader || now < 0 {
		t.Fatalf("partition 0 led by node %d (%v) after node %d was killed", now, err, leader)
	}
	start = time.Now()
	if err := c.Restart(ctx, leader); err != nil {
		t.Fatal(err)
	}
	t.Logf("node %d restarted in %s", leader, time.Since(start).Round(time.Millisecond))
	if c.Node(leader).Addr() != addrs[leader] {
		t.Fatalf("restarted node at %s, was %s", c.Node(leader).Addr(), addrs[leader])
	}
	// The restarted node catches up: it is back in the in-sync replicas.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		parts, err := c.partitions(ctx, addrs[leader], topic)
		if err == nil && len(parts) == 3 && len(parts[0].Isr) == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %d not back in sync: %+v %v", leader, parts, err)
		}
	}
	write("4")

	// Every acknowledged record is there once, in order, even with the
	// current leader killed too: the restarted node and the third serve.
	c.Kill(now)
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if l, err := c.Leader(ctx, topic, 0); err == nil && l >= 0 && l != now {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("partition 0 still led by killed node %d", now)
		}
	}
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: addrs, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	var got []string
	for len(got) < 4 {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read: %v (got %v)", err, got)
		}
		got = append(got, string(m.Value))
	}
	if !slices.Equal(got, []string{"1", "2", "3", "4"}) {
		t.Fatalf("partition 0 holds %v, want [1 2 3 4]", got)
	}
	if err := c.Restart(ctx, now); err != nil {
		t.Fatal(err)
	}
}

// partitionZero sends every message to partition 0.
type partitionZero struct{}

func (partitionZero) Balance(kafka.Message, ...int) int { return 0 }

// Without the jars, StartKafkaCluster says how to get them (also when
// the cluster tests are not opted in: it starts no JVM).
func TestStartKafkaClusterWithoutJars(t *testing.T) {
	dir := t.TempDir()
	_, err := StartKafkaCluster(context.Background(), KafkaClusterConfig{DataDir: dir, LibsDir: filepath.Join(dir, "none")})
	if err == nil || !strings.Contains(err.Error(), "ensure-kafka.sh") {
		t.Fatalf("StartKafkaCluster without jars: %v, want an error naming ensure-kafka.sh", err)
	}
}

// A cluster node's server.properties names its own id, the whole quorum,
// and three replicas for the internal topics.
func TestKafkaClusterProperties(t *testing.T) {
	k := &Kafka{addr: "127.0.0.1:1002", controllerAddr: "127.0.0.1:2002", dataDir: "/data/node-2"}
	voters := "1@127.0.0.1:2001,2@127.0.0.1:2002,3@127.0.0.1:2003"
	props := string(k.serverProperties(kafkaNode{id: 2, voters: voters}, KafkaClusterSettings(3)))
	for _, want := range []string{"node.id=2\n", "controller.quorum.voters=" + voters + "\n", "process.roles=broker,controller\n",
		"advertised.listeners=PLAINTEXT://127.0.0.1:1002\n", "offsets.topic.replication.factor=3\n",
		"transaction.state.log.replication.factor=3\n", "transaction.state.log.min.isr=2\n"} {
		if !strings.Contains(props, want) {
			t.Errorf("server.properties lacks %q:\n%s", want, props)
		}
	}
	single := string((&Kafka{addr: "127.0.0.1:1", controllerAddr: "127.0.0.1:2"}).serverProperties(kafkaNode{id: 1, voters: "1@127.0.0.1:2"}, nil))
	if !strings.Contains(single, "controller.quorum.voters=1@127.0.0.1:2\n") || !strings.Contains(single, "offsets.topic.replication.factor=1\n") {
		t.Errorf("single node's server.properties:\n%s", single)
	}
}
