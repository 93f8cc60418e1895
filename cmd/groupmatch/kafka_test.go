package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/devenv"
)

// The end-to-end, multi-process, fault and feed tests run against Apache
// Kafka itself (SPEC §11): one broker (devenv.StartKafka, the version
// docker-compose.yml pins) shared by the package's tests, started on first
// use and stopped after the last test. Each test keeps to its own topics
// and consumer groups (kafkaNames), so tests stay independent; a test that
// stops or kills the broker starts its own (startOwnKafka).
var sharedKafka struct {
	once sync.Once
	k    *devenv.Kafka
	err  error
}

func TestMain(m *testing.M) {
	code := guardTenantFilters(m.Run())
	if sharedKafka.k != nil {
		if err := sharedKafka.k.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the shared Apache Kafka:", err)
		}
	}
	os.Exit(code)
}

// testKafka returns the bootstrap address of the shared broker, starting it
// on first use. The test fails, never skips, when the broker cannot run
// (no jars: make deps fetches them; no java).
func testKafka(t *testing.T) string {
	t.Helper()
	sharedKafka.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		start := time.Now()
		sharedKafka.k, sharedKafka.err = devenv.StartKafka(ctx, devenv.KafkaConfig{Addr: "127.0.0.1:0"})
		if sharedKafka.err == nil {
			t.Logf("Apache Kafka %s at %s answered after %s", devenv.KafkaVersion, sharedKafka.k.Addr(), time.Since(start).Round(time.Millisecond))
		}
	})
	if sharedKafka.err != nil {
		t.Fatalf("Apache Kafka: %v", sharedKafka.err)
	}
	select {
	case <-sharedKafka.k.Done():
		t.Fatalf("the shared Apache Kafka has exited; its last output:\n%s", sharedKafka.k.Output())
	default:
	}
	return sharedKafka.k.Addr()
}

// startOwnKafka starts a broker for one test, keeping its log in dataDir
// (a temporary folder when empty); it is stopped when the test ends.
func startOwnKafka(t *testing.T, cfg devenv.KafkaConfig) *devenv.Kafka {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	k, err := devenv.StartKafka(ctx, cfg)
	if err != nil {
		t.Fatalf("Apache Kafka: %v", err)
	}
	t.Cleanup(func() {
		if err := k.Close(); err != nil {
			t.Error(err)
		}
		if t.Failed() || os.Getenv("GROUPMATCH_TEST_LOGS") != "" {
			t.Logf("output of Apache Kafka:\n%s", k.Output())
		}
	})
	return k
}

// kafkaNames are a test's own topic and consumer-group prefixes.
type kafkaNames struct{ topicPrefix, groupPrefix string }

var (
	testSeq       atomic.Int64
	notInTopicRE  = regexp.MustCompile(`[^A-Za-z0-9_-]+`)
	maxNameLength = 80
)

// namesFor returns prefixes no other test of this run uses: "t<n>-<test>."
// for topics and "t<n>-<test>-" for groups.
func namesFor(t *testing.T) kafkaNames {
	name := notInTopicRE.ReplaceAllString(t.Name(), "_")
	if len(name) > maxNameLength {
		name = name[:maxNameLength]
	}
	base := fmt.Sprintf("t%d-%s", testSeq.Add(1), name)
	return kafkaNames{topicPrefix: base + ".", groupPrefix: base + "-"}
}

// waitTopics waits until every partition of each topic has a leader, then
// makes this process's kafka-go clients forget what they knew of the
// broker. Apache Kafka creates topics asynchronously (kfake at once): right
// after CreateTopics answers, a write can still fail with
// UNKNOWN_TOPIC_OR_PARTITION and a fetch with NOT_LEADER_FOR_PARTITION.
// And the writers and clients of this test process share kafka-go's
// DefaultTransport, whose metadata of the shared broker, cached during
// earlier tests, lacks this test's topics until it is refreshed (every 6 s):
// a write in between fails. Each attempt here dials anew, so no cached
// metadata answers.
func waitTopics(t *testing.T, brokers string, topics ...string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		if last = topicsLed(brokers, topics); last == nil {
			kafka.DefaultTransport.(*kafka.Transport).CloseIdleConnections()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("topics %v have no leaders after 60 s: %v", topics, last)
}

// topicsLed reports why topics are not ready yet, asking the first broker
// of the comma-separated brokers that answers.
func topicsLed(brokers string, topics []string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var conn *kafka.Conn
	var err error
	for _, addr := range strings.Split(brokers, ",") {
		if conn, err = kafka.DialContext(ctx, "tcp", addr); err == nil {
			break
		}
	}
	if err != nil {
		return err
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topics...)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, p := range parts {
		if p.Error != nil || p.Leader.Host == "" {
			return fmt.Errorf("%s/%d: leader %+v, error %v", p.Topic, p.ID, p.Leader, p.Error)
		}
		seen[p.Topic] = true
	}
	for _, name := range topics {
		if !seen[name] {
			return fmt.Errorf("topic %s not in metadata", name)
		}
	}
	return nil
}

// `groupmatch kafka` (make kafka) runs a broker until Ctrl-C, then stops it
// cleanly and removes its temporary log; with --data the log stays.
func TestKafkaCommand(t *testing.T) {
	data := t.TempDir()
	p := startProc(t, nil, nil, "kafka", "--addr", "127.0.0.1:0", "--data", data)
	addr := p.waitFor(regexp.MustCompile(`^KAFKA_BROKERS=(\S+)`), 2*time.Minute)
	if err := topicsLed(addr, nil); err != nil {
		t.Fatalf("broker at %s: %v", addr, err)
	}
	client := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	resp, err := client.CreateTopics(context.Background(), &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: "by-hand", NumPartitions: 1, ReplicationFactor: 1}}})
	if err != nil || resp.Errors["by-hand"] != nil {
		t.Fatalf("create topic: %v %v", err, resp)
	}
	_ = p.Signal(syscall.SIGINT)
	select {
	case <-p.Done():
		if err := p.Err(); err != nil {
			t.Fatalf("groupmatch kafka exited with %v after SIGINT:\n%s", err, p.output())
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("groupmatch kafka did not stop within 40 s of SIGINT:\n%s", p.output())
	}
	if !strings.Contains(p.output(), "stopping Apache Kafka") {
		t.Errorf("no clean stop in the output:\n%s", p.output())
	}
	if _, err := os.Stat(filepath.Join(data, "meta.properties")); err != nil {
		t.Errorf("--data %s lost the formatted log: %v", data, err)
	}
	if _, err := os.Stat(filepath.Join(data, "by-hand-0")); err != nil {
		t.Errorf("--data %s lacks the topic's log: %v", data, err)
	}
}
