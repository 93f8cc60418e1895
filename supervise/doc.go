// Package supervise starts processes of the groupmatch binary as children
// and watches them: it captures their output line by line, waits for a line
// announcing readiness (the "started" line that names a stage's admin
// address), stops them with SIGTERM or SIGKILL, and reads their CPU time and
// resident memory from /proc.
//
// It is the one process supervisor of the repository: `groupmatch bench`
// (package bench) starts the stages it measures with it, and the tests of
// cmd/groupmatch start the stages they exercise with it. It is its own
// package rather than part of devenv because devenv provides the
// infrastructure the stages run on (a Kafka-protocol broker, Apache Kafka,
// PostgreSQL) and brings their client libraries along, while supervising
// the stages themselves needs nothing beyond the standard library; bench
// and the tests need both, the stages neither.
//
// Nothing here is meant for the serving path: no stage imports it.
package supervise
