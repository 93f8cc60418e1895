package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// ConsumerConfig configures a Consumer. Zero values take the documented
// defaults.
type ConsumerConfig struct {
	Brokers []string // required
	GroupID string   // required: the consumer group, one per stage
	Topic   string   // required
	// Security secures the connections; nil is plaintext.
	Security *Security
	// MaxChunk is the most messages handed to the handler at once; default 1000.
	MaxChunk int
	// Linger is how long a chunk waits for more messages once it has one;
	// default 5 ms.
	Linger time.Duration
	// DrainTimeout bounds how long the in-flight chunk may take to finish
	// and commit after shutdown began; default 8 s.
	DrainTimeout time.Duration
	// MaxWait is the longest a fetch waits on the broker; default 250 ms.
	// Reader.Close can block for it.
	MaxWait time.Duration
	// PerPartition makes Run read every assigned partition with its own
	// fetcher and goroutine: the handler gets one partition's messages at
	// a time, is called concurrently for different partitions, and a
	// handler that is slow or retrying holds back only its own partition
	// (its fetcher stops at MaxChunk buffered messages; the others go on).
	// Each partition commits its own offsets after each of its chunks.
	// Default false: one fetcher, chunks mixing partitions.
	PerPartition bool
	Logger       *slog.Logger
}

// MaxChunkLimit is the largest MaxChunk a consumer takes: a chunk is held
// in memory whole (and its channel and slice are allocated at that size),
// so a mistyped setting must fail at start, not exhaust memory.
const MaxChunkLimit = 50_000

// MaxMembers is the most consumer-group members one stage process runs
// (matcher and sink Config.Consumers): each holds a Kafka connection and
// up to a chunk of messages, and members beyond the topic's partitions
// idle.
const MaxMembers = 64

// Validate reports the first missing required field, or a MaxChunk over
// MaxChunkLimit.
func (c *ConsumerConfig) Validate() error {
	switch {
	case c.MaxChunk > MaxChunkLimit:
		return fmt.Errorf("stream: consumer: MaxChunk must be at most %d, got %d", MaxChunkLimit, c.MaxChunk)
	case len(c.Brokers) == 0:
		return errors.New("stream: consumer: no brokers")
	case c.GroupID == "":
		return errors.New("stream: consumer: no group id")
	case c.Topic == "":
		return errors.New("stream: consumer: no topic")
	}
	return nil
}

func (c *ConsumerConfig) withDefaults() ConsumerConfig {
	d := *c
	if d.MaxChunk <= 0 {
		d.MaxChunk = 1000
	}
	if d.Linger <= 0 {
		d.Linger = 5 * time.Millisecond
	}
	if d.DrainTimeout <= 0 {
		d.DrainTimeout = 8 * time.Second
	}
	if d.MaxWait <= 0 {
		d.MaxWait = 250 * time.Millisecond
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// fetchRetryMin and fetchRetryMax bound the pause after a failed fetch.
const (
	fetchRetryMin = 100 * time.Millisecond
	fetchRetryMax = 5 * time.Second
)

// Handler processes one chunk of messages, in partition order. When it
// returns nil the chunk's offsets are committed; an error stops the consumer
// without committing, so the chunk is delivered again (to this process after
// a restart, or to another member of the group). The handler must therefore
// be idempotent. Its context stays valid for DrainTimeout after shutdown
// begins, so an in-flight chunk can finish.
type Handler func(ctx context.Context, msgs []kafka.Message) error

// Consumer is one member of a consumer group that hands its messages out in
// chunks. Offsets are committed synchronously after each chunk and never
// before: at-least-once delivery.
type Consumer struct {
	cfg    ConsumerConfig
	reader *kafka.Reader // nil when PerPartition

	// PerPartition: the partition readers of the current generation, and
	// the statistics of readers closed since the last Stats.
	mu      sync.Mutex
	readers map[*kafka.Reader]struct{}
	gone    kafka.ReaderStats
}

// NewConsumer returns a consumer. Without PerPartition it joins the group
// at once; with it, when Run starts.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if cfg.PerPartition {
		return &Consumer{cfg: cfg, readers: make(map[*kafka.Reader]struct{})}, nil
	}
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers:  cfg.Brokers,
		GroupID:  cfg.GroupID,
		Topic:    cfg.Topic,
		Dialer:   cfg.Security.Dialer(10 * time.Second),
		MinBytes: 1,
		// A fetch answers at most 1 MiB per partition (Kafka's own
		// max.partition.fetch.bytes default): several thousand records,
		// more than a chunk takes from one partition. A broker builds each
		// answer in memory, and the in-process dev broker keeps it until
		// sent, so 16 MiB per partition and consumer made dev's resident
		// memory grow by hundreds of MB under a backlog.
		MaxBytes:       1 << 20,
		MaxWait:        cfg.MaxWait,
		QueueCapacity:  cfg.MaxChunk,
		StartOffset:    kafka.FirstOffset,
		CommitInterval: 0, // synchronous commits
		// A dead member's partitions move on within 10 s.
		SessionTimeout:        10 * time.Second,
		HeartbeatInterval:     1 * time.Second,
		RebalanceTimeout:      10 * time.Second,
		WatchPartitionChanges: true,
		Logger: kafka.LoggerFunc(func(msg string, args ...any) {
			cfg.Logger.Debug(fmt.Sprintf(msg, args...), "component", "kafka-reader")
		}),
		ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) { cfg.Logger.Warn(fmt.Sprintf(msg, args...), "component", "kafka-reader") }),
	})
	return &Consumer{cfg: cfg, reader: r}, nil
}

