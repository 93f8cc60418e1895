package main

// Contract tests: every HTTP exchange of the in-process end-to-end tests is
// checked against schemas/openapi.yaml (newContractClient, used by
// system.do), and every message an end-to-end run puts on the topics is
// checked against its JSON Schema (TestContractsEndToEnd).

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/ingest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// httpClient is the client of system.do: s.client, or else the shared
// contract client.
func (s *system) httpClient() *http.Client {
	if s.client != nil {
		return s.client
	}
	c, err := sharedContractClient()
	if err != nil {
		s.t.Fatal(err)
	}
	return c
}

// sharedContractClient is the contract client of every system: the document
// is loaded once per test binary. The client is safe for concurrent use.
var sharedContractClient = sync.OnceValues(newContractClient)

// newContractClient returns an HTTP client that checks every exchange
// against the OpenAPI document and fails the exchange (Do returns an error)
// when:
//   - the route is not in the document;
//   - the response breaks it: a status the operation does not list, a
//     header or body not as documented;
//   - the request breaks it and yet was answered below 400 (a request the
//     document calls invalid must be refused; one it calls valid may still
//     be refused by rules it cannot state).
func newContractClient() (*http.Client, error) {
	doc, err := schematest.LoadOpenAPI(context.Background())
	if err != nil {
		return nil, err
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("openapi router: %w", err)
	}
	return &http.Client{Transport: &contractTransport{router: router, next: http.DefaultTransport}}, nil
}

// contractTransport is the RoundTripper of newContractClient. It is safe
// for concurrent use.
type contractTransport struct {
	router routers.Router
	next   http.RoundTripper
}

var contractOptions = &openapi3filter.Options{
	IncludeResponseStatus: true,
	MultiError:            true,
	// The document's only scheme is the X-Token header: present is all a
	// client-side check can know.
	AuthenticationFunc: func(_ context.Context, in *openapi3filter.AuthenticationInput) error {
		s := in.SecurityScheme
		if s.Type == "apiKey" && s.In == "header" && in.RequestValidationInput.Request.Header.Get(s.Name) != "" {
			return nil
		}
		return fmt.Errorf("no %s header", s.Name)
	},
}

func (c *contractTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		var err error
		body, err = io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
	}
	withBody := func() *http.Request {
		r := req.Clone(req.Context())
		r.Body = io.NopCloser(bytes.NewReader(body))
		return r
	}
	route, params, err := c.router.FindRoute(withBody())
	if err != nil {
		return nil, fmt.Errorf("openapi: %s %s is not in schemas/openapi.yaml: %w", req.Method, req.URL.Path, err)
	}
	in := &openapi3filter.RequestValidationInput{Request: withBody(), PathParams: params, Route: route, Options: contractOptions}
	reqErr := openapi3filter.ValidateRequest(req.Context(), in)

	resp, err := c.next.RoundTrip(withBody())
	if err != nil {
		return nil, err
	}
	respBody, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	resp.Body = io.NopCloser(bytes.NewReader(respBody))
	if reqErr != nil && resp.StatusCode < 400 {
		return nil, fmt.Errorf("openapi: %s %s breaks schemas/openapi.yaml but was answered %d: %v", req.Method, req.URL.Path, resp.StatusCode, reqErr)
	}
	out := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
		Body: io.NopCloser(bytes.NewReader(respBody)), Options: contractOptions,
	}
	if err := openapi3filter.ValidateResponse(req.Context(), out); err != nil {
		return nil, fmt.Errorf("openapi: the answer to %s %s (HTTP %d, %.300s) breaks schemas/openapi.yaml: %w",
			req.Method, req.URL.Path, resp.StatusCode, respBody, err)
	}
	return resp, nil
}

