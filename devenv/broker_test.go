package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
)

// startTestBroker starts a broker on an OS-chosen port and closes it when
// the test ends.
func startTestBroker(t *testing.T, cfg BrokerConfig) *Broker {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	b, err := StartBroker(cfg)
	if err != nil {
		t.Fatalf("StartBroker: %v", err)
	}
	t.Cleanup(b.Close)
	return b
}

func partitionCount(t *testing.T, ctx context.Context, addr, topic string) int {
	t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(addr), Timeout: 10 * time.Second}
	md, err := c.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	for _, tp := range md.Topics {
		if tp.Name == topic {
			if tp.Error != nil {
				t.Fatalf("metadata of %s: %v", topic, tp.Error)
			}
			return len(tp.Partitions)
		}
	}
	t.Fatalf("metadata: topic %s missing", topic)
	return 0
}

func TestBrokerConfigDefaults(t *testing.T) {
	got := BrokerConfig{}.withDefaults()
	if got.Addr != "127.0.0.1:9092" || got.Partitions != 8 {
		t.Errorf("defaults = %+v, want Addr 127.0.0.1:9092 and Partitions 8", got)
	}
	got = BrokerConfig{Addr: "127.0.0.1:0", Partitions: 3}.withDefaults()
	if got.Addr != "127.0.0.1:0" || got.Partitions != 3 {
		t.Errorf("explicit values changed: %+v", got)
	}
}

func TestStartBrokerRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  BrokerConfig
		want string
	}{
		{"no port", BrokerConfig{Addr: "127.0.0.1"}, "address"},
		{"port out of range", BrokerConfig{Addr: "127.0.0.1:99999"}, "bad port"},
		{"negative partitions", BrokerConfig{Addr: "127.0.0.1:0", Partitions: -1}, "partitions"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := StartBroker(tc.cfg)
			if err == nil {
				b.Close()
				t.Fatal("StartBroker succeeded")
			}
			if !strings.HasPrefix(err.Error(), "devenv: broker: ") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q, want prefix %q and %q", err, "devenv: broker: ", tc.want)
			}
		})
	}
}

func TestStartBrokerPortZeroReportsRealPort(t *testing.T) {
	b := startTestBroker(t, BrokerConfig{})
	host, port, err := net.SplitHostPort(b.Addr())
	if err != nil {
		t.Fatalf("Addr %q: %v", b.Addr(), err)
	}
	if host != "127.0.0.1" || port == "0" {
		t.Fatalf("Addr = %q, want 127.0.0.1 and a real port", b.Addr())
	}
	if n := len(b.Cluster().ListenAddrs()); n != 1 {
		t.Errorf("cluster has %d brokers, want 1", n)
	}

	// The port is really taken: a second broker on it fails.
	if b2, err := StartBroker(BrokerConfig{Addr: b.Addr()}); err == nil {
		b2.Close()
		t.Fatal("second broker on the same address started")
	}
}

func TestStartBrokerLocksDataDir(t *testing.T) {
	dir := t.TempDir()
	b := startTestBroker(t, BrokerConfig{DataDir: dir})
	b2, err := StartBroker(BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir})
	if err == nil {
		b2.Close()
		t.Fatal("second broker on the same DataDir started")
	}
	if !errors.Is(err, errLocked) {
		t.Errorf("error = %v, want errLocked", err)
	}
	b.Close()
	b.Close() // idempotent
	b3 := startTestBroker(t, BrokerConfig{DataDir: dir})
	b3.Close()
}

func TestBrokerCreateTopicsWithKafkaGo(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	b := startTestBroker(t, BrokerConfig{Partitions: 5})
	c := &kafka.Client{Addr: kafka.TCP(b.Addr()), Timeout: 10 * time.Second}

	resp, err := c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: "explicit", NumPartitions: 4, ReplicationFactor: 1},
		{Topic: "defaulted", NumPartitions: -1, ReplicationFactor: -1},
	}})
	if err != nil {
		t.Fatalf("CreateTopics: %v", err)
	}
	for topic, err := range resp.Errors {
		if err != nil {
			t.Errorf("CreateTopics %s: %v", topic, err)
		}
	}
	if n := partitionCount(t, ctx, b.Addr(), "explicit"); n != 4 {
		t.Errorf("explicit has %d partitions, want 4", n)
	}
	if n := partitionCount(t, ctx, b.Addr(), "defaulted"); n != 5 {
		t.Errorf("defaulted has %d partitions, want 5", n)
	}

	resp, err = c.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: "explicit", NumPartitions: 4, ReplicationFactor: 1},
	}})
	if err != nil {
		t.Fatalf("second CreateTopics: %v", err)
	}
	if err := resp.Errors["explicit"]; !errors.Is(err, kafka.TopicAlreadyExists) {
		t.Errorf("second CreateTopics: error %v, want TopicAlreadyExists", err)
	}
}

