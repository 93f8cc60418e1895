package main

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/apps"
)

const testDirectory = `{"customerId": 1, "thirdId": "crm-1", "unionid": "union-1", "phones": ["13800000001"]}
{"customerId": 2, "thirdId": "crm-2", "phones": ["13800000002"], "openids": [{"openid": "open-2", "appType": "gzh", "appId": "wx1"}]}
{"customerId": 3, "thirdId": "crm-3", "unionid": "union-3", "phones": ["13800000003"]}
{"customerId": 4, "thirdId": "crm-4", "phones": ["13800000009"]}
{"customerId": 5, "thirdId": "crm-5", "phones": ["13800000009"]}
`

// The documented flow: app, token, directory, an add batch with fuzzy
// matching, its exact result and members; then a delete batch.
func TestEndToEndHTTP(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("acme", apps.ScopeGroup)
	s.loadDirectory("acme", testDirectory)

	add := `{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 1, "optType": "ADD"},
	 "data": [
	  {"unionid": "union-1", "phone": "13800000003", "groups": "vip,new"},
	  {"openid": "open-2", "groups": "vip"},
	  {"phone": "+86 138-0000-0003", "groups": "vip，new , vip"},
	  {"thirdId": "crm-4", "phone": "13800000009", "groups": "vip"},
	  {"phone": "13800000009", "groups": "vip"},
	  {"thirdId": "nobody", "groups": "vip"},
	  {"phone": "12345", "groups": "vip"},
	  {"unionid": "union-3", "groups": ""}
	 ]}`
	start := time.Now()
	id := s.postBatch(token, add)
	res := s.waitFinal(token, id, 10*time.Second)
	t.Logf("8-record batch final %s after acceptance", time.Since(start))

	want := batchResult{BatchID: id, Status: "PARTIAL_SUCCESS", OptType: "add", Total: 8, Processed: 8,
		Success: 4, Unmatched: 1, Ambiguous: 1, Invalid: 2, Failed: 0, GroupsCreated: 2,
		// record 0 wins by unionid (customer 1) while its phone names customer 3;
		// record 3 skips the phone that two customers share and wins by thirdId.
		Conflicts: 2}
	if res.Status != want.Status || res.Total != want.Total || res.Processed != want.Processed ||
		res.Success != want.Success || res.Unmatched != want.Unmatched || res.Ambiguous != want.Ambiguous ||
		res.Invalid != want.Invalid || res.Failed != want.Failed || res.GroupsCreated != want.GroupsCreated ||
		res.Conflicts != want.Conflicts || res.OptType != want.OptType {
		t.Fatalf("result\n got %+v\nwant %+v", res, want)
	}
	// One log line for the finished batch, with its counters and its
	// latency in seconds, and no identity value.
	line := s.finishedLogLine(id, 5*time.Second)
	wantLine := map[string]any{"batch_id": float64(id), "status": "PARTIAL_SUCCESS", "total": 8.0, "processed": 8.0,
		"success": 4.0, "unmatched": 1.0, "ambiguous": 1.0, "invalid": 2.0, "failed": 0.0}
	for k, v := range wantLine {
		if line[k] != v {
			t.Errorf("batch finished log line: %s = %v, want %v (line %v)", k, line[k], v, line)
		}
	}
	if tid, _ := line["tenant_id"].(float64); tid <= 0 {
		t.Errorf("batch finished log line: tenant_id %v", line["tenant_id"])
	}
	if l, ok := line["latency_s"].(float64); !ok || l <= 0 || l > time.Since(start).Seconds() {
		t.Errorf("batch finished log line: latency_s %v, want seconds in (0, %v]", line["latency_s"], time.Since(start).Seconds())
	}
	if _, ok := line["latency"]; ok {
		t.Errorf("batch finished log line still has a latency in nanoseconds: %v", line)
	}
	if raw := fmt.Sprint(line); strings.Contains(raw, "union-1") || strings.Contains(raw, "1380000000") || strings.Contains(raw, "crm-4") {
		t.Errorf("batch finished log line shows an identity value: %s", raw)
	}
	if fmt.Sprint(res.MatchedBy) != fmt.Sprint(map[string]int{"unionid": 1, "openid": 1, "phone": 1, "id": 1}) {
		t.Errorf("matchedBy %v", res.MatchedBy)
	}
	if fmt.Sprint(res.ErrorCounts) != fmt.Sprint(map[string]int{"NOT_FOUND": 1, "AMBIGUOUS": 1, "INVALID_PHONE": 1, "NO_GROUPS": 1}) {
		t.Errorf("errorCounts %v", res.ErrorCounts)
	}
	if res.FailureTotal != 4 || len(res.Failures) != 4 {
		t.Fatalf("failures %+v (total %d), want 4", res.Failures, res.FailureTotal)
	}
	wantFailures := []struct {
		index  int
		reason string
	}{{4, "AMBIGUOUS"}, {5, "NOT_FOUND"}, {6, "INVALID_PHONE"}, {7, "NO_GROUPS"}}
	for i, w := range wantFailures {
		if f := res.Failures[i]; f.Index != w.index || f.Reason != w.reason {
			t.Errorf("failure %d = %+v, want index %d reason %s", i, f, w.index, w.reason)
		}
	}
	if f := res.Failures[4-3]; f.ThirdID != "nobody" {
		t.Errorf("failure of record 5 shows thirdId %q, want nobody", f.ThirdID)
	}
	if f := res.Failures[0]; f.Phone != "138****0009" {
		t.Errorf("failure of record 4 shows phone %q, want it masked as 138****0009", f.Phone)
	}
	if res.FinishedAt == nil {
		t.Error("finishedAt is null on a final batch")
	}
	if got := s.members(token, "vip", 2); !equalIDs(got, 1, 2, 3, 4) {
		t.Errorf("vip members %v, want 1 2 3 4", got)
	}
	if got := s.members(token, "new", 1000); !equalIDs(got, 1, 3) {
		t.Errorf("new members %v, want 1 3", got)
	}
	var list groupList
	s.get("/api/open/audience/group/list", token, http.StatusOK, &list)
	if g := list.Data.Groups; len(g) != 2 || g[0].GroupName != "new" || g[0].MemberCount != 2 ||
		g[1].GroupName != "vip" || g[1].MemberCount != 4 || g[1].Category != "未分类" ||
		list.Data.Total != 2 || list.Data.PageNo != 1 || list.Data.PageSize != 100 {
		t.Errorf("group list %+v", list.Data)
	}
	// Paged: one group per page, and a page past the end is empty.
	s.get("/api/open/audience/group/list?pageNo=2&pageSize=1", token, http.StatusOK, &list)
	if g := list.Data.Groups; len(g) != 1 || g[0].GroupName != "vip" || list.Data.Total != 2 {
		t.Errorf("page 2 of 1: %+v", list.Data)
	}
	s.get("/api/open/audience/group/list?pageNo=3&pageSize=1", token, http.StatusOK, &list)
	if len(list.Data.Groups) != 0 || list.Data.Total != 2 {
		t.Errorf("page 3 of 1: %+v", list.Data)
	}
	s.get("/api/open/audience/group/list?pageSize=1001", token, http.StatusBadRequest, nil)
	s.get("/api/open/audience/group/list?pageNo=0", token, http.StatusBadRequest, nil)

	// Delete: customer 1 leaves vip by thirdId (exact); a missing group and a
	// non-member are successful no-ops.
	del := `{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "delete"},
	 "data": [
	  {"identityType": "thirdId", "thirdId": "crm-1", "groups": "vip,never-created"},
	  {"identityType": "phone", "phone": "13800000002", "groups": "new"}
	 ]}`
	id2 := s.postBatch(token, del)
	if id2 <= id {
		t.Fatalf("second batch id %d not after %d", id2, id)
	}
	res = s.waitFinal(token, id2, 10*time.Second)
	if res.Status != "SUCCESS" || res.Success != 2 || res.Processed != 2 || res.MatchedBy["id"] != 1 || res.MatchedBy["phone"] != 1 || res.GroupsCreated != 0 {
		t.Fatalf("delete result %+v", res)
	}
	if got := s.members(token, "vip", 1000); !equalIDs(got, 2, 3, 4) {
		t.Errorf("vip members after delete %v, want 2 3 4", got)
	}
	s.get("/api/open/audience/group/list", token, http.StatusOK, &list)
	if len(list.Data.Groups) != 2 || list.Data.Total != 2 {
		t.Errorf("a delete of an unknown group made it visible: %+v", list.Data)
	}

	// isMatching=false creates customers by thirdId, once.
	create := `{"publicParams": {"isMatching": false, "optType": "add"},
	 "data": [{"thirdId": "new-1", "phone": "13900000001", "groups": "imported"},
	          {"thirdId": "new-1", "groups": "imported"},
	          {"thirdId": "crm-2", "groups": "imported"},
	          {"phone": "13900000002", "groups": "imported"}]}`
	res = s.waitFinal(token, s.postBatch(token, create), 10*time.Second)
	if res.Status != "PARTIAL_SUCCESS" || res.Success != 3 || res.Invalid != 1 || res.ErrorCounts["MISSING_IDENTITY"] != 1 {
		t.Fatalf("isMatching=false result %+v", res)
	}
	got := s.members(token, "imported", 1000)
	if len(got) != 2 || got[0] != 2 || got[1] < 1<<52 {
		t.Errorf("imported members %v, want customer 2 and one created id ≥ 2^52", got)
	}
}

