package devenv

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
)

// The version is written once, in .ci/kafka/pom.xml; KafkaVersion and the
// image docker-compose.yml pins must agree with it.
func TestKafkaVersionAgrees(t *testing.T) {
	pom, err := os.ReadFile("../.ci/kafka/pom.xml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`<kafka\.version>([^<]+)</kafka\.version>`).FindSubmatch(pom)
	if m == nil || string(m[1]) != KafkaVersion {
		t.Errorf("pom.xml kafka.version = %q, KafkaVersion = %q", m, KafkaVersion)
	}
	compose, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	images := regexp.MustCompile(`(?m)^\s*image:\s*apache/kafka:(\S+)\s*$`).FindAllSubmatch(compose, -1)
	if len(images) == 0 {
		t.Fatal("docker-compose.yml runs no apache/kafka image")
	}
	for _, im := range images {
		if string(im[1]) != KafkaVersion {
			t.Errorf("docker-compose.yml pins apache/kafka:%s, KafkaVersion is %s", im[1], KafkaVersion)
		}
	}
}

func TestKafkaLibsDir(t *testing.T) {
	t.Setenv(KafkaLibsEnv, "")
	t.Setenv("XDG_CACHE_HOME", "/cache")
	if got := KafkaLibsDir("9.9.9"); got != "/cache/groupmatch/kafka-9.9.9/libs" {
		t.Errorf("KafkaLibsDir = %q", got)
	}
	t.Setenv(KafkaLibsEnv, "/jars")
	if got := KafkaLibsDir("9.9.9"); got != "/jars" {
		t.Errorf("KafkaLibsDir with %s set = %q", KafkaLibsEnv, got)
	}
}

// Without the jars, StartKafka says how to get them, and leaves nothing.
func TestStartKafkaWithoutJars(t *testing.T) {
	_, err := StartKafka(context.Background(), KafkaConfig{Addr: "127.0.0.1:0", LibsDir: filepath.Join(t.TempDir(), "none")})
	if err == nil || !strings.Contains(err.Error(), "ensure-kafka.sh") {
		t.Fatalf("StartKafka without jars: %v, want an error naming ensure-kafka.sh", err)
	}
}

// A real broker: records and a group's committed offset survive a clean
// stop and a restart on the same DataDir and addresses; a killed broker
// comes back too.
func TestStartKafka(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	data := t.TempDir()
	start := time.Now()
	k, err := StartKafka(ctx, KafkaConfig{Addr: "127.0.0.1:0", DataDir: data})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Apache Kafka %s answered after %s", KafkaVersion, time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { _ = k.Close() })
	if !strings.HasPrefix(k.Addr(), "127.0.0.1:") || strings.HasSuffix(k.Addr(), ":0") || k.ControllerAddr() == k.Addr() {
		t.Fatalf("addresses %s and %s", k.Addr(), k.ControllerAddr())
	}

	const topic, group = "devenv.kafka", "devenv-kafka"
	client := &kafka.Client{Addr: kafka.TCP(k.Addr()), Timeout: 10 * time.Second}
	created, err := client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 2, ReplicationFactor: 1}}})
	if err != nil || created.Errors[topic] != nil {
		t.Fatalf("create topic: %v %v", err, created)
	}
	// Automatic topic creation is off, as in docker-compose.yml.
	md, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{"devenv.nothing"}})
	if err != nil || len(md.Topics) != 1 || !errors.Is(md.Topics[0].Error, kafka.UnknownTopicOrPartition) {
		t.Fatalf("metadata of a missing topic: %v %+v", err, md)
	}
	w := &kafka.Writer{Addr: kafka.TCP(k.Addr()), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Transport: &kafka.Transport{}} // not the shared transport, whose metadata outlives a broker
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("a"), Value: []byte("1")}, kafka.Message{Key: []byte("b"), Value: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	readGroup := func(want int) []string {
		t.Helper()
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{k.Addr()}, GroupID: group, Topic: topic, MaxWait: 100 * time.Millisecond})
		defer r.Close()
		var got []string
		for len(got) < want {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				t.Fatalf("fetch: %v (got %v)", err, got)
			}
			got = append(got, string(m.Value))
			if err := r.CommitMessages(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		return got
	}
	if got := readGroup(2); len(got) != 2 {
		t.Fatalf("read %v", got)
	}

	// A clean stop and a restart: the log and the commit are kept, so the
	// group reads only what was written after.
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(data); err != nil {
		t.Fatalf("Close removed the caller's DataDir: %v", err)
	}
	restart := func() *Kafka {
		t.Helper()
		k2, err := StartKafka(ctx, KafkaConfig{Addr: k.Addr(), ControllerAddr: k.ControllerAddr(), DataDir: data})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = k2.Close() })
		return k2
	}
	k = restart()
	w = &kafka.Writer{Addr: kafka.TCP(k.Addr()), Topic: topic, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Transport: &kafka.Transport{}} // not the shared transport, whose metadata outlives a broker
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte("c"), Value: []byte("3")}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if got := readGroup(1); got[0] != "3" {
		t.Fatalf("after a restart the group read %v, want [3]", got)
	}

	// SIGKILL, then a restart: acknowledged records are still there.
	k.Kill()
	select {
	case <-k.Done():
	default:
		t.Fatal("Done not closed after Kill")
	}
	k = restart()
	// After an unclean stop the broker answers metadata before it has
	// recovered its partitions; they answer NOT_LEADER_OR_FOLLOWER until
	// then, and clients retry.
	records := func(partition int) int64 {
		t.Helper()
		var last error
		for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			conn, err := kafka.DialLeader(ctx, "tcp", k.Addr(), topic, partition)
			if err != nil {
				last = err
				continue
			}
			first, end, err := conn.ReadOffsets()
			conn.Close()
			if err == nil {
				return end - first
			}
			last = err
		}
		t.Fatalf("partition %d after a kill and a restart: %v", partition, last)
		return 0
	}
	if n := records(0) + records(1); n != 3 {
		t.Fatalf("after a kill and a restart the topic holds %d records, want 3", n)
	}
}

// Closing a broker started on a temporary folder removes it.
func TestKafkaCloseRemovesTemp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := StartKafka(ctx, KafkaConfig{Addr: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	dir := k.DataDir()
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("temporary data dir %s still there: %v", dir, err)
	}
}

func TestNewClusterID(t *testing.T) {
	for range 2000 {
		id := newClusterID()
		b, err := base64.RawURLEncoding.DecodeString(id)
		if err != nil || len(b) != 16 || strings.HasPrefix(id, "-") {
			t.Fatalf("cluster id %q: %v, %d bytes", id, err, len(b))
		}
	}
}
