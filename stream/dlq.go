package stream

import (
	"errors"
	"strconv"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/segmentio/kafka-go"
)

// Dead-letter headers. Values never contain identity values: error texts of
// groupmatch carry none.
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
// position. A PostgreSQL error is named by its SQLSTATE and constraint
// only: its message may quote a value of the record.
func DeadLetter(m kafka.Message, stage, class string, err error) kafka.Message {
	text := ErrorText(err)
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

// ErrorText is err as a dead-letter header or a log line may show it: a
// PostgreSQL error is named by its SQLSTATE and constraint only, since its
// message may quote a value of the record; other errors of groupmatch carry
// none. nil reads "".
func ErrorText(err error) string {
	var pgErr *pgconn.PgError
	switch {
	case errors.As(err, &pgErr):
		text := "postgres error SQLSTATE " + pgErr.Code
		if pgErr.ConstraintName != "" {
			text += " on " + pgErr.ConstraintName
		}
		return text
	case err != nil:
		return err.Error()
	}
	return ""
}
