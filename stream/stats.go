package stream

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// ReaderStatser is what StatsCollector needs of a reader: kafka-go's
// *kafka.Reader and *Consumer have it. Stats must return the counters
// accumulated since its previous call (kafka-go resets them on each call).
type ReaderStatser interface {
	Stats() kafka.ReaderStats
}

// WriterStatser is what StatsCollector needs of a writer: kafka-go's
// *kafka.Writer has it. Like ReaderStatser, Stats resets the counters.
type WriterStatser interface {
	Stats() kafka.WriterStats
}

// readerTotals are a topic's reader counters accumulated over scrapes.
type readerTotals struct {
	messages, bytes, errors, rebalances, fetches, timeouts, dials int64
	queueLength                                                   int64 // gauge: the last scrape's value, summed over readers
}

// writerTotals are a topic's writer counters accumulated over scrapes.
type writerTotals struct {
	writes, messages, bytes, errors, retries int64
	writeCount                               int64
	writeSeconds                             float64
}

// StatsCollector is a prometheus.Collector bridging kafka-go's Reader and
// Writer statistics into counters labelled by topic.
//
// kafka-go's Stats() returns the counts since its previous call and resets
// them, so the collector owns every call to Stats of the readers and writers
// it was given (nothing else may call it, or counts are lost) and adds each
// call's counts to running totals. Readers or writers of the same topic are
// summed into one series. Collect is safe for concurrent use.
type StatsCollector struct {
	mu      sync.Mutex
	readers []ReaderStatser
	writers []WriterStatser
	rTotals map[string]*readerTotals // by topic
	wTotals map[string]*writerTotals // by topic

	rMessages, rBytes, rErrors, rRebalances, rFetches, rTimeouts, rDials, rQueue *prometheus.Desc
	wWrites, wMessages, wBytes, wErrors, wRetries, wSeconds                      *prometheus.Desc
}

var _ prometheus.Collector = (*StatsCollector)(nil)

// NewStatsCollector returns a collector with no readers or writers yet.
func NewStatsCollector() *StatsCollector {
	topic := []string{"topic"}
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, topic, nil) }
	return &StatsCollector{
		rTotals:     make(map[string]*readerTotals),
		wTotals:     make(map[string]*writerTotals),
		rMessages:   d("groupmatch_kafka_reader_messages_total", "Messages fetched by the consumer-group readers."),
		rBytes:      d("groupmatch_kafka_reader_bytes_total", "Bytes of message values fetched by the consumer-group readers."),
		rErrors:     d("groupmatch_kafka_reader_errors_total", "Errors of the consumer-group readers (fetch, commit, group protocol)."),
		rRebalances: d("groupmatch_kafka_reader_rebalances_total", "Consumer-group rebalances this process's readers went through."),
		rFetches:    d("groupmatch_kafka_reader_fetches_total", "Fetch requests sent by the readers."),
		rTimeouts:   d("groupmatch_kafka_reader_timeouts_total", "Fetches that timed out."),
		rDials:      d("groupmatch_kafka_reader_dials_total", "Connections the readers opened."),
		rQueue:      d("groupmatch_kafka_reader_queue_length", "Messages fetched and waiting in the readers' queues."),
		wWrites:     d("groupmatch_kafka_writer_writes_total", "Produce requests sent by the writers."),
		wMessages:   d("groupmatch_kafka_writer_messages_total", "Messages produced by the writers."),
		wBytes:      d("groupmatch_kafka_writer_bytes_total", "Bytes of messages produced by the writers."),
		wErrors:     d("groupmatch_kafka_writer_errors_total", "Produce errors of the writers."),
		wRetries:    d("groupmatch_kafka_writer_retries_total", "Produce attempts the writers retried."),
		wSeconds:    d("groupmatch_kafka_writer_write_duration_seconds", "Time of the writers' produce requests."),
	}
}

// AddReader starts bridging r's statistics.
func (c *StatsCollector) AddReader(r ReaderStatser) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readers = append(c.readers, r)
}

// AddWriter starts bridging w's statistics.
func (c *StatsCollector) AddWriter(w WriterStatser) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writers = append(c.writers, w)
}

// Describe implements prometheus.Collector.
func (c *StatsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.rMessages, c.rBytes, c.rErrors, c.rRebalances, c.rFetches, c.rTimeouts, c.rDials, c.rQueue,
		c.wWrites, c.wMessages, c.wBytes, c.wErrors, c.wRetries, c.wSeconds} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: it drains every reader's and
// writer's statistics into the totals and reports the totals.
func (c *StatsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, t := range c.rTotals {
		t.queueLength = 0
	}
	for _, r := range c.readers {
		s := r.Stats()
		t := c.rTotals[s.Topic]
		if t == nil {
			t = &readerTotals{}
			c.rTotals[s.Topic] = t
		}
		t.messages += s.Messages
		t.bytes += s.Bytes
		t.errors += s.Errors
		t.rebalances += s.Rebalances
		t.fetches += s.Fetches
		t.timeouts += s.Timeouts
		t.dials += s.Dials
		t.queueLength += s.QueueLength
	}
	for _, w := range c.writers {
		s := w.Stats()
		t := c.wTotals[s.Topic]
		if t == nil {
			t = &writerTotals{}
			c.wTotals[s.Topic] = t
		}
		t.writes += s.Writes
		t.messages += s.Messages
		t.bytes += s.Bytes
		t.errors += s.Errors
		t.retries += s.Retries
		t.writeCount += s.WriteTime.Count
		t.writeSeconds += s.WriteTime.Sum.Seconds()
	}
	counter := func(d *prometheus.Desc, v int64, topic string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), topic)
	}
	for topic, t := range c.rTotals {
		counter(c.rMessages, t.messages, topic)
		counter(c.rBytes, t.bytes, topic)
		counter(c.rErrors, t.errors, topic)
		counter(c.rRebalances, t.rebalances, topic)
		counter(c.rFetches, t.fetches, topic)
		counter(c.rTimeouts, t.timeouts, topic)
		counter(c.rDials, t.dials, topic)
		ch <- prometheus.MustNewConstMetric(c.rQueue, prometheus.GaugeValue, float64(t.queueLength), topic)
	}
	for topic, t := range c.wTotals {
		counter(c.wWrites, t.writes, topic)
		counter(c.wMessages, t.messages, topic)
		counter(c.wBytes, t.bytes, topic)
		counter(c.wErrors, t.errors, topic)
		counter(c.wRetries, t.retries, topic)
		ch <- prometheus.MustNewConstSummary(c.wSeconds, uint64(t.writeCount), t.writeSeconds, nil, topic)
	}
}