// X-Token, permission and tenant sealing (SPEC §3).
func TestAuthAndTenantSealing(t *testing.T) {
	s := startSystem(t)
	credsA, tokenA := s.app("tenant-a", apps.ScopeGroup)
	_, tokenB := s.app("tenant-b", apps.ScopeGroup)
	_, tokenTag := s.app("tenant-a", "audience.tag")
	body := `{"publicParams": {"isMatching": false, "optType": "add"}, "data": [{"thirdId": "x", "groups": "g"}]}`

	var env envelope
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", "", []byte(body), http.StatusUnauthorized, &env)
	if env.Code != "100200" || string(env.Data) != "null" {
		t.Errorf("no token: %+v", env)
	}
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", "forged", []byte(body), http.StatusUnauthorized, &env)
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", tokenTag, []byte(body), http.StatusForbidden, &env)
	if env.Code != "403" || env.ErrorCode != "PERMISSION_DENIED" {
		t.Errorf("no permission: %+v", env)
	}

	id := s.postBatch(tokenA, body)
	s.waitFinal(tokenA, id, 10*time.Second)
	s.get(fmt.Sprintf("/api/integrate/audience/group/rel/batchResult?batchId=%d", id), tokenB, http.StatusNotFound, &env)
	if env.Code != "404" {
		t.Errorf("other tenant's batch: %+v", env)
	}
	s.get("/api/integrate/audience/group/members?groupName=g", tokenB, http.StatusNotFound, &env)
	var list groupList
	s.get("/api/integrate/audience/group/list", tokenB, http.StatusOK, &list)
	if len(list.Data.Groups) != 0 || list.Data.Total != 0 {
		t.Errorf("tenant b sees groups %+v", list.Data)
	}

	// Wrong credentials, refresh, and disabling.
	s.get("/api/open/app/getOrgAccessToken?instanceAppid="+credsA.AppID+"&instanceSecrect=wrong", "", http.StatusUnauthorized, &env)
	if env.Code != "100100" {
		t.Errorf("wrong secret: %+v", env)
	}
	var tok struct{ Data apps.Tokens }
	s.get("/api/open/app/getOrgAccessToken?instanceAppid="+credsA.AppID+"&instanceSecrect="+credsA.Secret, "", http.StatusOK, &tok)
	var refreshed struct{ Data apps.Tokens }
	s.get("/api/open/app/refreshOrgAccessToken?orgRefreshToken="+tok.Data.Refresh, "", http.StatusOK, &refreshed)
	s.get("/api/integrate/audience/group/list", refreshed.Data.Access, http.StatusOK, nil)
	s.get("/api/open/app/refreshOrgAccessToken?orgRefreshToken="+tok.Data.Refresh, "", http.StatusUnauthorized, &env)
	if env.Code != "100200" {
		t.Errorf("reused refresh token: %+v", env)
	}
	if err := s.apps.Disable(t.Context(), credsA.AppID); err != nil {
		t.Fatal(err)
	}
	s.get("/api/integrate/audience/group/list", tokenA, http.StatusUnauthorized, &env)
	s.get("/api/integrate/audience/group/list", refreshed.Data.Access, http.StatusUnauthorized, &env)
}

