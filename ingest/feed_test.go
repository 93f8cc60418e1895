package ingest

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// One partition's request that fails transiently for a long time holds back
// only the requests after it in that partition; requests that fail
// permanently or panic are rejected and their partition goes on; no offset
// is committed past an unanswered request.
func TestFeedPartitionsProgressIndependently(t *testing.T) {
	r := newRig(t, 2)
	contracts := schematest.MustContracts(t)
	topics := pipeline.DefaultTopics()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	feed, err := NewFeed(FeedConfig{Brokers: r.brokers, GroupID: "feed-test",
		Retry: retry.Policy{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond}}, r.svc)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- feed.Run(runCtx) }()

	// The key's first byte names the partition.
	w := &kafka.Writer{Addr: kafka.TCP(r.brokers...), Topic: topics.Requests, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return int(m.Key[0] - '0') })}
	defer w.Close()
	req := func(key, token, idemKey string) kafka.Message {
		m := kafka.Message{Key: []byte(key), Value: []byte(validBody), Headers: []kafka.Header{{Key: pipeline.HeaderToken, Value: []byte(token)}}}
		if idemKey != "" {
			m.Headers = append(m.Headers, kafka.Header{Key: pipeline.HeaderIdempotencyKey, Value: []byte(idemKey)})
		}
		return m
	}
	start := time.Now()
	if err := w.WriteMessages(ctx,
		req("0-flaky", "flaky", ""), req("0-after", "good", ""),
		req("1-first", "good", ""), req("1-panic", "boom", ""), req("1-badkey", "good", "k\xff"), req("1-last", "good", ""),
	); err != nil {
		t.Fatal(err)
	}

	events := func(want ...string) map[string]pipeline.RequestEvent {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got := make(map[string]pipeline.RequestEvent)
			for p := range 2 {
				for _, m := range readPartition(t, r.brokers, topics.Events, p) {
					var ev pipeline.RequestEvent
					if err := json.Unmarshal(m.Value, &ev); err != nil {
						t.Fatal(err)
					}
					if _, err := contracts.ValidateEvent(m.Value); err != nil {
						t.Errorf("event %s breaks its schema: %v", m.Value, err)
					}
					got[ev.RequestKey] = ev
				}
			}
			all := true
			for _, k := range want {
				_, ok := got[k]
				all = all && ok
			}
			if all {
				return got
			}
			if time.Now().After(deadline) {
				t.Fatalf("events %v, want answers to %v", got, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	got := events("1-first", "1-panic", "1-badkey", "1-last")
	t.Logf("partition 1 answered in %s while partition 0 retries", time.Since(start).Round(time.Millisecond))
	if ev := got["1-first"]; ev.Type != pipeline.EventRequestAccepted || ev.BatchID == 0 {
		t.Errorf("1-first: %+v, want accepted", ev)
	}
	if ev := got["1-panic"]; ev.Type != pipeline.EventRequestRejected || ev.Code != "422" || ev.ErrorCode != "UNPROCESSABLE" {
		t.Errorf("1-panic: %+v, want rejected 422 UNPROCESSABLE", ev)
	}
	if ev := got["1-badkey"]; ev.Type != pipeline.EventRequestRejected || ev.Code != "400" || ev.ErrorCode != "INVALID_PARAMETER" {
		t.Errorf("1-badkey: %+v, want rejected 400 INVALID_PARAMETER", ev)
	}
	if ev := got["1-last"]; ev.Type != pipeline.EventRequestAccepted || ev.BatchID <= got["1-first"].BatchID {
		t.Errorf("1-last: %+v, want accepted after 1-first", ev)
	}
	if _, ok := got["0-flaky"]; ok {
		t.Fatalf("0-flaky answered while its acceptance fails: %+v", got["0-flaky"])
	}
	if _, ok := got["0-after"]; ok {
		t.Fatalf("0-after answered before the request ahead of it in its partition")
	}
	if n := testutil.ToFloat64(r.svc.metrics.FeedFailures.WithLabelValues("panic")); n != 1 {
		t.Errorf("feed failures of class panic %v, want 1", n)
	}
	waitCommitted(t, r.brokers, "feed-test", topics.Requests, map[int]int64{0: -1, 1: 4})

	close(r.auth.down) // PostgreSQL is back for the flaky tenant
	got = events("0-flaky", "0-after")
	flaky, after := got["0-flaky"], got["0-after"]
	if flaky.Type != pipeline.EventRequestAccepted || after.Type != pipeline.EventRequestAccepted || flaky.BatchID >= after.BatchID {
		t.Errorf("partition 0 answered %+v then %+v, want both accepted in order", flaky, after)
	}
	waitCommitted(t, r.brokers, "feed-test", topics.Requests, map[int]int64{0: 2, 1: 4})
	stop()
	if err := <-done; err != nil {
		t.Fatalf("feed Run: %v", err)
	}
}

// waitCommitted waits until the group's committed offsets are want (-1:
// none committed).
func waitCommitted(t *testing.T, brokers []string, group, topic string, want map[int]int64) {
	t.Helper()
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		parts := make([]int, 0, len(want))
		for p := range want {
			parts = append(parts, p)
		}
		resp, err := client.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: parts}})
		if err != nil {
			t.Fatal(err)
		}
		got := make(map[int]int64)
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
			t.Fatalf("committed offsets %v, want %v", got, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// readPartition reads one partition of topic from its start to its end.
func readPartition(t *testing.T, brokers []string, topic string, partition int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, partition)
	if err != nil {
		t.Fatal(err)
	}
	first, last, err := conn.ReadOffsets()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if last <= first {
		return nil
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	if err := rd.SetOffset(first); err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read %s/%d: %v", topic, partition, err)
		}
		out = append(out, m)
		if m.Offset >= last-1 {
			return out
		}
	}
}
