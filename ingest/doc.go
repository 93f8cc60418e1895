// Package ingest is groupmatch's whole HTTP API (SPEC §3–§4: batchAdd,
// batchResult, group list and members, the access tokens) and the feed of
// batchAdd requests read from the requests topic. It authenticates and
// limits callers, validates requests, records each batch and writes one
// message per record to the records topic, answering only once Kafka has
// every record; it reads results and groups back from PostgreSQL.
//
// It never resolves identities (the matcher does), never writes group
// memberships (the sink does), and never logs an identity value: logs name
// the tenant, batch and record index; a result page shows only the masked
// identifiers the ledger keeps.
//
// Files by concern: service.go (Service, New, routes), config.go (Config,
// its defaults and Validate), middleware.go (metrics, authentication, rate
// limits), accept.go (batchAdd), reads.go (batchResult and groups),
// tokens.go, respond.go (the answer envelope and refusals), request.go (the
// body decoder), feed.go (the requests topic), limits.go, store.go
// (PostgreSQL).
package ingest
