// Package sink is the last stage: it consumes resolved records and applies
// group additions and deletions to PostgreSQL with exact per-batch progress.
//
// Every record's effect happens once: a ledger row keyed by (batch id,
// record index) is written in the same transaction as the membership change
// and the batch counters, and the Kafka offset is committed only after that
// transaction commits. For one (group, customer), the change with the highest
// (batch id, record index) wins whatever order changes arrive in, so the final
// state equals applying batches one after another in acceptance order.
//
// It never resolves identities (the matcher did), never commits an offset
// before its transaction commits, and never logs an identity value.
package sink
