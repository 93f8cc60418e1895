package stream_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/stream"
)

// fakeReader hands out queued statistics, one per call, then zeros, as
// kafka-go's readers reset their counters on each Stats call.
type fakeReader struct{ queue []kafka.ReaderStats }

func (f *fakeReader) Stats() kafka.ReaderStats {
	if len(f.queue) == 0 {
		return kafka.ReaderStats{Topic: "records"}
	}
	s := f.queue[0]
	f.queue = f.queue[1:]
	return s
}

type fakeWriter struct{ queue []kafka.WriterStats }

func (f *fakeWriter) Stats() kafka.WriterStats {
	if len(f.queue) == 0 {
		return kafka.WriterStats{Topic: "resolved"}
	}
	s := f.queue[0]
	f.queue = f.queue[1:]
	return s
}

var statsNames = []string{"groupmatch_kafka_reader_messages_total", "groupmatch_kafka_reader_bytes_total",
	"groupmatch_kafka_reader_errors_total", "groupmatch_kafka_reader_rebalances_total", "groupmatch_kafka_reader_timeouts_total",
	"groupmatch_kafka_reader_queue_length", "groupmatch_kafka_writer_messages_total", "groupmatch_kafka_writer_errors_total",
	"groupmatch_kafka_writer_retries_total", "groupmatch_kafka_writer_write_duration_seconds"}

const statsWant = `
# HELP groupmatch_kafka_reader_messages_total Messages fetched by the consumer-group readers.
# TYPE groupmatch_kafka_reader_messages_total counter
groupmatch_kafka_reader_messages_total{topic="records"} 16
# HELP groupmatch_kafka_reader_bytes_total Bytes of message values fetched by the consumer-group readers.
# TYPE groupmatch_kafka_reader_bytes_total counter
groupmatch_kafka_reader_bytes_total{topic="records"} 1600
# HELP groupmatch_kafka_reader_errors_total Errors of the consumer-group readers (fetch, commit, group protocol).
# TYPE groupmatch_kafka_reader_errors_total counter
groupmatch_kafka_reader_errors_total{topic="records"} 1
# HELP groupmatch_kafka_reader_rebalances_total Consumer-group rebalances this process's readers went through.
# TYPE groupmatch_kafka_reader_rebalances_total counter
groupmatch_kafka_reader_rebalances_total{topic="records"} 2
# HELP groupmatch_kafka_reader_timeouts_total Fetches that timed out.
# TYPE groupmatch_kafka_reader_timeouts_total counter
groupmatch_kafka_reader_timeouts_total{topic="records"} 1
# HELP groupmatch_kafka_reader_queue_length Messages fetched and waiting in the readers' queues.
# TYPE groupmatch_kafka_reader_queue_length gauge
groupmatch_kafka_reader_queue_length{topic="records"} QUEUE
# HELP groupmatch_kafka_writer_messages_total Messages produced by the writers.
# TYPE groupmatch_kafka_writer_messages_total counter
groupmatch_kafka_writer_messages_total{topic="resolved"} 23
# HELP groupmatch_kafka_writer_errors_total Produce errors of the writers.
# TYPE groupmatch_kafka_writer_errors_total counter
groupmatch_kafka_writer_errors_total{topic="resolved"} 1
# HELP groupmatch_kafka_writer_retries_total Produce attempts the writers retried.
# TYPE groupmatch_kafka_writer_retries_total counter
groupmatch_kafka_writer_retries_total{topic="resolved"} 1
# HELP groupmatch_kafka_writer_write_duration_seconds Time of the writers' produce requests.
# TYPE groupmatch_kafka_writer_write_duration_seconds summary
groupmatch_kafka_writer_write_duration_seconds_sum{topic="resolved"} 0.05
groupmatch_kafka_writer_write_duration_seconds_count{topic="resolved"} 3
`

// Counters are summed over scrapes (Stats resets them) and over readers of
// one topic; the queue length is the last scrape's.
func TestStatsCollectorAccumulates(t *testing.T) {
	c := stream.NewStatsCollector()
	c.AddReader(&fakeReader{queue: []kafka.ReaderStats{
		{Topic: "records", Messages: 10, Bytes: 1000, Errors: 1, Rebalances: 1, Fetches: 4, Dials: 1, QueueLength: 7},
		{Topic: "records", Messages: 5, Bytes: 500, Rebalances: 1, Fetches: 2, Timeouts: 1, QueueLength: 2},
	}})
	c.AddReader(&fakeReader{queue: []kafka.ReaderStats{{Topic: "records", Messages: 1, Bytes: 100, QueueLength: 1}}})
	c.AddWriter(&fakeWriter{queue: []kafka.WriterStats{
		{Topic: "resolved", Writes: 2, Messages: 20, Bytes: 2000, Retries: 1, WriteTime: kafka.DurationStats{Count: 2, Sum: 30 * time.Millisecond}},
		{Topic: "resolved", Writes: 1, Messages: 3, Bytes: 300, Errors: 1, WriteTime: kafka.DurationStats{Count: 1, Sum: 20 * time.Millisecond}},
	}})

	// The first scrape drains one snapshot of each: 8 reader series, 6
	// writer series.
	if n := testutil.CollectAndCount(c); n != 14 {
		t.Fatalf("first scrape: %d series, want 14", n)
	}
	// The second drains the rest.
	if err := testutil.CollectAndCompare(c, strings.NewReader(strings.Replace(statsWant, "QUEUE", "2", 1)), statsNames...); err != nil {
		t.Fatal(err)
	}
	// Nothing new: the totals stay, the queue is empty.
	if err := testutil.CollectAndCompare(c, strings.NewReader(strings.Replace(statsWant, "QUEUE", "0", 1)), statsNames...); err != nil {
		t.Fatal(err)
	}
}

// A real writer's statistics reach the totals across scrapes.
func TestStatsCollectorRealWriter(t *testing.T) {
	b := startBroker(t, 2)
	ctx := testContext(t)
	if err := stream.CreateTopics(ctx, []string{b.Addr()}, nil, []stream.TopicSpec{{Name: "stats", Partitions: 2}}); err != nil {
		t.Fatal(err)
	}
	w := stream.NewWriter([]string{b.Addr()}, "stats", nil)
	defer w.Close()
	c := stream.NewStatsCollector()
	c.AddWriter(w)
	for i := range 3 {
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte{byte(i)}, Value: []byte("v")}); err != nil {
			t.Fatal(err)
		}
		_ = testutil.CollectAndCount(c) // each scrape resets kafka-go's counters
	}
	want := `
# HELP groupmatch_kafka_writer_messages_total Messages produced by the writers.
# TYPE groupmatch_kafka_writer_messages_total counter
groupmatch_kafka_writer_messages_total{topic="stats"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "groupmatch_kafka_writer_messages_total"); err != nil {
		t.Fatal(err)
	}
}
