package stream_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/stream"
)

func startBroker(t *testing.T, partitions int) *devenv.Broker {
	t.Helper()
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: partitions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	return b
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// Lag is the high-water mark minus the committed offset; a partition the
// group never committed on lags by everything retained.
func TestLagCollector(t *testing.T) {
	b := startBroker(t, 3)
	brokers := []string{b.Addr()}
	ctx := testContext(t)
	if err := stream.CreateTopics(ctx, brokers, nil, []stream.TopicSpec{{Name: "recs", Partitions: 3}}); err != nil {
		t.Fatal(err)
	}
	// 5 messages to partition 0, 3 to partition 1, none to partition 2.
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "recs", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return int(m.Key[0]) })}
	defer w.Close()
	var msgs []kafka.Message
	for _, p := range []byte{0, 0, 0, 0, 0, 1, 1, 1} {
		msgs = append(msgs, kafka.Message{Key: []byte{p}, Value: []byte("x")})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	// The group has processed two messages of partition 0.
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: "g", GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{"recs": {{Partition: 0, Offset: 2}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				t.Fatalf("commit: %v", p.Error)
			}
		}
	}

	// Group "new" has never committed: it lags by everything.
	c, err := stream.NewLagCollector(stream.LagConfig{Brokers: brokers, Targets: []stream.LagTarget{{Group: "g", Topic: "recs"}, {Group: "new", Topic: "recs"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := `
# HELP groupmatch_kafka_consumer_lag_messages Messages produced to a partition but not yet committed by the consumer group (high-water mark minus committed offset).
# TYPE groupmatch_kafka_consumer_lag_messages gauge
groupmatch_kafka_consumer_lag_messages{group="g",partition="0",topic="recs"} 3
groupmatch_kafka_consumer_lag_messages{group="g",partition="1",topic="recs"} 3
groupmatch_kafka_consumer_lag_messages{group="g",partition="2",topic="recs"} 0
groupmatch_kafka_consumer_lag_messages{group="new",partition="0",topic="recs"} 5
groupmatch_kafka_consumer_lag_messages{group="new",partition="1",topic="recs"} 3
groupmatch_kafka_consumer_lag_messages{group="new",partition="2",topic="recs"} 0
# HELP groupmatch_kafka_consumer_committed_offset The consumer group's committed offset (the next offset it will read), where it has committed one.
# TYPE groupmatch_kafka_consumer_committed_offset gauge
groupmatch_kafka_consumer_committed_offset{group="g",partition="0",topic="recs"} 2
# HELP groupmatch_kafka_partition_high_watermark_offset The offset the next message produced to the partition will get.
# TYPE groupmatch_kafka_partition_high_watermark_offset gauge
groupmatch_kafka_partition_high_watermark_offset{partition="0",topic="recs"} 5
groupmatch_kafka_partition_high_watermark_offset{partition="1",topic="recs"} 3
groupmatch_kafka_partition_high_watermark_offset{partition="2",topic="recs"} 0
# HELP groupmatch_kafka_lag_collect_errors_total Scrapes that could not read offsets from Kafka and so reported no lag, or could not read a lagging partition's oldest message and so reported no lag in seconds for it.
# TYPE groupmatch_kafka_lag_collect_errors_total counter
groupmatch_kafka_lag_collect_errors_total 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "groupmatch_kafka_consumer_lag_messages",
		"groupmatch_kafka_consumer_committed_offset", "groupmatch_kafka_partition_high_watermark_offset",
		"groupmatch_kafka_lag_collect_errors_total"); err != nil {
		t.Fatal(err)
	}
}

// Lag in seconds is the age of the message at the group's position, by its
// timestamp, for a group that has no member at all (it only ever
// committed); 0 on a partition it has caught up on.
func TestLagSeconds(t *testing.T) {
	b := startBroker(t, 3)
	brokers := []string{b.Addr()}
	ctx := testContext(t)
	if err := stream.CreateTopics(ctx, brokers, nil, []stream.TopicSpec{{Name: "recs", Partitions: 3}}); err != nil {
		t.Fatal(err)
	}
	// Partition 0: a message of an hour ago, then one of now; partition
	// 1: one of now; partition 2: none.
	now := time.Now()
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "recs", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return int(m.Key[0]) })}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Key: []byte{0}, Value: []byte("x"), Time: now.Add(-time.Hour)},
		kafka.Message{Key: []byte{0}, Value: []byte("x"), Time: now}, kafka.Message{Key: []byte{1}, Value: []byte("x"), Time: now}); err != nil {
		t.Fatal(err)
	}
	c, err := stream.NewLagCollector(stream.LagConfig{Brokers: brokers, Targets: []stream.LagTarget{{Group: "g", Topic: "recs"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	seconds := func() map[string]float64 {
		t.Helper()
		reg := prometheus.NewPedanticRegistry()
		reg.MustRegister(c)
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]float64{}
		for _, mf := range mfs {
			if mf.GetName() == "groupmatch_kafka_lag_collect_errors_total" && mf.GetMetric()[0].GetCounter().GetValue() != 0 {
				t.Errorf("collect errors: %v", mf.GetMetric()[0].GetCounter().GetValue())
			}
			if mf.GetName() != "groupmatch_kafka_consumer_lag_seconds" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "partition" {
						got[l.GetValue()] = m.GetGauge().GetValue()
					}
				}
			}
		}
		return got
	}
	commit := func(partition int, offset int64) {
		t.Helper()
		client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
		if _, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: "g", GenerationID: -1,
			Topics: map[string][]kafka.OffsetCommit{"recs": {{Partition: partition, Offset: offset}}}}); err != nil {
			t.Fatal(err)
		}
	}

	// Nothing committed: the group's position is the log start.
	got := seconds()
	if v := got["0"]; v < 3600 || v > 3600+60 {
		t.Errorf("partition 0 waits since an hour: lag %v s", v)
	}
	if v := got["1"]; v <= 0 || v > 60 {
		t.Errorf("partition 1 waits since now: lag %v s, want a little above 0", v)
	}
	if v, ok := got["2"]; !ok || v != 0 {
		t.Errorf("partition 2 has nothing to wait: lag %v s (reported %v), want 0", v, ok)
	}
	// Past the old message, the age is the newer one's; caught up, 0.
	commit(0, 1)
	commit(1, 1)
	got = seconds()
	if v := got["0"]; v <= 0 || v > 60 {
		t.Errorf("partition 0 at offset 1: lag %v s, want a little above 0", v)
	}
	if v, ok := got["1"]; !ok || v != 0 {
		t.Errorf("partition 1 caught up: lag %v s (reported %v), want 0", v, ok)
	}
}

// A broker that does not answer costs one error and no series, never a
// failed scrape.
func TestLagCollectorUnreachable(t *testing.T) {
	b := startBroker(t, 1)
	addr := b.Addr()
	b.Close()
	c, err := stream.NewLagCollector(stream.LagConfig{Brokers: []string{addr}, Targets: []stream.LagTarget{{Group: "g", Topic: "t"}}, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	want := `
# HELP groupmatch_kafka_lag_collect_errors_total Scrapes that could not read offsets from Kafka and so reported no lag, or could not read a lagging partition's oldest message and so reported no lag in seconds for it.
# TYPE groupmatch_kafka_lag_collect_errors_total counter
groupmatch_kafka_lag_collect_errors_total 1
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}

func TestLagConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  stream.LagConfig
		want string
	}{
		{stream.LagConfig{Targets: []stream.LagTarget{{"g", "t"}}}, "no brokers"},
		{stream.LagConfig{Brokers: []string{"b"}}, "no targets"},
		{stream.LagConfig{Brokers: []string{"b"}, Targets: []stream.LagTarget{{Topic: "t"}}}, "needs a group and a topic"},
	} {
		if _, err := stream.NewLagCollector(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
