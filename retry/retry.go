package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
)

// ErrTransient marks an error as worth retrying whatever it wraps.
var ErrTransient = errors.New("transient")

// PanicError is a panic recovered by Catch. It is permanent: the same input
// panics again.
type PanicError struct {
	// Value is what was passed to panic. Error reports it only when it is
	// a runtime.Error (whose text quotes no data) and otherwise names its
	// type, so that no value of a record reaches a log or a header.
	Value any
	// Stack is the panicking goroutine's stack, for the log.
	Stack []byte
}

func (e *PanicError) Error() string {
	if re, ok := e.Value.(runtime.Error); ok {
		return "panic: " + re.Error()
	}
	return fmt.Sprintf("panic: %T", e.Value)
}

// Catch runs op and returns its error, or a *PanicError if it panics. It is
// for handlers that must isolate the input a panic came from instead of
// stopping (SPEC §10); the caller must treat the error as permanent and
// count it, never carry on silently.
func Catch(op func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return op()
}

// Transient reports whether err is worth retrying: the database or broker
// may answer differently later. Everything else is permanent, notably
// PostgreSQL's data exceptions (SQLSTATE class 22), integrity violations
// (23), syntax and access errors (42) and program limits (54, e.g. an index
// row too large), a recovered panic, and a message Kafka refuses as too
// large.
func Transient(err error) bool {
	if err == nil {
		return false
	}
	var panicErr *PanicError
	if errors.As(err, &panicErr) {
		return false // even when marked: it panics again
	}
	if errors.Is(err, ErrTransient) {
		return true
	}
	if errors.Is(err, context.Canceled) {
		return false
	}
	// kafka-go reports a batch write as one error per message, without
	// Unwrap: transient when every message that failed failed transiently.
	var writeErrs kafka.WriteErrors
	if errors.As(err, &writeErrs) {
		for _, e := range writeErrs {
			if e != nil && !Transient(e) {
				return false
			}
		}
		return writeErrs.Count() > 0
	}
	// kafka-go's client-side routing errors: its metadata names no leader,
	// partition or topic for a request, as while a broker restarts or a
	// leader is being elected. Kafka itself calls the same conditions
	// retriable (LEADER_NOT_AVAILABLE, UNKNOWN_TOPIC_OR_PARTITION).
	if errors.Is(err, protocol.ErrNoLeader) || errors.Is(err, protocol.ErrNoPartition) || errors.Is(err, protocol.ErrNoTopic) {
		return true
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code[:2] {
		case "08", // connection exception
			"40", // transaction rollback: serialization failure, deadlock
			"53", // insufficient resources
			"57", // operator intervention: admin shutdown, cannot connect now
			"58": // system error
			return true
		}
		return false
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var temp interface{ Temporary() bool }
	if errors.As(err, &temp) && temp.Temporary() {
		return true // kafka-go's kafka.Error and net errors
	}
	var timeout interface{ Timeout() bool }
	if errors.As(err, &timeout) && timeout.Timeout() {
		return true
	}
	var netErr *net.OpError
	if errors.As(err, &netErr) {
		return true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, context.DeadlineExceeded)
}

// Policy bounds a retry loop.
type Policy struct {
	// MaxElapsed is how long transient errors are retried before giving
	// up; zero retries until ctx is done.
	MaxElapsed time.Duration
	// Initial and Max bound the randomised interval between attempts;
	// defaults 50 ms and 5 s.
	Initial, Max time.Duration
}

// Do runs op until it succeeds, fails permanently, MaxElapsed passes or ctx
// is done. notify, if not nil, sees each transient failure before the wait.
// The last error is returned.
func Do(ctx context.Context, p Policy, op func() error, notify func(err error, wait time.Duration)) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.Initial
	if b.InitialInterval <= 0 {
		b.InitialInterval = 50 * time.Millisecond
	}
	b.MaxInterval = p.Max
	if b.MaxInterval <= 0 {
		b.MaxInterval = 5 * time.Second
	}
	b.MaxElapsedTime = p.MaxElapsed
	b.RandomizationFactor = 0.5
	wrapped := func() error {
		err := op()
		if err != nil && !Transient(err) {
			return backoff.Permanent(err)
		}
		return err
	}
	err := backoff.RetryNotify(wrapped, backoff.WithContext(b, ctx), notify)
	var perm *backoff.PermanentError
	if errors.As(err, &perm) {
		return perm.Err
	}
	return err
}
