package schematest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/groupmatch/groupmatch/schemas"
)

// Contracts validates JSON values against the JSON Schemas of package
// schemas. It is safe for concurrent use once built.
type Contracts struct {
	compiled map[string]*jsonschema.Schema // by schema name; read-only after NewContracts
}

// NewContracts compiles every embedded JSON Schema, with "format" asserted
// (date-time and the like are checked, not just annotations). The schemas
// refer to one another by their $id; all of them are added first, so nothing
// is fetched.
func NewContracts() (*Contracts, error) {
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	names := schemas.JSONSchemaNames()
	for _, name := range names {
		raw, err := schemas.JSONSchema(name)
		if err != nil {
			return nil, err
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			return nil, fmt.Errorf("schematest: %s is not JSON: %w", name, err)
		}
		if err := c.AddResource(schemas.SchemaID(name), doc); err != nil {
			return nil, fmt.Errorf("schematest: add %s: %w", name, err)
		}
	}
	out := &Contracts{compiled: make(map[string]*jsonschema.Schema, len(names))}
	for _, name := range names {
		s, err := c.Compile(schemas.SchemaID(name))
		if err != nil {
			return nil, fmt.Errorf("schematest: compile %s: %w", name, err)
		}
		out.compiled[name] = s
	}
	return out, nil
}

// MustContracts is NewContracts for tests: it fails t on error.
func MustContracts(t testing.TB) *Contracts {
	t.Helper()
	c, err := NewContracts()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Validate checks value, one JSON text, against the schema named name
// (schemas.Record etc.). Numbers are compared exactly (never through
// float64), and a leading UTF-8 byte order mark is not allowed: it is not
// part of any message value.
func (c *Contracts) Validate(name string, value []byte) error {
	s := c.compiled[name]
	if s == nil {
		return fmt.Errorf("schematest: no JSON Schema %q", name)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(value))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	return s.Validate(doc)
}

// ValidateEvent checks a groupmatch.events value against the schema of its
// "type" and against the events schema (the union of all types), and
// returns the type. An unknown type is an error.
func (c *Contracts) ValidateEvent(value []byte) (string, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(value, &head); err != nil {
		return "", fmt.Errorf("not a JSON object: %w", err)
	}
	var name string
	switch head.Type {
	case "request.accepted":
		name = schemas.EventRequestAccepted
	case "request.rejected":
		name = schemas.EventRequestRejected
	case "batch.finished":
		name = schemas.EventBatchFinished
	case "batch.updated":
		name = schemas.EventBatchUpdated
	default:
		return head.Type, fmt.Errorf("unknown event type %q", head.Type)
	}
	if err := c.Validate(name, value); err != nil {
		return head.Type, err
	}
	if err := c.Validate(schemas.Events, value); err != nil {
		return head.Type, fmt.Errorf("valid %s but not a valid events value: %w", head.Type, err)
	}
	return head.Type, nil
}

// LoadOpenAPI loads and validates the embedded OpenAPI document.
func LoadOpenAPI(ctx context.Context) (*openapi3.T, error) {
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromData(schemas.OpenAPI())
	if err != nil {
		return nil, fmt.Errorf("schematest: load openapi.yaml: %w", err)
	}
	if err := doc.Validate(ctx); err != nil {
		return nil, fmt.Errorf("schematest: openapi.yaml is not a valid OpenAPI document: %w", err)
	}
	return doc, nil
}
