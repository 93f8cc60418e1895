// Package redact is groupmatch's one policy for what of an error may leave
// the process, in a log line or a dead-letter header: an error that may
// quote a value of the input (a phone, an openid, a group name) is reduced
// to its class; only errors known to quote none keep their text.
//
// It never returns a PostgreSQL message or detail that can quote a value,
// nor the text of an error it does not know; callers never log err.Error()
// of such errors themselves.
package redact

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// Error is err as a log line or a dead-letter header may show it; nil
// reads "".
//
// A PostgreSQL error anywhere in the chain reads "postgres error SQLSTATE
// <code>", then " on <constraint>" if it names one, then ": <message>" only
// for the classes whose messages name schema objects, never values
// (connection, transaction state, rollback, syntax and access, resources,
// operator intervention, system: 08, 25, 40, 42, 53, 55, 57, 58). Its detail
// never appears. Data exceptions (22) quote the offending value, and the
// messages of the other classes are not known to be free of one.
//
// Other errors keep their text only when something in the chain is known to
// quote no value: context cancellation and deadlines, network, connection
// and timeout errors, io.EOF, pgx.ErrNoRows and ErrTxClosed, Kafka's error
// codes and its too-large refusal, pipeline.ErrUndecodable (whose texts name
// fields and positions only), a recovered *retry.PanicError (which names a
// runtime error or a type only) and errors made by Safe. kafka.WriteErrors
// read as their count and the first one, redacted. Anything else reads as
// its type with the text withheld: pgx's encode and scan errors, for one,
// quote the value they could not convert.
func Error(err error) string {
	if err == nil {
		return ""
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		text := "postgres error SQLSTATE " + pgErr.Code
		if pgErr.ConstraintName != "" {
			text += " on " + pgErr.ConstraintName
		}
		if len(pgErr.Code) == 5 && strings.Contains(" 08 25 40 42 53 55 57 58 ", " "+pgErr.Code[:2]+" ") {
			text += ": " + pgErr.Message
		}
		return text
	}
	var writeErrs kafka.WriteErrors
	if errors.As(err, &writeErrs) {
		for _, e := range writeErrs {
			if e != nil {
				return fmt.Sprintf("kafka write errors (%d/%d), first: %s", writeErrs.Count(), len(writeErrs), Error(e))
			}
		}
	}
	if quotesNoValue(err) {
		return err.Error()
	}
	return fmt.Sprintf("%T (text withheld: it may quote a value)", err)
}

// Safe returns an error with text, which the caller vouches quotes no value
// (a constant of groupmatch's code): Error shows it, and the text of any
// error wrapping it, whole.
func Safe(text string) error { return safeError(text) }

type safeError string

func (e safeError) Error() string { return string(e) }

// quotesNoValue reports whether something in err's chain makes its text
// safe to show (see Error).
func quotesNoValue(err error) bool {
	var (
		safe       safeError
		connectErr *pgconn.ConnectError
		netErr     net.Error
		kafkaErr   kafka.Error
		tooLarge   kafka.MessageTooLargeError
		panicErr   *retry.PanicError
	)
	return errors.As(err, &safe) || errors.Is(err, pipeline.ErrUndecodable) || errors.As(err, &panicErr) ||
		errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
		errors.As(err, &connectErr) || errors.As(err, &netErr) || errors.Is(err, net.ErrClosed) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgx.ErrNoRows) || errors.Is(err, pgx.ErrTxClosed) ||
		errors.As(err, &kafkaErr) || errors.As(err, &tooLarge)
}
