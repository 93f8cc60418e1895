package schemas_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// Every schema compiles, is draft 2020-12, and carries the $id, title and
// description that consumers rely on.
func TestJSONSchemasCompile(t *testing.T) {
	schematest.MustContracts(t)
	names := schemas.JSONSchemaNames()
	want := []string{schemas.BatchAddRequest, schemas.Directory, schemas.EventBatchFinished, schemas.EventBatchUpdated, schemas.EventRequestAccepted,
		schemas.EventRequestRejected, schemas.Events, schemas.Record, schemas.Resolved}
	slices.Sort(want)
	if !slices.Equal(names, want) {
		t.Fatalf("schemas %v, want %v", names, want)
	}
	for _, name := range names {
		raw, err := schemas.JSONSchema(name)
		if err != nil {
			t.Fatal(err)
		}
		var head struct {
			Schema      string `json:"$schema"`
			ID          string `json:"$id"`
			Title       string `json:"title"`
			Description string `json:"description"`
		}
		if err := json.Unmarshal(raw, &head); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if head.Schema != "https://json-schema.org/draft/2020-12/schema" || head.ID != schemas.SchemaID(name) ||
			head.Title == "" || head.Description == "" {
			t.Errorf("%s: header %+v", name, head)
		}
	}
	if _, err := schemas.JSONSchema("nope"); err == nil {
		t.Error("JSONSchema of an unknown name did not fail")
	}
}

