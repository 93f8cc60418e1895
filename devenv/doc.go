// Package devenv provides the development environment of `groupmatch dev`
// and `groupmatch broker`: an in-process Kafka-protocol broker (kfake) whose
// log can be kept on disk, and a PostgreSQL database found or started
// without any set-up beyond the PostgreSQL server binaries.
//
// Nothing in this package is meant for production: the broker is a single
// node with no replication, and the private PostgreSQL cluster trusts every
// local connection.
//
// Production code never imports it: only cmd/groupmatch's dev, broker and
// kafka commands and tests do.
package devenv
