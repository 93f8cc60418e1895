package stream

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// RouteToExisting prepares messages for a writer without a topic of its
// own (NewWriter with topic ""): every message keeps the topic its Topic
// field names when that topic exists, and goes to fallback otherwise (an
// empty Topic goes to fallback too). It returns the topics that were
// missing, so that the caller can say so; one missing topic never holds
// back the other messages.
//
// Existence is read from the metadata that the writers built with sec
// share (refreshed every few seconds), so a topic found here is one those
// writers can write to.
func RouteToExisting(ctx context.Context, brokers []string, sec *Security, msgs []kafka.Message, fallback string) ([]string, error) {
	var want []string
	seen := make(map[string]bool)
	for _, m := range msgs {
		if m.Topic != "" && m.Topic != fallback && !seen[m.Topic] {
			seen[m.Topic] = true
			want = append(want, m.Topic)
		}
	}
	exists := map[string]bool{}
	if len(want) > 0 {
		client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 5 * time.Second, Transport: sec.writerTransport()}
		meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: want})
		if err != nil {
			return nil, fmt.Errorf("stream: route: metadata: %w", err)
		}
		for _, t := range meta.Topics {
			switch {
			case t.Error == nil:
				exists[t.Name] = true
			case errors.Is(t.Error, kafka.UnknownTopicOrPartition), errors.Is(t.Error, kafka.TopicAuthorizationFailed):
			default:
				return nil, fmt.Errorf("stream: route: metadata of %s: %w", t.Name, t.Error)
			}
		}
	}
	var missing []string
	for _, t := range want {
		if !exists[t] {
			missing = append(missing, t)
		}
	}
	for i := range msgs {
		if !exists[msgs[i].Topic] {
			msgs[i].Topic = fallback
		}
	}
	return missing, nil
}

// Throttle says whether something named by a key (a missing topic) is due
// to be reported again: at most once per Every (default one minute), so
// that a condition lasting hours logs a line a minute, not one per write.
// The zero value is ready to use and safe for concurrent use.
type Throttle struct {
	Every time.Duration

	mu   sync.Mutex
	last map[string]time.Time // by key: when it was last due
}

// Due reports whether key is due at now, and if so starts its next wait.
func (t *Throttle) Due(key string, now time.Time) bool {
	every := t.Every
	if every <= 0 {
		every = time.Minute
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if last, ok := t.last[key]; ok && now.Sub(last) < every {
		return false
	}
	if t.last == nil {
		t.last = make(map[string]time.Time)
	}
	t.last[key] = now
	return true
}
