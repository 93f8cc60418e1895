package schemas

import (
	"embed"
	"fmt"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// The JSON Schemas (draft 2020-12) and the OpenAPI document are files of this
// package, so that they are reviewed like code and embedded in the binary.
//
//go:embed json/*.json openapi.yaml
var contracts embed.FS

// Names of the JSON Schemas: JSONSchema(name) is json/<name>.schema.json.
const (
	// BatchAddRequest describes the batchAdd body, over HTTP and as the
	// value of a groupmatch.requests message.
	BatchAddRequest = "batchadd-request"
	// Record describes a groupmatch.records value (pipeline.RecordMessage).
	Record = "record"
	// Resolved describes a groupmatch.resolved value
	// (pipeline.ResolvedMessage).
	Resolved = "resolved"
	// EventRequestAccepted, EventRequestRejected and EventBatchFinished
	// describe the groupmatch.events values of one "type" each.
	EventRequestAccepted = "event-request-accepted"
	EventRequestRejected = "event-request-rejected"
	EventBatchFinished   = "event-batch-finished"
	// EventBatchUpdated describes a batch.updated event: a finished
	// batch's counters again after late matches (SPEC §13).
	EventBatchUpdated = "event-batch-updated"
	// Events is any groupmatch.events value: exactly one of the event
	// schemas.
	Events = "events"
	// Directory describes a groupmatch.directory value
	// (pipeline.DirectoryMessage).
	Directory = "directory"
)

// SchemaBaseURI is the base of every JSON Schema's "$id": the schema named N
// has the $id SchemaBaseURI + N + ".schema.json", and the schemas refer to
// one another by those relative names. The URIs identify; nothing is
// fetched from them.
const SchemaBaseURI = "https://github.com/groupmatch/groupmatch/schemas/json/"

// JSONSchemaNames returns the names of all JSON Schemas, sorted. The caller
// owns the slice.
func JSONSchemaNames() []string {
	entries, err := fs.ReadDir(contracts, "json")
	if err != nil {
		panic(fmt.Sprintf("schemas: embedded json/ unreadable: %v", err)) // cannot happen: go:embed checked it
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".schema.json"); ok {
			names = append(names, name)
		}
	}
	return names
}

// JSONSchema returns the JSON Schema named name (one of the constants above,
// or of JSONSchemaNames), as stored. The caller owns the slice.
func JSONSchema(name string) ([]byte, error) {
	b, err := contracts.ReadFile(path.Join("json", name+".schema.json"))
	if err != nil {
		return nil, fmt.Errorf("schemas: no JSON Schema %q: %w", name, err)
	}
	return b, nil
}

// SchemaID returns the "$id" of the JSON Schema named name.
func SchemaID(name string) string { return SchemaBaseURI + name + ".schema.json" }

// OpenAPI returns the OpenAPI 3.1 document of the HTTP API, as YAML. The
// caller owns the slice.
func OpenAPI() []byte {
	b, err := contracts.ReadFile("openapi.yaml")
	if err != nil {
		panic(fmt.Sprintf("schemas: embedded openapi.yaml unreadable: %v", err)) // cannot happen: go:embed checked it
	}
	return b
}

// OpenAPIHandler serves the OpenAPI document (GET /openapi.yaml) as
// application/yaml. It is safe for concurrent use.
func OpenAPIHandler() http.Handler {
	doc := OpenAPI()
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(doc) // the client may be gone; nothing to do
	})
}
