package stream

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// TopicSpec is a topic to create.
type TopicSpec struct {
	Name       string
	Partitions int
	// ReplicationFactor defaults to 1; use 3 on a production cluster.
	ReplicationFactor int
}

// CreateTopics creates the topics that do not exist yet. A topic that exists
// already is left as it is (its partition count is not changed), so the call
// is safe to repeat.
func CreateTopics(ctx context.Context, brokers []string, specs []TopicSpec) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	req := &kafka.CreateTopicsRequest{}
	for _, s := range specs {
		rf := s.ReplicationFactor
		if rf == 0 {
			rf = 1
		}
		req.Topics = append(req.Topics, kafka.TopicConfig{Topic: s.Name, NumPartitions: s.Partitions, ReplicationFactor: rf})
	}
	resp, err := client.CreateTopics(ctx, req)
	if err != nil {
		return fmt.Errorf("stream: create topics: %w", err)
	}
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			return fmt.Errorf("stream: create topic %s: %w", name, err)
		}
	}
	return nil
}

// Ping checks that a broker of the cluster answers a metadata request.
func Ping(ctx context.Context, brokers []string) error {
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second}
	if _, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{}}); err != nil {
		return fmt.Errorf("stream: kafka unreachable: %w", err)
	}
	return nil
}
