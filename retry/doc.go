// Package retry decides whether a failed operation may be tried again and
// runs it with jittered exponential backoff. Errors are classified by
// behaviour (pgconn.SafeToRetry, SQLSTATE classes, net and Kafka error
// interfaces), never by their text.
//
// It never logs and never retries past its caller's context; what to do
// with a permanent error is the caller's decision.
package retry
