package stream

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// LagTarget names a consumer group's subscription to one topic.
type LagTarget struct {
	Group string
	Topic string
}

// LagConfig configures a LagCollector. Zero values take the documented
// defaults.
type LagConfig struct {
	Brokers []string    // required
	Targets []LagTarget // required: the subscriptions to report
	// Security secures the connections; nil is plaintext.
	Security *Security
	// Timeout bounds the Kafka round trips of one scrape; default 3 s. A
	// scrape that runs out of time reports no lag series and counts an error.
	Timeout time.Duration
	// MaxTimestampReads bounds the messages one scrape fetches to learn the
	// time of a partition's oldest unprocessed message (one per lagging
	// partition whose group moved since the last scrape); default 64.
	// Partitions beyond it report no lag in seconds in that scrape.
	MaxTimestampReads int
	Logger            *slog.Logger
}

// Validate reports the first missing required field.
func (c *LagConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("stream: lag: no brokers")
	case len(c.Targets) == 0:
		return errors.New("stream: lag: no targets")
	}
	for _, t := range c.Targets {
		if t.Group == "" || t.Topic == "" {
			return fmt.Errorf("stream: lag: target %+v needs a group and a topic", t)
		}
	}
	return nil
}

// PartitionLag is one partition's position for one consumer group.
type PartitionLag struct {
	Group     string
	Topic     string
	Partition int
	// LogStart is the partition's first retained offset, HighWatermark the
	// offset the next produced message will get.
	LogStart      int64
	HighWatermark int64
	// Committed is the group's committed offset (the next one it will read),
	// or -1 when the group has committed none on this partition.
	Committed int64
	// Lag is HighWatermark - Committed: messages produced but not yet
	// processed by the group. A group that has committed nothing starts at
	// the log start (the stages read from the first offset), so its lag is
	// every retained message.
	Lag int64
}

// LagCollector is a prometheus.Collector reporting consumer-group lag per
// topic and partition, in messages and in seconds. kafka-go's group readers
// do not report per-partition lag, so at each scrape it asks the cluster for
// every partition's high-water mark (ListOffsets) and the group's committed
// offsets (OffsetFetch), and, for a lagging partition, the timestamp of the
// message at the group's position (Fetch of one message, remembered while
// the group stays there). None of it depends on the group having members:
// a group whose members are all down keeps being reported.
//
// Every process reporting a group reports all its partitions, so queries
// aggregate with max by (group, topic, partition). Collect is safe for
// concurrent use; concurrent scrapes are served one after the other.
type LagCollector struct {
	cfg       LagConfig
	transport *kafka.Transport
	client    *kafka.Client

	lag, lagSeconds, committed, hwm *prometheus.Desc
	errors                          prometheus.Counter

	mu sync.Mutex // one scrape's round trips at a time; guards oldest
	// oldest remembers, from the previous scrape, the timestamp of the
	// message at each lagging partition's position.
	oldest map[position]time.Time
	now    func() time.Time
}

// position is one offset of one partition.
type position struct {
	topic     string
	partition int
	offset    int64
}

var _ prometheus.Collector = (*LagCollector)(nil)

// NewLagCollector returns a collector for cfg.Targets. Close releases its
// connections.
func NewLagCollector(cfg LagConfig) (*LagCollector, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.MaxTimestampReads <= 0 {
		cfg.MaxTimestampReads = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tr := cfg.Security.Transport(cfg.Timeout)
	return &LagCollector{
		cfg:       cfg,
		transport: tr,
		client:    &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: cfg.Timeout, Transport: tr},
		now:       time.Now,
		lagSeconds: prometheus.NewDesc("groupmatch_kafka_consumer_lag_seconds",
			"Age of the oldest message the consumer group has not committed (the one at its committed offset), by its timestamp; 0 when it has none.",
			[]string{"group", "topic", "partition"}, nil),
		lag: prometheus.NewDesc("groupmatch_kafka_consumer_lag_messages",
			"Messages produced to a partition but not yet committed by the consumer group (high-water mark minus committed offset).",
			[]string{"group", "topic", "partition"}, nil),
		committed: prometheus.NewDesc("groupmatch_kafka_consumer_committed_offset",
			"The consumer group's committed offset (the next offset it will read), where it has committed one.",
			[]string{"group", "topic", "partition"}, nil),
		hwm: prometheus.NewDesc("groupmatch_kafka_partition_high_watermark_offset",
			"The offset the next message produced to the partition will get.",
			[]string{"topic", "partition"}, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_kafka_lag_collect_errors_total",
			Help: "Scrapes that could not read offsets from Kafka and so reported no lag, or could not read a lagging partition's oldest message and so reported no lag in seconds for it.",
		}),
	}, nil
}

