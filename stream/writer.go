package stream

import (
	"time"

	"github.com/segmentio/kafka-go"
)

// NewWriter returns a producer for one topic that waits for all in-sync
// replicas (RequireAll) before WriteMessages returns, and partitions by key
// with murmur2 (Kafka's Java default), so keyed order holds per partition.
//
// Batches are flushed after at most 2 ms: a synchronous WriteMessages of one
// request's records must not wait for kafka-go's default 1 s linger. kafka-go
// keeps one batch in flight per partition, so throughput comes from large
// WriteMessages calls from several goroutines.
//
// A WriteMessages that returns an error (even a cancelled one) may still have
// written some messages: consumers must be idempotent.
//
// sec secures its connections (nil: plaintext); the writers of one sec share
// its connections. An empty topic makes a writer of messages that each name
// their topic.
func NewWriter(brokers []string, topic string, sec *Security) *kafka.Writer {
	return &kafka.Writer{
		Addr:         kafka.TCP(brokers...),
		Topic:        topic,
		Transport:    sec.writerTransport(),
		Balancer:     &kafka.Murmur2Balancer{},
		RequiredAcks: kafka.RequireAll,
		BatchSize:    1000,
		BatchBytes:   16 << 20,
		BatchTimeout: 2 * time.Millisecond,
		WriteTimeout: 10 * time.Second,
		MaxAttempts:  3,
	}
}