// fetchN fetches n messages from r and fails the test if they do not
// arrive in time.
func fetchN(t *testing.T, ctx context.Context, r *kafka.Reader, n int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	msgs := make([]kafka.Message, 0, n)
	for len(msgs) < n {
		m, err := r.FetchMessage(ctx)
		if err != nil {
			t.Fatalf("FetchMessage after %d of %d: %v", len(msgs), n, err)
		}
		msgs = append(msgs, m)
	}
	return msgs
}

func newGroupReader(addr, topic, group string) *kafka.Reader {
	return kafka.NewReader(kafka.ReaderConfig{
		Brokers:     []string{addr},
		Topic:       topic,
		GroupID:     group,
		StartOffset: kafka.FirstOffset,
		MaxWait:     100 * time.Millisecond,
		// CommitMessages commits synchronously.
		CommitInterval: 0,
	})
}

func values(msgs []kafka.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = string(m.Value)
	}
	slices.Sort(out)
	return out
}

// TestBrokerRestartKeepsRecordsAndOffsets produces to an auto-created topic,
// restarts the broker on the same DataDir, consumes and commits part of
// each partition, restarts again and checks the group resumes after its
// committed offsets.
func TestBrokerRestartKeepsRecordsAndOffsets(t *testing.T) {
	const (
		topic      = "records"
		group      = "g"
		partitions = 3
		total      = 30
	)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	cfg := BrokerConfig{DataDir: dir, SyncWrites: true, Partitions: partitions}

	// 1. Produce with acks=all, then stop the broker.
	b := startTestBroker(t, cfg)
	w := &kafka.Writer{
		Addr:                   kafka.TCP(b.Addr()),
		Topic:                  topic,
		Balancer:               &kafka.Hash{},
		RequiredAcks:           kafka.RequireAll,
		AllowAutoTopicCreation: true,
		BatchTimeout:           10 * time.Millisecond,
	}
	msgs := make([]kafka.Message, total)
	want := make([]string, total)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: []byte("k" + strconv.Itoa(i)), Value: []byte(fmt.Sprintf("v%02d", i))}
		want[i] = string(msgs[i].Value)
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatalf("WriteMessages: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("Writer.Close: %v", err)
	}
	if n := partitionCount(t, ctx, b.Addr(), topic); n != partitions {
		t.Fatalf("auto-created topic has %d partitions, want %d", n, partitions)
	}
	b.Close()

	// 2. Restart: every record is there. Commit the first half of each
	// partition.
	b = startTestBroker(t, cfg)
	r := newGroupReader(b.Addr(), topic, group)
	got := fetchN(t, ctx, r, total)
	if !slices.Equal(values(got), want) {
		t.Fatalf("after restart read %v, want %v", values(got), want)
	}
	byPartition := map[int][]kafka.Message{}
	for _, m := range got {
		byPartition[m.Partition] = append(byPartition[m.Partition], m)
	}
	if len(byPartition) != partitions {
		t.Errorf("records spread over %d partitions, want %d", len(byPartition), partitions)
	}
	var commit, rest []kafka.Message
	for _, ms := range byPartition {
		half := len(ms) / 2
		commit = append(commit, ms[:half]...)
		rest = append(rest, ms[half:]...)
	}
	if err := r.CommitMessages(ctx, commit...); err != nil {
		t.Fatalf("CommitMessages: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Reader.Close: %v", err)
	}
	b.Close()

	// 3. Restart again: the group resumes right after its commits.
	b = startTestBroker(t, cfg)
	r = newGroupReader(b.Addr(), topic, group)
	defer r.Close()
	got = fetchN(t, ctx, r, len(rest))
	if !slices.Equal(values(got), values(rest)) {
		t.Fatalf("resumed group read %v, want %v", values(got), values(rest))
	}
	extraCtx, extraCancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer extraCancel()
	if m, err := r.FetchMessage(extraCtx); err == nil {
		t.Errorf("resumed group read unexpected extra record %s (partition %d offset %d)", m.Value, m.Partition, m.Offset)
	}
}

func TestSlogBridgeKeepsWarnAndAbove(t *testing.T) {
	var buf bytes.Buffer
	l := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var kl kfake.Logger = slogBridge{l}
	kl.Logf(kfake.LogLevelDebug, "debug %d", 1)
	kl.Logf(kfake.LogLevelInfo, "info %d", 2)
	kl.Logf(kfake.LogLevelWarn, "warn %d", 3)
	kl.Logf(kfake.LogLevelError, "error %d", 4)
	out := buf.String()
	for _, dropped := range []string{"debug 1", "info 2"} {
		if strings.Contains(out, dropped) {
			t.Errorf("log has %q:\n%s", dropped, out)
		}
	}
	for _, kept := range []string{`level=WARN msg="warn 3" component=kfake`, `level=ERROR msg="error 4" component=kfake`} {
		if !strings.Contains(out, kept) {
			t.Errorf("log lacks %q:\n%s", kept, out)
		}
	}
}