// Stats returns the reader's statistics since the last call; with
// PerPartition, the sums of the partition readers' counters and queues.
func (c *Consumer) Stats() kafka.ReaderStats {
	if c.reader != nil {
		return c.reader.Stats()
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	sum := c.gone
	c.gone = kafka.ReaderStats{}
	for r := range c.readers {
		addStats(&sum, r.Stats())
	}
	sum.Topic = c.cfg.Topic
	return sum
}

func addStats(sum *kafka.ReaderStats, s kafka.ReaderStats) {
	sum.Dials += s.Dials
	sum.Fetches += s.Fetches
	sum.Messages += s.Messages
	sum.Bytes += s.Bytes
	sum.Rebalances += s.Rebalances
	sum.Timeouts += s.Timeouts
	sum.Errors += s.Errors
	sum.QueueLength += s.QueueLength
	sum.Lag += s.Lag
}

// GroupID is the consumer group the consumer is a member of.
func (c *Consumer) GroupID() string { return c.cfg.GroupID }

// Topic is the topic the consumer reads.
func (c *Consumer) Topic() string { return c.cfg.Topic }

// Run consumes until ctx is done or the handler fails. A failed fetch (the
// broker unreachable) is logged and retried, never the end of Run: the
// stage outlives a broker restart. On shutdown it stops
// fetching, lets the in-flight chunk finish and commit (bounded by
// DrainTimeout), closes the reader and returns nil.
//
// With PerPartition the handler gets one partition's messages at a time and
// is called concurrently for different partitions; see runPartitioned.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	if c.cfg.PerPartition {
		return c.runPartitioned(ctx, h)
	}
	fetchCtx, stopFetch := context.WithCancel(ctx)
	msgs := make(chan kafka.Message, c.cfg.MaxChunk) // bounded: the fetcher blocks when the handler lags
	go func() {
		defer close(msgs)
		// A fetch error is kafka-go reporting that the broker has been
		// unreachable for a few attempts; its reader keeps retrying and
		// heals once the broker is back. Going on (with a pause, so the
		// errors do not flood the log) keeps the stage alive through a
		// broker restart or a leader change instead of exiting, which took
		// ingest's HTTP API down with it.
		pause := fetchRetryMin
		for {
			m, err := c.reader.FetchMessage(fetchCtx)
			if err != nil {
				if fetchCtx.Err() != nil {
					return
				}
				c.cfg.Logger.Warn("fetch failed; retrying", "topic", c.cfg.Topic, "retry_in", pause, "err", err)
				select {
				case <-time.After(pause):
				case <-fetchCtx.Done():
					return
				}
				pause = min(2*pause, fetchRetryMax)
				continue
			}
			pause = fetchRetryMin
			select {
			case msgs <- m:
			case <-fetchCtx.Done():
				return
			}
		}
	}()

	// The handler's context outlives ctx by DrainTimeout.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(c.cfg.DrainTimeout, cancelWork)
		_ = t
	})
	defer func() {
		stopDrain()
		cancelWork()
		stopFetch()
		for range msgs { // let the fetcher exit
		}
		if err := c.reader.Close(); err != nil {
			c.cfg.Logger.Warn("close reader", "topic", c.cfg.Topic, "err", err)
		}
	}()

	chunk := make([]kafka.Message, 0, c.cfg.MaxChunk)
	linger := time.NewTimer(time.Hour)
	linger.Stop()
	for {
		chunk = chunk[:0]
		select {
		case m, ok := <-msgs:
			if !ok { // the fetcher stops only when ctx is done
				return nil
			}
			chunk = append(chunk, m)
		case <-ctx.Done():
			return nil
		}
		linger.Reset(c.cfg.Linger)
	fill:
		for len(chunk) < c.cfg.MaxChunk {
			select {
			case m, ok := <-msgs:
				if !ok {
					break fill
				}
				chunk = append(chunk, m)
			case <-linger.C:
				break fill
			}
		}
		linger.Stop()
		if err := h(workCtx, chunk); err != nil {
			return fmt.Errorf("stream: handle %s chunk: %w", c.cfg.Topic, err)
		}
		if err := c.reader.CommitMessages(workCtx, chunk...); err != nil {
			// After a rebalance the chunk belongs to another member, which
			// will process it again; the handler is idempotent.
			c.cfg.Logger.Warn("commit failed; chunk will be redelivered", "topic", c.cfg.Topic, "messages", len(chunk), "err", err)
			if workCtx.Err() != nil {
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// runPartitioned is Run with PerPartition. Each generation of the group
// starts one worker per assigned partition, with a reader of its own
// positioned at the group's committed offset; a worker fetches a chunk of
// its partition, hands it to h, and commits the offset after the chunk's
// last message once h returned nil. A rebalance cancels the workers'
// handlers and fetches (their uncommitted messages go to the partitions'
// next owners); shutdown stops fetching and lets in-flight chunks finish and
// commit within DrainTimeout. A handler's error stops every worker and is
// returned.
func (c *Consumer) runPartitioned(ctx context.Context, h Handler) error {
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID: c.cfg.GroupID, Brokers: c.cfg.Brokers, Topics: []string{c.cfg.Topic},
		Dialer:                c.cfg.Security.Dialer(10 * time.Second),
		StartOffset:           kafka.FirstOffset,
		SessionTimeout:        10 * time.Second,
		HeartbeatInterval:     1 * time.Second,
		RebalanceTimeout:      10 * time.Second,
		WatchPartitionChanges: true,
		Logger:                c.kafkaLogger(slog.LevelDebug, "kafka-group"),
		ErrorLogger:           c.kafkaLogger(slog.LevelWarn, "kafka-group"),
	})
	if err != nil {
		return fmt.Errorf("stream: group %s: %w", c.cfg.GroupID, err)
	}
	runCtx, stopRun := context.WithCancel(ctx)
	defer stopRun()
	// The handlers' context outlives ctx by DrainTimeout.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	stopDrain := context.AfterFunc(ctx, func() { time.AfterFunc(c.cfg.DrainTimeout, cancelWork) })
	var (
		workers sync.WaitGroup
		failMu  sync.Mutex
		failure error
	)
	defer func() {
		stopRun()
		workers.Wait()
		stopDrain()
		cancelWork()
		if err := group.Close(); err != nil {
			c.cfg.Logger.Warn("leave group", "topic", c.cfg.Topic, "err", err)
		}
	}()
	for {
		gen, err := group.Next(runCtx)
		if err != nil {
			if runCtx.Err() != nil || errors.Is(err, kafka.ErrGroupClosed) {
				break
			}
			c.cfg.Logger.Warn("consumer group not joined yet; retrying", "topic", c.cfg.Topic, "err", err)
			continue // the group backs off before its next attempt
		}
		c.mu.Lock()
		c.gone.Rebalances++
		c.mu.Unlock()
		assigned := gen.Assignments[c.cfg.Topic]
		workers.Add(1)
		gen.Start(func(genCtx context.Context) {
			defer workers.Done()
			var wg sync.WaitGroup
			for _, a := range assigned {
				wg.Go(func() {
					if err := c.runPartition(runCtx, workCtx, genCtx, gen, a, h); err != nil {
						failMu.Lock()
						if failure == nil {
							failure = err
						}
						failMu.Unlock()
						stopRun()
					}
				})
			}
			wg.Wait()
			// A generation ends when its last function returns: stay
			// until it ends for its own reasons, or shutdown.
			select {
			case <-genCtx.Done():
			case <-runCtx.Done():
			}
		})
	}
	workers.Wait()
	failMu.Lock()
	defer failMu.Unlock()
	return failure
}

// runPartition consumes one assigned partition for one generation; see
// runPartitioned. It returns nil on shutdown or when the generation ends.
func (c *Consumer) runPartition(runCtx, workCtx, genCtx context.Context, gen *kafka.Generation, a kafka.PartitionAssignment, h Handler) error {
	r := kafka.NewReader(kafka.ReaderConfig{
		Brokers: c.cfg.Brokers, Topic: c.cfg.Topic, Partition: a.ID,
		Dialer:   c.cfg.Security.Dialer(10 * time.Second),
		MinBytes: 1, MaxBytes: 1 << 20, MaxWait: c.cfg.MaxWait, QueueCapacity: c.cfg.MaxChunk,
		Logger:      c.kafkaLogger(slog.LevelDebug, "kafka-reader"),
		ErrorLogger: c.kafkaLogger(slog.LevelWarn, "kafka-reader"),
	})
	c.mu.Lock()
	c.readers[r] = struct{}{}
	c.mu.Unlock()
	defer func() {
		err := r.Close()
		c.mu.Lock()
		delete(c.readers, r)
		addStats(&c.gone, r.Stats())
		c.mu.Unlock()
		if err != nil {
			c.cfg.Logger.Warn("close reader", "topic", c.cfg.Topic, "partition", a.ID, "err", err)
		}
	}()
	if err := r.SetOffset(a.Offset); err != nil {
		return fmt.Errorf("stream: %s/%d: set offset: %w", c.cfg.Topic, a.ID, err)
	}
	fetchCtx, stopFetch := context.WithCancel(runCtx)
	defer stopFetch()
	defer context.AfterFunc(genCtx, stopFetch)()
	handleCtx, stopHandle := context.WithCancel(workCtx)
	defer stopHandle()
	defer context.AfterFunc(genCtx, stopHandle)()

	chunk := make([]kafka.Message, 0, c.cfg.MaxChunk)
	pause := fetchRetryMin
	for {
		chunk = chunk[:0]
		m, err := r.FetchMessage(fetchCtx)
		if err != nil {
			if fetchCtx.Err() != nil {
				return nil
			}
			// As in Run: the broker is unreachable for now; the reader
			// heals once it is back, so retry instead of ending the stage.
			c.cfg.Logger.Warn("fetch failed; retrying", "topic", c.cfg.Topic, "partition", a.ID, "retry_in", pause, "err", err)
			select {
			case <-time.After(pause):
			case <-fetchCtx.Done():
				return nil
			}
			pause = min(2*pause, fetchRetryMax)
			continue
		}
		pause = fetchRetryMin
		chunk = append(chunk, m)
		linger, cancel := context.WithTimeout(fetchCtx, c.cfg.Linger)
		for len(chunk) < c.cfg.MaxChunk {
			m, err := r.FetchMessage(linger)
			if err != nil {
				break // linger over; a real fetch error shows on the next fetch
			}
			chunk = append(chunk, m)
		}
		cancel()
		if err := h(handleCtx, chunk); err != nil {
			if handleCtx.Err() != nil || fetchCtx.Err() != nil {
				return nil // shutdown or rebalance: the chunk is delivered again
			}
			return fmt.Errorf("stream: handle %s/%d chunk: %w", c.cfg.Topic, a.ID, err)
		}
		next := chunk[len(chunk)-1].Offset + 1
		if err := gen.CommitOffsets(map[string]map[int]int64{c.cfg.Topic: {a.ID: next}}); err != nil {
			c.cfg.Logger.Warn("commit failed; chunk will be redelivered", "topic", c.cfg.Topic, "partition", a.ID, "messages", len(chunk), "err", err)
			if genCtx.Err() != nil || workCtx.Err() != nil {
				return nil
			}
		}
		if fetchCtx.Err() != nil {
			return nil
		}
	}
}

func (c *Consumer) kafkaLogger(level slog.Level, component string) kafka.LoggerFunc {
	return func(msg string, args ...any) {
		c.cfg.Logger.Log(context.Background(), level, fmt.Sprintf(msg, args...), "component", component)
	}
}
