package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// system is a running groupmatch (all stages in this process) on a fresh
// database and the shared Apache Kafka, with topics and consumer groups of
// its own.
type system struct {
	t     *testing.T
	base  string // http://host:port of the API
	admin string // http://host:port of /healthz, /readyz, /metrics
	pool  *pgxpool.Pool
	apps  *apps.Store
	opts  *options
	logs  *lockedWriter
	// client makes the requests of do; nil means the shared client that
	// checks every exchange against the OpenAPI document (contracts_test.go).
	client *http.Client
}

// startSystem starts a system; tweaks adjust its options before it starts.
func startSystem(t *testing.T, tweaks ...func(*options)) *system {
	t.Helper()
	brokers := testKafka(t)
	names := namesFor(t)
	pool, dbURL := schematest.NewPool(t)
	o := &options{
		brokers: brokers, databaseURL: dbURL, httpAddr: "127.0.0.1:0", topicPrefix: names.topicPrefix, groupPrefix: names.groupPrefix,
		partitions: 4, rateLimit: 1000, rateBurst: 1000, matcherChunk: 500, sinkChunk: 500,
		dbMaxConns: 8, pendingTimeout: 30 * time.Second, rematch: true,
	}
	for _, tweak := range tweaks {
		tweak(o)
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base, admin := runStagesOn(t, o, log, false)
	tp := o.topics()
	waitTopics(t, brokers, tp.Requests, tp.Records, tp.Resolved, tp.Events, tp.DLQ, tp.Directory)
	return &system{t: t, base: base, admin: admin, pool: pool, apps: apps.NewStore(pool), opts: o, logs: logs}
}

// topic is the name of one of the system's topics: requests, records,
// resolved, events or dlq.
func (s *system) topic(name string) string { return s.opts.topicPrefix + name }

// dbOnly is a fresh database for tests that run their own processes.
type dbOnly struct{ url string }

func startSystemDB(t *testing.T) dbOnly {
	t.Helper()
	return dbOnly{url: schematest.NewDatabase(t)}
}

// app creates an application and returns a fresh access token for it.
func (s *system) app(tenant string, scopes ...string) (apps.Credentials, string) {
	s.t.Helper()
	creds, err := s.apps.Create(context.Background(), tenant, "test-app", scopes)
	if err != nil {
		s.t.Fatal(err)
	}
	var env struct {
		Code string
		Data apps.Tokens
	}
	s.get("/api/open/app/getOrgAccessToken?instanceAppid="+creds.AppID+"&instanceSecrect="+creds.Secret, "", http.StatusOK, &env)
	if env.Data.Access == "" || env.Data.Expire != 7200 {
		s.t.Fatalf("token answer %+v", env)
	}
	return creds, env.Data.Access
}

func (s *system) loadDirectory(tenant, lines string) {
	s.t.Helper()
	ctx := context.Background()
	id, err := s.apps.EnsureTenant(ctx, tenant)
	if err != nil {
		s.t.Fatal(err)
	}
	p, err := directory.NewLoader(s.pool).Load(ctx, id, strings.NewReader(lines))
	if err != nil || len(p.Bad) > 0 {
		s.t.Fatalf("load directory: %v, bad lines %v", err, p.Bad)
	}
}

// envelope is the API's answer with data left raw.
type envelope struct {
	Code      string          `json:"code"`
	ErrorCode string          `json:"errorCode"`
	Msg       string          `json:"msg"`
	Data      json.RawMessage `json:"data"`
}

func (s *system) do(method, path, token string, body []byte, wantStatus int, out any) *http.Response {
	s.t.Helper()
	req, err := http.NewRequest(method, s.base+path, bytes.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("X-Token", token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.httpClient().Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != wantStatus {
		s.t.Fatalf("%s %s: HTTP %d %s, want %d", method, path, resp.StatusCode, raw, wantStatus)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			s.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
	return resp
}

func (s *system) get(path, token string, wantStatus int, out any) {
	s.t.Helper()
	s.do(http.MethodGet, path, token, nil, wantStatus, out)
}

// postBatch posts a batchAdd body and returns the batch id.
func (s *system) postBatch(token, body string) int64 {
	s.t.Helper()
	var env struct {
		Code, ErrorCode string
		Data            int64
	}
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", token, []byte(body), http.StatusOK, &env)
	if env.Code != "200" || env.ErrorCode != "SUCCESS" || env.Data <= 0 {
		s.t.Fatalf("batchAdd answered %+v", env)
	}
	return env.Data
}

type batchResult struct {
	BatchID       int64          `json:"batchId"`
	Status        string         `json:"status"`
	OptType       string         `json:"optType"`
	Total         int            `json:"total"`
	Processed     int            `json:"processed"`
	Success       int            `json:"success"`
	Unmatched     int            `json:"unmatched"`
	Ambiguous     int            `json:"ambiguous"`
	Invalid       int            `json:"invalid"`
	Failed        int            `json:"failed"`
	MatchedBy     map[string]int `json:"matchedBy"`
	GroupsCreated int            `json:"groupsCreated"`
	Conflicts     int            `json:"conflicts"`
	ErrorCounts   map[string]int `json:"errorCounts"`
	FinishedAt    *time.Time     `json:"finishedAt"`
	Failures      []struct {
		Index   int    `json:"index"`
		ThirdID string `json:"thirdId"`
		Phone   string `json:"phone"`
		Reason  string `json:"reason"`
	} `json:"failures"`
	FailureTotal int `json:"failureTotal"`
}

// finishedLogLine waits for the sink's "batch finished" log line of batch
// id and returns its fields; it fails the test if there is none or more
// than one.
func (s *system) finishedLogLine(id int64, within time.Duration) map[string]any {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var found []map[string]any
		for _, l := range strings.Split(s.logs.String(), "\n") {
			var m map[string]any
			if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "batch finished" && m["batch_id"] == float64(id) {
				found = append(found, m)
			}
		}
		switch {
		case len(found) > 1:
			s.t.Fatalf("%d batch finished log lines for batch %d: %v", len(found), id, found)
		case len(found) == 1:
			return found[0]
		case time.Now().After(deadline):
			s.t.Fatalf("no batch finished log line for batch %d", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitFinal polls batchResult until the batch is final.
func (s *system) waitFinal(token string, id int64, within time.Duration) batchResult {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		var env struct {
			Data batchResult
		}
		s.get(fmt.Sprintf("/api/integrate/audience/group/rel/batchResult?batchId=%d&pageSize=1000", id), token, http.StatusOK, &env)
		if env.Data.Status != "PROCESSING" {
			return env.Data
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("batch %d still PROCESSING after %s: %+v", id, within, env.Data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type membersPage struct {
	GroupName   string `json:"groupName"`
	MemberCount int64  `json:"memberCount"`
	Members     []struct {
		CustomerID int64  `json:"customerId"`
		ThirdID    string `json:"thirdId"`
	} `json:"members"`
	NextCursor string `json:"nextCursor"`
}

// groupList is the answer of group/list.
type groupList struct {
	Data struct {
		Groups []struct {
			GroupID     int64  `json:"groupId"`
			GroupName   string `json:"groupName"`
			Category    string `json:"category"`
			MemberCount int64  `json:"memberCount"`
		} `json:"groups"`
		PageNo   int   `json:"pageNo"`
		PageSize int   `json:"pageSize"`
		Total    int64 `json:"total"`
	}
}

// members reads every member of a group, page by page.
func (s *system) members(token, group string, pageSize int) []int64 {
	s.t.Helper()
	var ids []int64
	cursor := ""
	for {
		var env struct{ Data membersPage }
		s.get(fmt.Sprintf("/api/integrate/audience/group/members?groupName=%s&pageSize=%d&cursor=%s",
			url.QueryEscape(group), pageSize, url.QueryEscape(cursor)), token, http.StatusOK, &env)
		for _, m := range env.Data.Members {
			ids = append(ids, m.CustomerID)
		}
		if env.Data.NextCursor == "" {
			if int64(len(ids)) != env.Data.MemberCount {
				s.t.Fatalf("group %s: read %d members, memberCount says %d", group, len(ids), env.Data.MemberCount)
			}
			return ids
		}
		cursor = env.Data.NextCursor
	}
}

func equalIDs(got []int64, want ...int64) bool {
	if len(got) != len(want) {
		return false
	}
	for i := range got {
		if got[i] != want[i] {
			return false
		}
	}
	return true
}

// lockedWriter serialises writes of concurrent loggers into one buffer.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (l *lockedWriter) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return fmt.Sprint(l.w)
}
