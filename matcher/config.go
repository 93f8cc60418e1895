package matcher

import (
	"errors"
	"fmt"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// Validate reports the first setting New cannot use: no brokers, a
// MaxChunk or Consumers out of range (stream.MaxChunkLimit,
// stream.MaxMembers), a negative Linger, or topics given without the
// records, resolved or dead-letter topic.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("matcher: no brokers")
	case c.Topics != (pipeline.Topics{}) && (c.Topics.Records == "" || c.Topics.Resolved == "" || c.Topics.DLQ == ""):
		return errors.New("matcher: Topics.Records, Topics.Resolved and Topics.DLQ must all be set; leave Topics zero for the default names")
	case c.MaxChunk < 0 || c.MaxChunk > stream.MaxChunkLimit:
		return fmt.Errorf("matcher: MaxChunk must be 0 to %d, got %d", stream.MaxChunkLimit, c.MaxChunk)
	case c.Consumers < 0 || c.Consumers > stream.MaxMembers:
		return fmt.Errorf("matcher: Consumers must be 0 to %d, got %d", stream.MaxMembers, c.Consumers)
	case c.Linger < 0:
		return fmt.Errorf("matcher: Linger must not be negative, got %s", c.Linger)
	}
	return nil
}

// Validate reports the first setting NewRematcher cannot use: no brokers,
// topics given without the directory, resolved or dead-letter topic, or a
// MaxChunk out of range or a negative Linger.
func (c *RematchConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("rematcher: no brokers")
	case c.Topics != (pipeline.Topics{}) && (c.Topics.Directory == "" || c.Topics.Resolved == "" || c.Topics.DLQ == ""):
		return errors.New("rematcher: Topics.Directory, Topics.Resolved and Topics.DLQ must all be set; leave Topics zero for the default names")
	case c.MaxChunk < 0 || c.MaxChunk > stream.MaxChunkLimit:
		return fmt.Errorf("rematcher: MaxChunk must be 0 to %d, got %d", stream.MaxChunkLimit, c.MaxChunk)
	case c.Linger < 0:
		return fmt.Errorf("rematcher: Linger must not be negative, got %s", c.Linger)
	}
	return nil
}
