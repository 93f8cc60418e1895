// Package pipeline is groupmatch's vocabulary: the batchAdd request, the
// records and resolved-record messages that travel between the stages on
// Kafka, outcomes and reasons, and their codecs.
//
// The stages (ingest, matcher, sink) never import each other; they meet only
// in the message types defined here. This package imports no other package of
// groupmatch and does no I/O: it never talks to Kafka or PostgreSQL, and
// never logs.
package pipeline
