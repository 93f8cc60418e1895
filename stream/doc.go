// Package stream is groupmatch's Kafka plumbing, shared by the stages: topic
// creation, a producer configured for durability, and a consumer-group loop
// that hands out messages in chunks and commits offsets only after a chunk
// was handled.
//
// All Kafka I/O goes through github.com/segmentio/kafka-go, so the same code
// runs against Apache Kafka and against the in-process broker of dev mode.
//
// It never decodes a message value (what a message means is its stage's
// business) and imports no stage; a dead letter's error header is written
// as redact.Error gives it.
package stream
