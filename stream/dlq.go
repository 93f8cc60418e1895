package stream

import (
	"strconv"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/redact"
)

// Dead-letter headers. Values never contain identity values: the error is
// shown as redact.Error shows it.
const (
	HeaderStage      = "x-groupmatch-stage"
	HeaderErrorClass = "x-groupmatch-error-class"
	HeaderError      = "x-groupmatch-error"
	HeaderTopic      = "x-groupmatch-topic"
	HeaderPartition  = "x-groupmatch-partition"
	HeaderOffset     = "x-groupmatch-offset"
)

// DeadLetter returns the dead-letter message for m: the same key and value,
// with headers naming the stage, the error class (a closed set, e.g.
// "undecodable", "orphan", "permanent"), the error and the original
// position. The error reads as redact.Error gives it, the one policy for
// what of an error may leave the process.
func DeadLetter(m kafka.Message, stage, class string, err error) kafka.Message {
	text := redact.Error(err)
	return kafka.Message{
		Key:   m.Key,
		Value: m.Value,
		Headers: []kafka.Header{
			{Key: HeaderStage, Value: []byte(stage)},
			{Key: HeaderErrorClass, Value: []byte(class)},
			{Key: HeaderError, Value: []byte(text)},
			{Key: HeaderTopic, Value: []byte(m.Topic)},
			{Key: HeaderPartition, Value: strconv.AppendInt(nil, int64(m.Partition), 10)},
			{Key: HeaderOffset, Value: strconv.AppendInt(nil, m.Offset, 10)},
		},
	}
}
