package stream_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/stream"
)

// With PerPartition a handler blocked on one partition holds back only that
// partition: the other's messages are handled and committed meanwhile, and
// nothing of the blocked partition is committed until its chunk returns.
func TestConsumerPerPartition(t *testing.T) {
	b := startBroker(t, 2)
	brokers := []string{b.Addr()}
	ctx := testContext(t)
	if err := stream.CreateTopics(ctx, brokers, nil, []stream.TopicSpec{{Name: "pp", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "pp", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return int(m.Key[0]) })}
	defer w.Close()
	var msgs []kafka.Message
	for _, p := range []byte{0, 0, 0, 1, 1, 1, 1} {
		msgs = append(msgs, kafka.Message{Key: []byte{p}, Value: []byte("x")})
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, GroupID: "pp-group", Topic: "pp", PerPartition: true})
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var mu sync.Mutex
	handled := map[int]int{}
	h := func(ctx context.Context, chunk []kafka.Message) error {
		p := chunk[0].Partition
		for _, m := range chunk {
			if m.Partition != p {
				t.Errorf("chunk mixes partitions %d and %d", p, m.Partition)
			}
		}
		if p == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		mu.Lock()
		handled[p] += len(chunk)
		mu.Unlock()
		return nil
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(runCtx, h) }()

	waitOffsets(t, brokers, "pp-group", "pp", map[int]int64{0: -1, 1: 4})
	close(release)
	waitOffsets(t, brokers, "pp-group", "pp", map[int]int64{0: 3, 1: 4})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if handled[0] != 3 || handled[1] != 4 {
		t.Errorf("handled %v, want 3 of partition 0 and 4 of partition 1", handled)
	}
	if s := c.Stats(); s.Messages != 7 || s.Topic != "pp" {
		t.Errorf("stats: %d messages of %q, want 7 of pp", s.Messages, s.Topic)
	}
}

// A handler's error stops every partition's worker and is Run's error.
func TestConsumerPerPartitionHandlerError(t *testing.T) {
	b := startBroker(t, 2)
	brokers := []string{b.Addr()}
	ctx := testContext(t)
	if err := stream.CreateTopics(ctx, brokers, nil, []stream.TopicSpec{{Name: "pe", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: "pe", RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	if err := w.WriteMessages(ctx, kafka.Message{Value: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, GroupID: "pe-group", Topic: "pe", PerPartition: true})
	if err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err = c.Run(ctx, func(context.Context, []kafka.Message) error { return boom })
	if !errors.Is(err, boom) {
		t.Fatalf("Run = %v, want the handler's error", err)
	}
	waitOffsets(t, brokers, "pe-group", "pe", map[int]int64{0: -1, 1: -1})
}

// waitOffsets waits until the group's committed offsets of topic are want
// (-1: none committed).
func waitOffsets(t *testing.T, brokers []string, group, topic string, want map[int]int64) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var parts []int
		for p := range want {
			parts = append(parts, p)
		}
		resp, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
		if err != nil {
			t.Fatal(err)
		}
		got := map[int]int64{}
		for _, p := range resp.Topics[topic] {
			got[p.Partition] = p.CommittedOffset
		}
		same := true
		for p, o := range want {
			same = same && got[p] == o
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("committed %v, want %v", got, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A MaxChunk over MaxChunkLimit fails Validate rather than allocating a
// channel and a slice of that size.
func TestConsumerConfigChunkLimit(t *testing.T) {
	c := stream.ConsumerConfig{Brokers: []string{"127.0.0.1:9092"}, GroupID: "g", Topic: "t", MaxChunk: stream.MaxChunkLimit}
	if err := c.Validate(); err != nil {
		t.Fatalf("MaxChunk %d: %v", stream.MaxChunkLimit, err)
	}
	c.MaxChunk = stream.MaxChunkLimit + 1
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "MaxChunk must be at most 50000") {
		t.Fatalf("MaxChunk %d: Validate() = %v", c.MaxChunk, err)
	}
}
