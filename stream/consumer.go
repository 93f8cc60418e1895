package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	Logger  *slog.Logger
}

// Validate reports the first missing required field.
func (c *ConsumerConfig) Validate() error {
	switch {
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
	reader *kafka.Reader
}

// NewConsumer returns a consumer; it joins the group when Run starts.
func NewConsumer(cfg ConsumerConfig) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
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

// Stats returns the reader's statistics since the last call.
func (c *Consumer) Stats() kafka.ReaderStats { return c.reader.Stats() }

// GroupID is the consumer group the consumer is a member of.
func (c *Consumer) GroupID() string { return c.cfg.GroupID }

// Topic is the topic the consumer reads.
func (c *Consumer) Topic() string { return c.cfg.Topic }

// Run consumes until ctx is done or the handler fails. On shutdown it stops
// fetching, lets the in-flight chunk finish and commit (bounded by
// DrainTimeout), closes the reader and returns nil.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	fetchCtx, stopFetch := context.WithCancel(ctx)
	msgs := make(chan kafka.Message, c.cfg.MaxChunk) // bounded: the fetcher blocks when the handler lags
	fetchErr := make(chan error, 1)
	go func() {
		defer close(msgs)
		for {
			m, err := c.reader.FetchMessage(fetchCtx)
			if err != nil {
				if fetchCtx.Err() == nil {
					fetchErr <- fmt.Errorf("stream: fetch %s: %w", c.cfg.Topic, err)
				}
				return
			}
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
			if !ok {
				return c.fetchResult(fetchErr)
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

func (c *Consumer) fetchResult(fetchErr chan error) error {
	select {
	case err := <-fetchErr:
		return err
	default:
		return nil
	}
}