// Real encodings of every message kind validate against their schemas, and
// everything the record and resolved schemas accept, the stages' decoders
// accept too.
func TestMessagesMatchSchemas(t *testing.T) {
	c := schematest.MustContracts(t)
	at := time.Date(2026, 5, 1, 8, 30, 0, 123456789, time.FixedZone("CST", 8*3600))

	records := map[string]pipeline.RecordMessage{
		"fuzzy": {TenantID: 3, BatchID: 42, Index: 0,
			Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyThirdIDFirst, OptType: pipeline.OptAdd},
			Record: pipeline.RawRecord{ThirdID: "crm-1", Phone: "+86 138-0000-0000", Groups: "vip，new"}},
		"exact with app": {TenantID: 3, BatchID: pipeline.MaxBatchID, Index: pipeline.MaxRecords - 1,
			Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, AppType: "YOUZAN", AppID: "shop 1", OptType: pipeline.OptDelete},
			Record: pipeline.RawRecord{IdentityType: "openid", OpenID: "oA-1", UnionID: "u", Groups: "g"}},
		"no matching": {TenantID: 1, BatchID: 1, Index: 7,
			Params: pipeline.Params{OptType: pipeline.OptAdd, AppType: "gzh", AppID: "wx1"},
			Record: pipeline.RawRecord{ThirdID: "new-1"}},
		"empty record": {TenantID: 1, BatchID: 1, Index: 1,
			Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}},
	}
	for name, m := range records {
		b, err := pipeline.EncodeRecord(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(schemas.Record, b); err != nil {
			t.Errorf("record %s: %s: %v", name, b, err)
		}
	}

	resolved := map[string]pipeline.ResolvedMessage{
		"matched": {TenantID: 3, BatchID: 42, Index: 3, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeMatched,
			MatchedBy: pipeline.KindUnionID, CustomerID: 1001, Conflict: true, Groups: []string{"vip", "新 客"}},
		"created": {TenantID: 3, BatchID: 42, Index: 4, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeMatched,
			MatchedBy: pipeline.KindThirdID, CustomerID: 1<<52 + 1, Created: true, Groups: []string{strings.Repeat("長", pipeline.MaxGroupNameLen)}},
		"not found": {TenantID: 3, BatchID: 42, Index: 5, OptType: pipeline.OptDelete, Outcome: pipeline.OutcomeNotFound,
			Reason: pipeline.ReasonNotFound, Ref: &pipeline.RecordRef{ThirdID: "nobody", Phone: "138****0000"}},
		"ambiguous": {TenantID: 3, BatchID: 42, Index: 6, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeAmbiguous,
			Reason: pipeline.ReasonAmbiguous, Ref: &pipeline.RecordRef{}},
		"invalid": {TenantID: 3, BatchID: 42, Index: 7, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeInvalid,
			Reason: pipeline.ReasonGroupNameTooLong, Ref: &pipeline.RecordRef{OpenID: "oA-1****xyz", UnionID: "o6****cd"}},
		"value too long": {TenantID: 3, BatchID: 42, Index: 10, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeInvalid,
			Reason: pipeline.ReasonValueTooLong, Ref: &pipeline.RecordRef{UnionID: "uuuu****uuu"}},
		"too many groups": {TenantID: 3, BatchID: 42, Index: 11, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeInvalid,
			Reason: pipeline.ReasonTooManyGroups, Ref: &pipeline.RecordRef{ThirdID: strings.Repeat("t", pipeline.MaxIdentityLen)}},
		"group name invalid": {TenantID: 3, BatchID: 42, Index: 12, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeInvalid,
			Reason: pipeline.ReasonGroupNameInvalid, Ref: &pipeline.RecordRef{ThirdID: "crm-1"}},
		"undecodable": {TenantID: 3, BatchID: 42, Index: 8, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeFailed,
			Reason: pipeline.ReasonUndecodable},
		"processing failed": {TenantID: 3, BatchID: 42, Index: 9, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeFailed,
			Reason: pipeline.ReasonProcessingFailed},
	}
	for name, m := range resolved {
		b, err := pipeline.EncodeResolved(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(schemas.Resolved, b); err != nil {
			t.Errorf("resolved %s: %s: %v", name, b, err)
		}
	}

	directories := map[string]pipeline.DirectoryMessage{
		"identity phone":   {Type: pipeline.DirectoryIdentity, TenantID: 3, Kind: pipeline.KindPhone, Value: "13800000001", CustomerID: 1001},
		"identity created": {Type: pipeline.DirectoryIdentity, TenantID: 3, Kind: pipeline.KindThirdID, Value: "crm 新", CustomerID: 1<<52 + 1},
		"recheck openid":   {Type: pipeline.DirectoryRecheck, TenantID: 3, Kind: pipeline.KindOpenID, Value: "oA-1"},
	}
	for name, m := range directories {
		b, err := pipeline.EncodeDirectory(m)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Validate(schemas.Directory, b); err != nil {
			t.Errorf("directory %s: %s: %v", name, b, err)
		}
	}

	events := map[string]func() ([]byte, error){
		"accepted": func() ([]byte, error) {
			return pipeline.EncodeRequestEvent(pipeline.RequestEvent{Type: pipeline.EventRequestAccepted, BatchID: 42,
				RequestKey: "feed-1", IdempotencyKey: "groupmatch.requests/0/17", Topic: "groupmatch.requests", Partition: 0, Offset: 17, At: at})
		},
		"accepted without key": func() ([]byte, error) {
			return pipeline.EncodeRequestEvent(pipeline.RequestEvent{Type: pipeline.EventRequestAccepted, BatchID: 1,
				IdempotencyKey: "k", Topic: "groupmatch.requests", Partition: 3, Offset: 0, At: at.UTC()})
		},
		"rejected": func() ([]byte, error) {
			return pipeline.EncodeRequestEvent(pipeline.RequestEvent{Type: pipeline.EventRequestRejected, Code: "400",
				ErrorCode: "INVALID_PARAMETER", Msg: "publicParams.identifyWay is required when matchingType=2",
				RequestKey: "feed-2", IdempotencyKey: "order-9", Topic: "groupmatch.requests", Partition: 1, Offset: 9, At: at})
		},
		"rejected token": func() ([]byte, error) {
			return pipeline.EncodeRequestEvent(pipeline.RequestEvent{Type: pipeline.EventRequestRejected, Code: "100200",
				ErrorCode: "TOKEN_INVALID", Msg: "x-token is missing, invalid or expired",
				RequestKey: "feed-3", IdempotencyKey: "groupmatch.requests/1/10", Topic: "groupmatch.requests", Partition: 1, Offset: 10, At: at})
		},
		"finished": func() ([]byte, error) {
			finished := at.Add(140 * time.Millisecond)
			return pipeline.EncodeBatchFinished(pipeline.BatchFinishedEvent{TenantID: 3, BatchID: 42, BatchSummary: pipeline.BatchSummary{
				Status: "PARTIAL_SUCCESS", OptType: pipeline.OptAdd, Total: 8, Processed: 8, Success: 4, Unmatched: 1, Ambiguous: 1, Invalid: 2,
				MatchedBy: map[string]int{"unionid": 1, "openid": 1, "phone": 1, "id": 1}, GroupsCreated: 2, Conflicts: 2, AcceptedAt: at, FinishedAt: &finished}})
		},
		"finished failed, nothing matched": func() ([]byte, error) {
			finished := at.Add(time.Second)
			return pipeline.EncodeBatchFinished(pipeline.BatchFinishedEvent{TenantID: 3, BatchID: 43, BatchSummary: pipeline.BatchSummary{
				Status: "FAILED", OptType: pipeline.OptDelete, Total: 500, Processed: 500, Unmatched: 500,
				MatchedBy: map[string]int{}, AcceptedAt: at, FinishedAt: &finished}})
		},
	}
	for name, encode := range events {
		b, err := encode()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ValidateEvent(b); err != nil {
			t.Errorf("event %s: %s: %v", name, b, err)
		}
	}
}

// Each schema refuses values that break its contract; and whatever the
// record and resolved schemas accept among those, DecodeRecord and
// DecodeResolved accept too (a schema is never looser than the stage that
// reads the topic).
func TestSchemasRejectBrokenMessages(t *testing.T) {
	c := schematest.MustContracts(t)
	base := map[string]string{
		schemas.Record:               `{"v":1,"tenantId":3,"batchId":42,"index":0,"params":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add"},"record":{"thirdId":"crm-1","groups":"vip"}}`,
		schemas.Resolved:             `{"v":1,"tenantId":3,"batchId":42,"index":3,"optType":"add","outcome":"MATCHED","matchedBy":"phone","customerId":1001,"groups":["vip"]}`,
		"not found":                  `{"v":1,"tenantId":3,"batchId":42,"index":3,"optType":"add","outcome":"NOT_FOUND","reason":"NOT_FOUND","ref":{"thirdId":"x"}}`,
		schemas.Directory:            `{"v":1,"type":"identity","tenantId":3,"kind":"phone","value":"13800000001","customerId":1001}`,
		"recheck":                    `{"v":1,"type":"recheck","tenantId":3,"kind":"openid","value":"oA-1"}`,
		schemas.EventRequestAccepted: `{"v":1,"type":"request.accepted","batchId":42,"requestKey":"k","idempotencyKey":"i","topic":"groupmatch.requests","partition":0,"offset":1,"at":"2026-05-01T08:30:00Z"}`,
		schemas.EventRequestRejected: `{"v":1,"type":"request.rejected","code":"403","errorCode":"PERMISSION_DENIED","msg":"no","requestKey":"k","idempotencyKey":"i","topic":"groupmatch.requests","partition":0,"offset":1,"at":"2026-05-01T08:30:00Z"}`,
		schemas.EventBatchFinished:   `{"v":1,"type":"batch.finished","tenantId":3,"batchId":42,"status":"SUCCESS","optType":"add","total":1,"processed":1,"success":1,"unmatched":0,"ambiguous":0,"invalid":0,"failed":0,"deferred":0,"lateMatched":0,"matchedBy":{"id":1},"groupsCreated":0,"conflicts":0,"errorCounts":{},"acceptedAt":"2026-05-01T08:30:00Z","finishedAt":"2026-05-01T08:30:01Z"}`,
		schemas.EventBatchUpdated:    `{"v":1,"type":"batch.updated","tenantId":3,"batchId":42,"status":"PARTIAL_SUCCESS","optType":"add","total":2,"processed":2,"success":1,"unmatched":1,"ambiguous":0,"invalid":0,"failed":0,"deferred":1,"lateMatched":1,"matchedBy":{"id":1},"groupsCreated":0,"conflicts":0,"errorCounts":{"NOT_FOUND":1},"acceptedAt":"2026-05-01T08:30:00Z","finishedAt":"2026-05-01T08:30:01Z"}`,
		"deferred":                   `{"v":1,"tenantId":3,"batchId":42,"index":3,"optType":"add","outcome":"NOT_FOUND","reason":"NOT_FOUND","ref":{"thirdId":"x"},"pending":{"identities":{"phone":"13800000000"},"params":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add","deferUnmatched":true},"groups":["vip"]}}`,
		"late":                       `{"v":1,"tenantId":3,"batchId":42,"index":3,"optType":"add","outcome":"MATCHED","matchedBy":"phone","customerId":1001,"groups":["vip"],"late":true}`,
	}
	schemaOf := func(k string) string {
		switch k {
		case "not found", "deferred", "late":
			return schemas.Resolved
		case "recheck":
			return schemas.Directory
		}
		return k
	}
	for k, v := range base {
		if err := c.Validate(schemaOf(k), []byte(v)); err != nil {
			t.Fatalf("base %s does not validate: %v", k, err)
		}
	}
	type mutation struct {
		base string
		path string // dot-separated; "-" deletes
		set  any    // nil with delete
		del  bool
	}
	del := func(base, path string) mutation { return mutation{base: base, path: path, del: true} }
	set := func(base, path string, v any) mutation { return mutation{base: base, path: path, set: v} }
	muts := []mutation{
		set(schemas.Record, "v", 2), del(schemas.Record, "v"), set(schemas.Record, "tenantId", 0),
		set(schemas.Record, "batchId", json.Number("9007199254740992")), set(schemas.Record, "batchId", 1.5),
		set(schemas.Record, "index", 500), set(schemas.Record, "index", -1), set(schemas.Record, "extra", 1),
		set(schemas.Record, "params.optType", "ADD"), set(schemas.Record, "params.optType", "upsert"),
		del(schemas.Record, "params.identifyWay"), del(schemas.Record, "params.matchingType"),
		set(schemas.Record, "params.isMatching", false), set(schemas.Record, "params.matchingType", 3),
		set(schemas.Record, "params.accurateMatchType", "gzh"), set(schemas.Record, "record.phone", ""),
		set(schemas.Record, "record.phone", "a\x00b"), set(schemas.Record, "record.phone", nil),
		set(schemas.Record, "record.Phone", "1"), del(schemas.Record, "record"),

		set(schemas.Resolved, "v", 0), set(schemas.Resolved, "outcome", "matched"), del(schemas.Resolved, "customerId"),
		set(schemas.Resolved, "customerId", json.Number("9007199254740992")), del(schemas.Resolved, "groups"),
		set(schemas.Resolved, "groups", []any{}), set(schemas.Resolved, "groups", []any{"vip", "vip"}),
		set(schemas.Resolved, "groups", []any{" vip"}), set(schemas.Resolved, "groups", []any{"a,b"}),
		set(schemas.Resolved, "groups", []any{strings.Repeat("x", 65)}), set(schemas.Resolved, "reason", "NOT_FOUND"),
		set(schemas.Resolved, "matchedBy", "thirdId"), set(schemas.Resolved, "created", false),
		set(schemas.Resolved, "ref", map[string]any{}), set(schemas.Resolved, "optType", "Add"),
		del("not found", "reason"), set("not found", "reason", "AMBIGUOUS"), del("not found", "ref"),
		set("not found", "customerId", 1), set("not found", "ref.phone", "13800000000x"), set("not found", "ref.email", "x"),
		set("not found", "outcome", "FAILED"), set("not found", "reason", "GROUP_LIMIT"),
		set("not found", "ref.thirdId", strings.Repeat("t", 129)),
		set(schemas.Resolved, "groups", hundredAndOneGroups()),
		set(schemas.Record, "params.accurateMatchValue", strings.Repeat("w", 129)),

		set(schemas.Directory, "v", 2), set(schemas.Directory, "type", "customer"), del(schemas.Directory, "customerId"),
		set(schemas.Directory, "customerId", 0), set(schemas.Directory, "value", ""), set(schemas.Directory, "kind", "thirdId"),
		set(schemas.Directory, "tenantId", 0), set(schemas.Directory, "appId", "wx1"), set("recheck", "customerId", 7),
		del("recheck", "value"),

		set(schemas.EventRequestAccepted, "type", "request.rejected"), del(schemas.EventRequestAccepted, "batchId"),
		set(schemas.EventRequestAccepted, "batchId", 0), set(schemas.EventRequestAccepted, "at", "yesterday"),
		set(schemas.EventRequestAccepted, "code", "200"), set(schemas.EventRequestAccepted, "idempotencyKey", ""),
		del(schemas.EventRequestAccepted, "requestKey"), set(schemas.EventRequestAccepted, "offset", -1),
		set(schemas.EventRequestRejected, "code", "400"), set(schemas.EventRequestRejected, "errorCode", "NOPE"),
		del(schemas.EventRequestRejected, "msg"), set(schemas.EventRequestRejected, "batchId", 7),
		set(schemas.EventBatchFinished, "status", "PROCESSING"), del(schemas.EventBatchFinished, "finishedAt"),
		set(schemas.EventBatchFinished, "matchedBy", nil), set(schemas.EventBatchFinished, "matchedBy", map[string]any{"mobile": 1}),
		set(schemas.EventBatchFinished, "success", -1), set(schemas.EventBatchFinished, "total", 0),
		set(schemas.EventBatchFinished, "errorCounts", map[string]any{"BOGUS": 1}), set(schemas.EventBatchFinished, "errorCounts", nil), set(schemas.EventBatchFinished, "v", "1"),
		del(schemas.EventBatchFinished, "lateMatched"), del(schemas.EventBatchUpdated, "deferred"),
		set(schemas.EventBatchUpdated, "type", "batch.done"), set(schemas.EventBatchUpdated, "status", "PROCESSING"),
		set(schemas.EventBatchUpdated, "lateMatched", -1),

		set("deferred", "outcome", "AMBIGUOUS"), set("deferred", "pending.identities", map[string]any{}),
		set("deferred", "pending.identities", map[string]any{"mobile": "x"}), del("deferred", "pending.groups"),
		set("deferred", "pending.params.optType", "upsert"), set("deferred", "pending.extra", 1),
		set("late", "outcome", "NOT_FOUND"), set("late", "late", false),
	}
	for _, m := range muts {
		name := fmt.Sprintf("%s %s=%v", m.base, m.path, m.set)
		if m.del {
			name = fmt.Sprintf("%s without %s", m.base, m.path)
		}
		t.Run(name, func(t *testing.T) {
			var doc map[string]any
			dec := json.NewDecoder(strings.NewReader(base[m.base]))
			dec.UseNumber()
			if err := dec.Decode(&doc); err != nil {
				t.Fatal(err)
			}
			keys := strings.Split(m.path, ".")
			parent := doc
			for _, k := range keys[:len(keys)-1] {
				parent = parent[k].(map[string]any)
			}
			if m.del {
				delete(parent, keys[len(keys)-1])
			} else {
				parent[keys[len(keys)-1]] = m.set
			}
			b, err := json.Marshal(doc)
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate(schemaOf(m.base), b)
			if err == nil {
				t.Errorf("%s validates", b)
			}
			if strings.HasPrefix(m.base, "event") {
				if _, err := c.ValidateEvent(b); err == nil {
					t.Errorf("%s validates as an event", b)
				}
			}
		})
	}
	// Every value a schema accepts, its stage decodes.
	for k, v := range base {
		var err error
		switch schemaOf(k) {
		case schemas.Record:
			_, err = pipeline.DecodeRecord([]byte(v))
		case schemas.Resolved:
			_, err = pipeline.DecodeResolved([]byte(v))
		case schemas.Directory:
			_, err = pipeline.DecodeDirectory([]byte(v))
		}
		if err != nil {
			t.Errorf("%s validates but does not decode: %v", k, err)
		}
	}
}

// requestCases is where ingest keeps its batchAdd validation cases (NAME.json
// is the body, NAME.want is "ok" or the expected error). The schemas package
// may not import ingest, so it reads the files.
const requestCases = "../ingest/testdata/requests"

// notExpressible lists the cases that ingest rejects but the batchAdd schema
// accepts, each with the reason no JSON Schema can reject it. The list is
// checked both ways: a case missing here fails, and so does one listed here
// that the schema rejects.
var notExpressible = map[string]string{
	// A JSON Schema sees the parsed value, in which a repeated member
	// survives once (encoding/json keeps the last).
	"duplicate_data":              "duplicate member",
	"duplicate_escaped_name":      "duplicate member",
	"duplicate_null_data":         "duplicate member",
	"duplicate_param":             "duplicate member",
	"duplicate_param_after_null":  "duplicate member",
	"duplicate_param_defer":       "duplicate member",
	"duplicate_public_params":     "duplicate member",
	"duplicate_record_field":      "duplicate member",
	"duplicate_record_field_null": "duplicate member",
	// Invalid UTF-8 and unpaired surrogate escapes are replaced by U+FFFD
	// when the text is parsed, before any schema sees it.
	"high_surrogate_then_letter":  "text encoding",
	"invalid_utf8_phone":          "text encoding",
	"invalid_utf8_truncated_rune": "text encoding",
	"invalid_utf8_unknown_key":    "text encoding",
	"invalid_utf8_unknown_value":  "text encoding",
	"lone_high_surrogate":         "text encoding",
	"lone_low_surrogate":          "text encoding",
}

// Every body ingest accepts validates against the batchAdd schema; every
// body it rejects is rejected by JSON parsing or by the schema, except the
// cases of notExpressible.
func TestBatchAddSchemaAgreesWithIngestCases(t *testing.T) {
	c := schematest.MustContracts(t)
	bodies, err := filepath.Glob(filepath.Join(requestCases, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(bodies) < 50 {
		t.Fatalf("found %d cases in %s; the test data moved?", len(bodies), requestCases)
	}
	accepted := map[string]bool{} // bad cases the schema accepted
	var ok, rejected int
	for _, path := range bodies {
		name := strings.TrimSuffix(filepath.Base(path), ".json")
		body, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		want, err := os.ReadFile(strings.TrimSuffix(path, ".json") + ".want")
		if err != nil {
			t.Fatal(err)
		}
		wantOK := strings.SplitN(string(want), "\n", 2)[0] == "ok"
		err = validateBody(c, body)
		switch {
		case wantOK && err != nil:
			t.Errorf("%s: ingest accepts it, the schema rejects it: %v", name, err)
		case wantOK:
			ok++
		case err == nil:
			accepted[name] = true
		default:
			rejected++
		}
	}
	for name := range accepted {
		if notExpressible[name] == "" {
			t.Errorf("%s: ingest rejects it, the schema accepts it (if no JSON Schema can reject it, list it in notExpressible)", name)
		}
	}
	for name := range notExpressible {
		if !accepted[name] {
			t.Errorf("%s is listed as not expressible but the schema rejects it (or the case is gone): remove it from the list", name)
		}
	}
	if ok < 20 || rejected < 60 {
		t.Errorf("only %d accepted and %d rejected cases checked", ok, rejected)
	}

	// Bodies too big for files: the record count bounds.
	record := `{"thirdId":"crm-1","groups":"vip"}`
	for n, wantOK := range map[int]bool{1: true, pipeline.MaxRecords: true, pipeline.MaxRecords + 1: false} {
		body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[` + strings.Repeat(record+",", n-1) + record + `]}`
		if err := validateBody(c, []byte(body)); (err == nil) != wantOK {
			t.Errorf("%d records: schema says %v, want ok=%v", n, err, wantOK)
		}
	}
}

// validateBody validates a batchAdd body as a client would: a leading UTF-8
// byte order mark (which RFC 8259 lets parsers ignore, and ingest does) is
// not part of the JSON value.
func validateBody(c *schematest.Contracts, body []byte) error {
	return c.Validate(schemas.BatchAddRequest, bytes.TrimPrefix(body, []byte("\ufeff")))
}

// Rules of the batchAdd body beyond the test data: letter case and white
// space as ingest reads them, and the conditionals of publicParams.
func TestBatchAddSchemaRules(t *testing.T) {
	c := schematest.MustContracts(t)
	const rec = `"data":[{"thirdId":"crm-1","groups":"vip"}]`
	cases := map[string]bool{
		`{"v":1,"publicParams":{"isMatching":false,"optType":"add"},` + rec + `}`:                                                                          true,
		`{"v":2,"publicParams":{"isMatching":false,"optType":"add"},` + rec + `}`:                                                                          false,
		`{"publicParams":{"isMatching":false,"optType":"\u3000DeLeTe\t"},` + rec + `}`:                                                                     true,
		`{"publicParams":{"isMatching":false,"optType":"adds"},` + rec + `}`:                                                                               false,
		`{"publicParams":{"isMatching":false,"optType":"\u200badd"},` + rec + `}`:                                                                          false, // zero-width space is not white space
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":"wor\u212awechat","accurateMatchValue":"w"},` + rec + `}`:                 false, // no optType
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":"wor\u212awechat","accurateMatchValue":"w","optType":"add"},` + rec + `}`: true,  // Kelvin sign folds to k, as strings.EqualFold has it
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":" ContentHome ","accurateMatchValue":"w","optType":"add"},` + rec + `}`:   true,
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":"contenthomes","accurateMatchValue":"w","optType":"add"},` + rec + `}`:    false,
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":"gzh","accurateMatchValue":"\u00a0","optType":"add"},` + rec + `}`:        false,
		`{"publicParams":{"isMatching":true,"matchingType":1,"accurateMatchType":" ","accurateMatchValue":null,"optType":"add"},` + rec + `}`:              true,
		`{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"accurateMatchType":" ","optType":"add"},` + rec + `}`:                        true,
		`{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"accurateMatchValue":"x","optType":"add"},` + rec + `}`:                       false,
		`{"publicParams":{"isMatching":true,"matchingType":2.0,"identifyWay":2e0,"optType":"add"},` + rec + `}`:                                            true,
		`{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":"1","optType":"add"},` + rec + `}`:                                              false,
		`{"publicParams":{"isMatching":false,"accurateMatchType":"nope","accurateMatchValue":" ","optType":"add"},` + rec + `}`:                            true, // one alone is ignored
		`{"publicParams":{"isMatching":false,"accurateMatchType":"nope","accurateMatchValue":"v","optType":"add"},` + rec + `}`:                            false,
		`{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"phone":13800000000}]}`:                                                             false,
		`{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"phone":"` + strings.Repeat("1", 65537) + `"}]}`:                                    false,
	}
	for body, want := range cases {
		err := c.Validate(schemas.BatchAddRequest, []byte(body))
		if (err == nil) != want {
			t.Errorf("%.160s: schema says %v, want ok=%v", body, err, want)
		}
	}
}

// The OpenAPI document loads, is valid, and its BatchAddRequest is exactly
// the batchAdd JSON Schema, so the two can never drift apart.
func TestOpenAPIDocument(t *testing.T) {
	doc, err := schematest.LoadOpenAPI(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if !doc.IsOpenAPI31OrLater() {
		t.Errorf("openapi %s, want 3.1", doc.OpenAPI)
	}

	var yamlDoc struct {
		Components struct {
			Schemas map[string]any `json:"schemas"`
		} `json:"components"`
	}
	if err := unmarshalYAML(schemas.OpenAPI(), &yamlDoc); err != nil {
		t.Fatal(err)
	}
	raw, err := schemas.JSONSchema(schemas.BatchAddRequest)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON map[string]any
	if err := json.Unmarshal(raw, &fromJSON); err != nil {
		t.Fatal(err)
	}
	delete(fromJSON, "$schema")
	delete(fromJSON, "$id")
	got, _ := json.Marshal(yamlDoc.Components.Schemas["BatchAddRequest"])
	want, _ := json.Marshal(fromJSON)
	if !bytes.Equal(got, want) {
		t.Errorf("components.schemas.BatchAddRequest differs from json/batchadd-request.schema.json:\n got %s\nwant %s", got, want)
	}

	// Every route the service serves is in the document.
	routes := map[string][]string{ // path -> servers
		"/app/getOrgAccessToken":          {"/api/integrate", "/api/open"},
		"/app/refreshOrgAccessToken":      {"/api/integrate", "/api/open"},
		"/audience/group/rel/batchAdd":    {"/api/integrate", "/api/open"},
		"/audience/group/rel/batchResult": {"/api/integrate", "/api/open"},
		"/audience/group/list":            {"/api/integrate", "/api/open"},
		"/audience/group/members":         {"/api/integrate", "/api/open"},
		"/healthz":                        {"/"}, // the admin address
		"/readyz":                         {"/"},
		"/metrics":                        {"/"},
		"/openapi.yaml":                   nil,
	}
	if got := slices.Sorted(maps.Keys(doc.Paths.Map())); !slices.Equal(got, slices.Sorted(maps.Keys(routes))) {
		t.Errorf("paths %v, want %v", got, slices.Sorted(maps.Keys(routes)))
	}
	for path, servers := range routes {
		item := doc.Paths.Value(path)
		if item == nil {
			continue
		}
		var urls []string
		for _, s := range item.Servers {
			urls = append(urls, s.URL)
		}
		if !slices.Equal(urls, servers) {
			t.Errorf("%s is served under %v, want %v", path, urls, servers)
		}
	}
}

// unmarshalYAML decodes YAML into out by way of JSON, so that values compare
// as JSON values.
func unmarshalYAML(b []byte, out any) error {
	var v any
	if err := yaml.Unmarshal(b, &v); err != nil {
		return err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return json.Unmarshal(j, out)
}

// GET /openapi.yaml serves the embedded document as YAML.
func TestOpenAPIHandler(t *testing.T) {
	rec := httptest.NewRecorder()
	schemas.OpenAPIHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/openapi.yaml", nil))
	if rec.Code != http.StatusOK || rec.Header().Get("Content-Type") != "application/yaml" || !bytes.Equal(rec.Body.Bytes(), schemas.OpenAPI()) {
		t.Errorf("HTTP %d, Content-Type %q, %d bytes", rec.Code, rec.Header().Get("Content-Type"), rec.Body.Len())
	}
}

// hundredAndOneGroups is one group name more than a record may carry.
func hundredAndOneGroups() []any {
	g := make([]any, pipeline.MaxGroupsPerRecord+1)
	for i := range g {
		g[i] = fmt.Sprintf("g%d", i)
	}
	return g
}