// Close releases the collector's idle connections.
func (c *LagCollector) Close() { c.transport.CloseIdleConnections() }

// Describe implements prometheus.Collector.
func (c *LagCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.lagSeconds
	ch <- c.committed
	ch <- c.hwm
	c.errors.Describe(ch)
}

// Collect implements prometheus.Collector. A failed look-up reports no lag
// series (rather than failing the whole scrape) and counts an error.
func (c *LagCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	lags, err := c.Lag(ctx)
	if err != nil {
		c.errors.Inc()
		c.cfg.Logger.Warn("consumer lag unavailable", "err", err)
	}
	oldest, err := c.oldestUnprocessed(ctx, lags)
	if err != nil {
		c.errors.Inc()
		c.cfg.Logger.Warn("consumer lag in seconds unavailable", "err", err)
	}
	now := c.now()
	seen := make(map[string]bool) // topic/partition of high-water marks sent
	for i, l := range lags {
		p := strconv.Itoa(l.Partition)
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(l.Lag), l.Group, l.Topic, p)
		switch {
		case l.Lag == 0:
			ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, 0, l.Group, l.Topic, p)
		case !oldest[i].IsZero():
			age := max(0, now.Sub(oldest[i]).Seconds())
			ch <- prometheus.MustNewConstMetric(c.lagSeconds, prometheus.GaugeValue, age, l.Group, l.Topic, p)
		}
		if l.Committed >= 0 {
			ch <- prometheus.MustNewConstMetric(c.committed, prometheus.GaugeValue, float64(l.Committed), l.Group, l.Topic, p)
		}
		if k := l.Topic + "/" + p; !seen[k] {
			seen[k] = true
			ch <- prometheus.MustNewConstMetric(c.hwm, prometheus.GaugeValue, float64(l.HighWatermark), l.Topic, p)
		}
	}
	c.errors.Collect(ch)
}

// Lag reads every target's partitions, high-water marks and committed
// offsets, in target order and then partition order. On error it returns
// what it could read of the targets before the failing one.
func (c *LagCollector) Lag(ctx context.Context) ([]PartitionLag, error) {
	topics := make([]string, 0, len(c.cfg.Targets))
	for _, t := range c.cfg.Targets {
		if !slices.Contains(topics, t.Topic) {
			topics = append(topics, t.Topic)
		}
	}
	meta, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: topics})
	if err != nil {
		return nil, fmt.Errorf("stream: lag: metadata: %w", err)
	}
	partitions := make(map[string][]int, len(topics))
	offsetReqs := make(map[string][]kafka.OffsetRequest, len(topics))
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("stream: lag: metadata of %s: %w", t.Name, t.Error)
		}
		for _, p := range t.Partitions {
			partitions[t.Name] = append(partitions[t.Name], p.ID)
			offsetReqs[t.Name] = append(offsetReqs[t.Name], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
		}
		slices.Sort(partitions[t.Name])
	}
	offs, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: offsetReqs})
	if err != nil {
		return nil, fmt.Errorf("stream: lag: list offsets: %w", err)
	}
	type tp struct {
		topic     string
		partition int
	}
	marks := make(map[tp]kafka.PartitionOffsets)
	for topic, ps := range offs.Topics {
		for _, p := range ps {
			if p.Error != nil {
				return nil, fmt.Errorf("stream: lag: offsets of %s/%d: %w", topic, p.Partition, p.Error)
			}
			marks[tp{topic, p.Partition}] = p
		}
	}

	var out []PartitionLag
	for _, t := range c.cfg.Targets {
		ps := partitions[t.Topic]
		if len(ps) == 0 {
			return out, fmt.Errorf("stream: lag: topic %s has no partitions", t.Topic)
		}
		fetched, err := c.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: t.Group, Topics: map[string][]int{t.Topic: ps}})
		if err != nil {
			return out, fmt.Errorf("stream: lag: committed offsets of %s: %w", t.Group, err)
		}
		// Apache Kafka answers a group that never committed with offset
		// -1; some brokers say the group does not exist. Both mean no
		// commits.
		if fetched.Error != nil && !errors.Is(fetched.Error, kafka.GroupIdNotFound) {
			return out, fmt.Errorf("stream: lag: committed offsets of %s: %w", t.Group, fetched.Error)
		}
		committed := make(map[int]int64, len(ps))
		for _, p := range fetched.Topics[t.Topic] {
			if errors.Is(p.Error, kafka.GroupIdNotFound) {
				continue
			}
			if p.Error != nil {
				return out, fmt.Errorf("stream: lag: committed offset of %s on %s/%d: %w", t.Group, t.Topic, p.Partition, p.Error)
			}
			committed[p.Partition] = p.CommittedOffset
		}
		for _, p := range ps {
			m, ok := marks[tp{t.Topic, p}]
			if !ok {
				return out, fmt.Errorf("stream: lag: no offsets for %s/%d", t.Topic, p)
			}
			l := PartitionLag{Group: t.Group, Topic: t.Topic, Partition: p,
				LogStart: m.FirstOffset, HighWatermark: m.LastOffset, Committed: -1}
			start := m.FirstOffset
			if off, ok := committed[p]; ok && off >= 0 {
				// Below the log start (retention removed what it had not
				// read), the group resumes at the log start.
				l.Committed, start = off, max(off, m.FirstOffset)
			}
			l.Lag = max(0, l.HighWatermark-start)
			out = append(out, l)
		}
	}
	return out, nil
}

