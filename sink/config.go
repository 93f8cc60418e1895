package sink

import (
	"errors"
	"fmt"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// Validate reports the first setting New cannot use: no brokers, a
// MaxChunk or Consumers out of range (stream.MaxChunkLimit,
// stream.MaxMembers), a negative Linger, or topics given without the
// resolved or dead-letter topic.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("sink: no brokers")
	case c.Topics != (pipeline.Topics{}) && (c.Topics.Resolved == "" || c.Topics.DLQ == ""):
		return errors.New("sink: Topics.Resolved and Topics.DLQ must both be set; leave Topics zero for the default names")
	case c.MaxChunk < 0 || c.MaxChunk > stream.MaxChunkLimit:
		return fmt.Errorf("sink: MaxChunk must be 0 to %d, got %d", stream.MaxChunkLimit, c.MaxChunk)
	case c.Linger < 0:
		return fmt.Errorf("sink: Linger must not be negative, got %s", c.Linger)
	case c.Consumers < 0 || c.Consumers > stream.MaxMembers:
		return fmt.Errorf("sink: Consumers must be 0 to %d, got %d", stream.MaxMembers, c.Consumers)
	}
	return nil
}

// Validate reports the first setting NewRelay cannot use: no brokers, a
// negative Interval, or topics given without the events topic.
func (c *RelayConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("sink: relay: no brokers")
	case c.Topics != (pipeline.Topics{}) && c.Topics.Events == "":
		return errors.New("sink: relay: Topics.Events is empty; leave Topics zero for the default names")
	case c.Interval < 0:
		return fmt.Errorf("sink: relay: Interval must not be negative, got %s", c.Interval)
	}
	return nil
}

// Validate reports the first negative setting of c.
func (c *DeadlineConfig) Validate() error {
	return notNegative("sink: deadline", []durationField{{"After", c.After}, {"Interval", c.Interval}})
}

// Validate reports the first negative setting of c.
func (c *PruneConfig) Validate() error {
	if c.Rows < 0 {
		return fmt.Errorf("sink: prune: Rows must not be negative, got %d", c.Rows)
	}
	return notNegative("sink: prune", []durationField{{"Retention", c.Retention},
		{"AbortedRetention", c.AbortedRetention}, {"KeyWindow", c.KeyWindow}, {"Interval", c.Interval}})
}

// durationField is a duration setting, named for errors.
type durationField struct {
	name  string
	value time.Duration
}

// notNegative returns an error, prefixed, naming the first negative field.
func notNegative(prefix string, fields []durationField) error {
	for _, f := range fields {
		if f.value < 0 {
			return fmt.Errorf("%s: %s must not be negative, got %s", prefix, f.name, f.value)
		}
	}
	return nil
}