// Whole-request rejections answer 400 naming the field, or 413.
func TestRejections(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("acme", apps.ScopeGroup)
	var env envelope
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", token,
		[]byte(`{"publicParams": {"isMatching": true, "matchingType": 2, "optType": "add"}, "data": [{"thirdId": "1"}]}`),
		http.StatusBadRequest, &env)
	if env.Code != "400" || env.ErrorCode != "INVALID_PARAMETER" || env.Msg != "publicParams.identifyWay is required when matchingType=2" || string(env.Data) != "null" {
		t.Errorf("missing identifyWay: %+v", env)
	}
	big := `{"publicParams": {"isMatching": false, "optType": "add"}, "data": [{"thirdId": "` + strings.Repeat("x", 1<<20) + `"}]}`
	s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", token, []byte(big), http.StatusRequestEntityTooLarge, &env)
	if env.Code != "413" || env.ErrorCode != "PAYLOAD_TOO_LARGE" {
		t.Errorf("big body: %+v", env)
	}
	s.get("/api/integrate/audience/group/rel/batchResult?batchId=abc", token, http.StatusBadRequest, &env)
	s.get("/api/integrate/audience/group/rel/batchResult?batchId=1&pageSize=1001", token, http.StatusBadRequest, &env)
	s.get("/api/integrate/audience/group/rel/batchResult?batchId=999999", token, http.StatusNotFound, &env)
}