// oldestUnprocessed returns, for each of lags, the timestamp of the message
// at the group's position (its committed offset, or the log start), zero
// when the partition does not lag or the time is unknown. It reads at most
// cfg.MaxTimestampReads messages, one per lagging position it does not
// remember from the previous call; the error is the first failed read.
// Callers hold c.mu.
func (c *LagCollector) oldestUnprocessed(ctx context.Context, lags []PartitionLag) ([]time.Time, error) {
	out := make([]time.Time, len(lags))
	kept := make(map[position]time.Time, len(c.oldest))
	reads := 0
	var firstErr error
	for i, l := range lags {
		if l.Lag == 0 {
			continue
		}
		pos := position{l.Topic, l.Partition, max(l.Committed, l.LogStart)}
		if t, ok := kept[pos]; ok { // another group at the same position
			out[i] = t
			continue
		}
		if t, ok := c.oldest[pos]; ok {
			out[i], kept[pos] = t, t
			continue
		}
		if reads == c.cfg.MaxTimestampReads || firstErr != nil {
			continue
		}
		reads++
		t, err := c.timestampAt(ctx, pos)
		if err != nil {
			firstErr = err
			continue
		}
		out[i], kept[pos] = t, t
	}
	c.oldest = kept
	return out, firstErr
}

// timestampAt reads the timestamp of the first message at or after pos.
func (c *LagCollector) timestampAt(ctx context.Context, pos position) (time.Time, error) {
	resp, err := c.client.Fetch(ctx, &kafka.FetchRequest{Topic: pos.topic, Partition: pos.partition, Offset: pos.offset,
		MinBytes: 1, MaxBytes: 64 << 10, MaxWait: 200 * time.Millisecond})
	if err != nil {
		return time.Time{}, fmt.Errorf("stream: lag: message at %s/%d@%d: %w", pos.topic, pos.partition, pos.offset, err)
	}
	if closer, ok := resp.Records.(io.Closer); ok {
		defer closer.Close()
	}
	if resp.Error != nil {
		return time.Time{}, fmt.Errorf("stream: lag: message at %s/%d@%d: %w", pos.topic, pos.partition, pos.offset, resp.Error)
	}
	if resp.Records == nil {
		return time.Time{}, fmt.Errorf("stream: lag: message at %s/%d@%d: none returned", pos.topic, pos.partition, pos.offset)
	}
	for {
		r, err := resp.Records.ReadRecord()
		if err != nil { // io.EOF: the answer held no message at or after pos
			return time.Time{}, fmt.Errorf("stream: lag: message at %s/%d@%d: %w", pos.topic, pos.partition, pos.offset, err)
		}
		if r.Offset >= pos.offset { // a batch may start before the offset asked for
			return r.Time, nil
		}
	}
}