// The contract client refuses what the document does not allow: unknown
// routes, undocumented statuses, malformed bodies, and invalid requests that
// were answered 200.
func TestContractClientRefusesBreaches(t *testing.T) {
	client, err := newContractClient()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		method  string
		path    string
		body    string
		token   string
		status  int
		answer  string
		header  http.Header
		wantErr string // "" = the exchange passes
	}{
		{name: "documented", method: "GET", path: "/api/open/audience/group/list", token: "t", status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":{"groups":[],"pageNo":1,"pageSize":100,"total":0}}`},
		{name: "group list as an array (before paging)", method: "GET", path: "/api/open/audience/group/list", token: "t", status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":[]}`, wantErr: "breaks"},
		{name: "unknown route", method: "GET", path: "/api/open/audience/group/nope", token: "t", status: 404,
			answer: `{"code":"404","errorCode":"NOT_FOUND","msg":"no such API","data":null}`, wantErr: "not in schemas/openapi.yaml"},
		{name: "undocumented status", method: "GET", path: "/api/integrate/audience/group/list", token: "t", status: 418,
			answer: `{"code":"418","errorCode":"TEAPOT","msg":"x","data":null}`, wantErr: "status is not supported"},
		{name: "status and code disagree", method: "GET", path: "/api/integrate/audience/group/list", token: "t", status: 403,
			answer: `{"code":"404","errorCode":"PERMISSION_DENIED","msg":"x","data":null}`, wantErr: "breaks"},
		{name: "data on an error", method: "GET", path: "/api/integrate/audience/group/list", status: 401,
			answer: `{"code":"100200","errorCode":"TOKEN_INVALID","msg":"x","data":1}`, wantErr: "breaks"},
		{name: "batch id beyond 2^53", method: "POST", path: "/api/integrate/audience/group/rel/batchAdd", token: "t",
			body: `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"x"}]}`, status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":9007199254740992}`, wantErr: "breaks"},
		{name: "invalid body accepted", method: "POST", path: "/api/open/audience/group/rel/batchAdd", token: "t",
			body: `{"publicParams":{"isMatching":true,"matchingType":2,"optType":"add"},"data":[{"thirdId":"x"}]}`, status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":1}`, wantErr: "was answered 200"},
		{name: "invalid body refused", method: "POST", path: "/api/open/audience/group/rel/batchAdd", token: "t",
			body: `{"publicParams":{"isMatching":true,"matchingType":2,"optType":"add"},"data":[{"thirdId":"x"}]}`, status: 400,
			answer: `{"code":"400","errorCode":"INVALID_PARAMETER","msg":"publicParams.identifyWay is required when matchingType=2","data":null}`},
		{name: "429 without Retry-After", method: "GET", path: "/api/open/audience/group/list", token: "t", status: 429,
			answer: `{"code":"429","errorCode":"RATE_LIMITED","msg":"x","data":null}`, wantErr: "Retry-After"},
		{name: "429 with Retry-After", method: "GET", path: "/api/open/audience/group/list", token: "t", status: 429,
			header: http.Header{"Retry-After": {"1"}}, answer: `{"code":"429","errorCode":"RATE_LIMITED","msg":"x","data":null}`},
		{name: "extra field", method: "GET", path: "/api/open/audience/group/members?groupName=vip", token: "t", status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":{"groupName":"vip","memberCount":0,"members":[],"nextCursor":"","x":1}}`, wantErr: "breaks"},
		{name: "unmasked phone", method: "GET", path: "/api/open/audience/group/rel/batchResult?batchId=1", token: "t", status: 200,
			answer: `{"code":"200","errorCode":"SUCCESS","msg":"ok","data":{"batchId":1,"status":"FAILED","optType":"add","total":1,"processed":1,
			"success":0,"unmatched":1,"ambiguous":0,"invalid":0,"failed":0,"deferred":0,"lateMatched":0,"matchedBy":{},"groupsCreated":0,"conflicts":0,
			"errorCounts":{"NOT_FOUND":1},"acceptedAt":"2026-01-01T00:00:00Z","finishedAt":"2026-01-01T00:00:01Z",
			"failures":[{"index":0,"phone":"13800000000","reason":"NOT_FOUND"}],"pageNo":1,"pageSize":100,"failureTotal":1}}`, wantErr: "breaks"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				for k, v := range tc.header {
					w.Header()[k] = v
				}
				w.Header().Set("Content-Type", "application/json; charset=utf-8")
				w.WriteHeader(tc.status)
				io.WriteString(w, tc.answer)
			})}
			base := serveLocal(t, &srv)
			req, err := http.NewRequest(tc.method, base+tc.path, strings.NewReader(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/json")
			if tc.token != "" {
				req.Header.Set("X-Token", tc.token)
			}
			resp, err := client.Do(req)
			if err == nil {
				resp.Body.Close()
			}
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("exchange refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("exchange passed, want an error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// serveLocal serves srv on a loopback port until the test ends and returns
// its base URL.
func serveLocal(t *testing.T, srv *http.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + ln.Addr().String()
}

// The batchAdd JSON Schema and ingest.DecodeRequest agree on every
// combination of publicParams values from pools that exercise each rule of
// publicParams: all of those rules are expressible, so the two must give the
// same verdict on every body. (Rules that are not expressible are listed in
// schemas' tests.)
func TestBatchAddSchemaAgreesWithDecoder(t *testing.T) {
	c := schematest.MustContracts(t)
	pools := []struct {
		name   string
		values []string // JSON values; "" = member absent
	}{
		{"isMatching", []string{"", "null", "true", "false", `"true"`}},
		{"matchingType", []string{"", "null", "1", "2", "2.0", "3", `"1"`}},
		{"identifyWay", []string{"", "null", "1", "20e-1", "0", `"x"`}},
		{"accurateMatchType", []string{"", "null", `""`, `" "`, `"gzh"`, `" YouZan\t"`, `"nope"`, "1"}},
		{"accurateMatchValue", []string{"", "null", `"\u3000"`, `"wx1"`, "2", `"` + strings.Repeat("应", 128) + `"`, `" ` + strings.Repeat("w", 128) + `"`}},
		{"optType", []string{"", "null", `"add"`, `" DELETE"`, `"upsert"`, "1"}},
	}
	idx := make([]int, len(pools))
	n, disagree := 0, 0
	compare := func(body string) {
		n++
		_, decErr := ingest.DecodeRequest([]byte(body))
		schemaErr := c.Validate(schemas.BatchAddRequest, []byte(body))
		if (decErr == nil) != (schemaErr == nil) {
			disagree++
			if disagree <= 10 {
				t.Errorf("%s\n  ingest: %v\n  schema: %v", body, decErr, schemaErr)
			}
		}
	}
	for {
		var b strings.Builder
		b.WriteString(`{"publicParams":{`)
		first := true
		for i, p := range pools {
			v := p.values[idx[i]]
			if v == "" {
				continue
			}
			if !first {
				b.WriteByte(',')
			}
			first = false
			fmt.Fprintf(&b, "%q:%s", p.name, v)
		}
		b.WriteString(`},"data":[{"thirdId":"crm-1","groups":"vip"}]}`)
		compare(b.String())
		// Next combination.
		i := 0
		for ; i < len(idx); i++ {
			idx[i]++
			if idx[i] < len(pools[i].values) {
				break
			}
			idx[i] = 0
		}
		if i == len(idx) {
			break
		}
	}
	// The records, with valid publicParams.
	for _, recs := range []string{`[]`, `[{}]`, `[null]`, `[[]]`, `[{"phone":1}]`, `[{"Phone":1,"groups":null}]`, `[{"thirdId":"a\u0000"}]`,
		`[{"identityType":true}]`, `[{"openid":{}},{}]`, `[{"unionid":"x","v":[1]}]`, `{"a":1}`, `"x"`, `null`} {
		compare(`{"publicParams":{"isMatching":false,"optType":"add"},"data":` + recs + `}`)
	}
	if disagree > 0 {
		t.Errorf("ingest and the schema disagree on %d of %d bodies", disagree, n)
	}
	t.Logf("%d bodies compared", n)
}

// An end-to-end run — HTTP batches of every kind, requests published to the
// requests topic, a poison message — puts on the topics only messages that
// validate against their JSON Schemas, keyed as docs/kafka.md says; every
// batch gets exactly one batch.finished event, agreeing with batchResult.
func TestContractsEndToEnd(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("acme", apps.ScopeGroup)
	s.loadDirectory("acme", testDirectory)
	ctx := t.Context()
	tenant, err := s.apps.TenantID(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}

	// Over HTTP: fuzzy add with invalid records, exact delete, exact add
	// with an application, isMatching=false.
	bodies := []string{
		`{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 1, "optType": "add"},
		  "data": [{"unionid": "union-1", "phone": "13800000003", "groups": "vip,new"}, {"openid": "open-2", "groups": "vip"},
		           {"phone": "13800000009", "groups": "vip"}, {"thirdId": "nobody", "groups": "vip"},
		           {"phone": "12345", "groups": "vip"}, {"unionid": "union-3", "groups": ""},
		           {"thirdId": "crm-4", "groups": "` + strings.Repeat("g", 65) + `"}, {}]}`,
		`{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "Delete"},
		  "data": [{"identityType": "thirdId", "thirdId": "crm-1", "groups": "vip"}, {"identityType": "email", "thirdId": "crm-2", "groups": "vip"},
		           {"identityType": "phone", "phone": "13800000009", "groups": "vip"}, {"identityType": "unionid", "groups": "vip"}]}`,
		`{"publicParams": {"isMatching": true, "matchingType": 1, "identifyWay": 9, "accurateMatchType": "GZH", "accurateMatchValue": " wx1 ", "optType": "add"},
		  "data": [{"identityType": "openid", "openid": "open-2", "groups": "app"}, {"identityType": "openid", "openid": "open-x", "groups": "app"}]}`,
		`{"publicParams": {"isMatching": false, "optType": "add"},
		  "data": [{"thirdId": "new-1", "phone": "13900000001", "groups": "imported"}, {"thirdId": "crm-2", "groups": "imported"}, {"phone": "13900000002", "groups": "imported"}]}`,
	}
	results := map[int64]batchResult{}
	var ids []int64
	for _, body := range bodies {
		ids = append(ids, s.postBatch(token, body))
	}
	// The operational routes answer as documented too, on the admin
	// address.
	s.get("/openapi.yaml", "", http.StatusOK, nil)
	admin := *s
	admin.base = s.admin
	admin.get("/healthz", "", http.StatusOK, nil)
	admin.get("/readyz", "", http.StatusOK, nil)
	admin.get("/metrics", "", http.StatusOK, nil)

	// Over Kafka: one request accepted, three rejected.
	brokers := s.opts.brokerList()
	w := stream.NewWriter(brokers, s.topic("requests"), nil)
	defer w.Close()
	feedBody := `{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 2, "optType": "add"},
	  "data": [{"thirdId": "crm-5", "groups": "feed"}, {"phone": "13800000009", "groups": "feed"}]}`
	requests := []kafka.Message{
		{Key: []byte("feed-ok"), Value: []byte(feedBody), Headers: []kafka.Header{
			{Key: pipeline.HeaderToken, Value: []byte(token)}, {Key: pipeline.HeaderIdempotencyKey, Value: []byte("contracts-1")}}},
		{Key: []byte("feed-forged"), Value: []byte(feedBody), Headers: []kafka.Header{{Key: pipeline.HeaderToken, Value: []byte("forged")}}},
		{Key: []byte("feed-bad"), Value: []byte(`{"publicParams": {"isMatching": true, "optType": "add"}, "data": []}`),
			Headers: []kafka.Header{{Key: pipeline.HeaderToken, Value: []byte(token)}}},
		// Not UTF-8: PostgreSQL refused it (SQLSTATE 22021), which the feed retried for ever.
		{Key: []byte("feed-bad-key"), Value: []byte(feedBody), Headers: []kafka.Header{
			{Key: pipeline.HeaderToken, Value: []byte(token)}, {Key: pipeline.HeaderIdempotencyKey, Value: []byte("\xffkey")}}},
	}
	if err := w.WriteMessages(ctx, requests...); err != nil {
		t.Fatal(err)
	}
	// A message no stage can decode goes to the dead-letter topic.
	const poisonKey = "contracts-test-poison"
	pw := stream.NewWriter(brokers, s.topic("records"), nil)
	defer pw.Close()
	if err := pw.WriteMessages(ctx, kafka.Message{Key: []byte(poisonKey), Value: []byte(`{"v":1,"poison":true}`)}); err != nil {
		t.Fatal(err)
	}

	// Wait for the feed's answers, every batch.finished and the dead letter.
	var events, dead []kafka.Message
	deadline := time.Now().Add(60 * time.Second)
	for {
		events = readTopic(t, brokers, s.topic("events"))
		dead = readTopic(t, brokers, s.topic("dlq"))
		byKey := map[string]string{}
		finished := map[int64]int{}
		for _, m := range events {
			var e struct {
				Type    string `json:"type"`
				BatchID int64  `json:"batchId"`
			}
			if err := json.Unmarshal(m.Value, &e); err != nil {
				t.Fatalf("event %s is not JSON: %v", m.Value, err)
			}
			if e.Type == pipeline.EventBatchFinished {
				finished[e.BatchID]++
			} else {
				byKey[string(m.Key)] = e.Type
				if e.Type == pipeline.EventRequestAccepted && !slices.Contains(ids, e.BatchID) {
					ids = append(ids, e.BatchID)
				}
			}
		}
		done := len(byKey) == len(requests) && len(dead) > 0
		for _, id := range ids {
			done = done && finished[id] > 0
		}
		if done {
			for id, n := range finished {
				if n != 1 || !slices.Contains(ids, id) {
					t.Errorf("batch %d has %d batch.finished events (known batches %v), want exactly 1", id, n, ids)
				}
			}
			if byKey["feed-ok"] != pipeline.EventRequestAccepted || byKey["feed-forged"] != pipeline.EventRequestRejected ||
				byKey["feed-bad"] != pipeline.EventRequestRejected || byKey["feed-bad-key"] != pipeline.EventRequestRejected {
				t.Errorf("request events by key %v", byKey)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 60 s: request events %v, batch.finished %v of batches %v, %d dead letters", byKey, finished, ids, len(dead))
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, id := range ids {
		results[id] = s.waitFinal(token, id, 10*time.Second)
	}

	c := schematest.MustContracts(t)
	records := readTopic(t, brokers, s.topic("records"))
	resolved := readTopic(t, brokers, s.topic("resolved"))
	if len(records) == 0 || len(resolved) == 0 {
		t.Fatalf("%d records and %d resolved messages", len(records), len(resolved))
	}

	seenRecords := map[[2]int64]bool{}
	for _, m := range records {
		if string(m.Key) == poisonKey {
			continue
		}
		if err := c.Validate(schemas.Record, m.Value); err != nil {
			t.Errorf("records %d/%d %s: %v", m.Partition, m.Offset, m.Value, err)
			continue
		}
		var r pipeline.RecordMessage
		mustUnmarshal(t, m.Value, &r)
		// SPEC §10: the key is a hash (32 hex digits) and names no identity.
		if !recordKeyPattern.Match(m.Key) {
			t.Errorf("records key %q, want 32 lower-case hex digits", m.Key)
		}
		for _, v := range []string{r.Record.ThirdID, r.Record.OpenID, r.Record.UnionID, r.Record.Phone} {
			if v = strings.TrimSpace(v); len(v) >= 3 && strings.Contains(string(m.Key), v) {
				t.Errorf("records key %q holds the identity value %q", m.Key, v)
			}
		}
		seenRecords[[2]int64{r.BatchID, int64(r.Index)}] = true
	}
	seenResolved := map[[2]int64]bool{}
	for _, m := range resolved {
		if err := c.Validate(schemas.Resolved, m.Value); err != nil {
			t.Errorf("resolved %d/%d %s: %v", m.Partition, m.Offset, m.Value, err)
			continue
		}
		var r pipeline.ResolvedMessage
		mustUnmarshal(t, m.Value, &r)
		if want := string(pipeline.ResolvedKey(r)); string(m.Key) != want {
			t.Errorf("resolved key %q, want %q", m.Key, want)
		}
		seenResolved[[2]int64{r.BatchID, int64(r.Index)}] = true
	}
	for _, id := range ids {
		for i := range results[id].Total {
			if p := [2]int64{id, int64(i)}; !seenRecords[p] || !seenResolved[p] {
				t.Errorf("batch %d record %d: records message %v, resolved message %v", id, i, seenRecords[p], seenResolved[p])
			}
		}
	}

	types := map[string]int{}
	for _, m := range events {
		typ, err := c.ValidateEvent(m.Value)
		if err != nil {
			t.Errorf("events %d/%d %s: %v", m.Partition, m.Offset, m.Value, err)
			continue
		}
		types[typ]++
		switch typ {
		case pipeline.EventBatchFinished:
			var e pipeline.BatchFinishedEvent
			mustUnmarshal(t, m.Value, &e)
			if want := string(pipeline.BatchFinishedKey(tenant, e.BatchID)); e.TenantID != tenant || string(m.Key) != want {
				t.Errorf("batch.finished of tenant %d keyed %q, want tenant %d keyed %q", e.TenantID, m.Key, tenant, want)
			}
			r := results[e.BatchID]
			got := fmt.Sprint(e.Status, e.OptType, e.Total, e.Processed, e.Success, e.Unmatched, e.Ambiguous, e.Invalid, e.Failed,
				e.MatchedBy, e.GroupsCreated, e.Conflicts)
			want := fmt.Sprint(r.Status, r.OptType, r.Total, r.Processed, r.Success, r.Unmatched, r.Ambiguous, r.Invalid, r.Failed,
				r.MatchedBy, r.GroupsCreated, r.Conflicts)
			if got != want {
				t.Errorf("batch %d: batch.finished says %s, batchResult %s", e.BatchID, got, want)
			}
		default:
			var e pipeline.RequestEvent
			mustUnmarshal(t, m.Value, &e)
			if string(m.Key) != e.RequestKey {
				t.Errorf("%s keyed %q, not like its request %q", typ, m.Key, e.RequestKey)
			}
		}
	}
	if types[pipeline.EventRequestAccepted] != 1 || types[pipeline.EventRequestRejected] != 3 || types[pipeline.EventBatchFinished] != len(ids) {
		t.Errorf("events by type %v, want 1 accepted, 3 rejected, %d finished", types, len(ids))
	}

	// Dead letters carry the documented headers; a letter whose value was
	// decodable still validates against its original topic's schema.
	schemaOf := map[string]string{s.topic("records"): schemas.Record, s.topic("resolved"): schemas.Resolved}
	for _, m := range dead {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		stage, class, topic := h[stream.HeaderStage], h[stream.HeaderErrorClass], h[stream.HeaderTopic]
		_, perr := strconv.Atoi(h[stream.HeaderPartition])
		_, oerr := strconv.ParseInt(h[stream.HeaderOffset], 10, 64)
		if !slices.Contains([]string{"matcher", "sink"}, stage) || !slices.Contains([]string{"undecodable", "orphan", "permanent"}, class) ||
			schemaOf[topic] == "" || perr != nil || oerr != nil || h[stream.HeaderError] == "" {
			t.Errorf("dead letter %d headers %v", m.Offset, h)
			continue
		}
		if class != "undecodable" {
			if err := c.Validate(schemaOf[topic], m.Value); err != nil {
				t.Errorf("dead letter %d (%s) from %s: %v", m.Offset, class, topic, err)
			}
		} else if string(m.Key) != poisonKey {
			t.Errorf("dead letter %d: undecodable message %q, only the poison was expected", m.Offset, m.Value)
		}
	}
	t.Logf("validated %d records, %d resolved, %d events %v, %d dead letters", len(records)-1, len(resolved), len(events), types, len(dead))
}

// recordKeyPattern is the shape of pipeline.RecordKey.
var recordKeyPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// readTopic reads every message of every partition of topic, up to the end
// it has when called, with headers and positions.
func readTopic(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := kafka.DialContext(ctx, "tcp", brokers[0])
	if err != nil {
		t.Fatal(err)
	}
	parts, err := conn.ReadPartitions(topic)
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, p := range parts {
		pc, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, p.ID)
		if err != nil {
			t.Fatal(err)
		}
		first, last, err := pc.ReadOffsets()
		pc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if last <= first {
			continue
		}
		rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		if err := rd.SetOffset(first); err != nil {
			t.Fatal(err)
		}
		for {
			m, err := rd.ReadMessage(ctx)
			if err != nil {
				rd.Close()
				t.Fatalf("read %s/%d: %v", topic, p.ID, err)
			}
			out = append(out, m)
			if m.Offset >= last-1 {
				break
			}
		}
		rd.Close()
	}
	return out
}

func mustUnmarshal(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
}
