// Package schemas holds groupmatch's contracts with the outside world: the
// PostgreSQL schema as numbered migrations, (in json/) the JSON Schemas of
// the API body and of every Kafka message, and openapi.yaml, the OpenAPI
// document of the HTTP API (contracts.go). Everything is embedded in the
// binary.
//
// A change of the schema is a new numbered migration, never an edit of a
// released one; the stages' queries live beside the stages, not here.
package schemas
