package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// startLimitedSystem is startSystem with a --max-groups-per-tenant of
// maxGroups.
func startLimitedSystem(t *testing.T, maxGroups int) *system {
	t.Helper()
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	pool, dbURL := schematest.NewPool(t)
	o := &options{
		brokers: b.Addr(), databaseURL: dbURL, httpAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 4, rateLimit: 1000, rateBurst: 1000, matcherChunk: 500, sinkChunk: 500,
		dbMaxConns: 8, pendingTimeout: 30 * time.Second, maxGroups: maxGroups,
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	base, admin := runStagesOn(t, o, log, false)
	return &system{t: t, base: base, admin: admin, pool: pool, apps: apps.NewStore(pool), opts: o, logs: logs}
}

func jsonText(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// TestLimitsEndToEnd sends records beyond every per-record limit of SPEC §10
// and the tenant's group limit through all stages: each batch ends final
// with those records INVALID for the right reason and the good ones applied.
func TestLimitsEndToEnd(t *testing.T) {
	s := startLimitedSystem(t, 6)
	_, token := s.app("acme", apps.ScopeGroup)
	s.loadDirectory("acme", testDirectory)

	many := make([]string, 101)
	for i := range many {
		many[i] = fmt.Sprintf("m%d", i)
	}
	longThird := strings.Repeat("t", 3000)
	create := `{"publicParams": {"isMatching": false, "optType": "add"}, "data": [
		{"thirdId": ` + jsonText(longThird) + `, "groups": "made"},
		{"thirdId": "lim-1", "unionid": ` + jsonText(strings.Repeat("u", 129)) + `, "groups": "made"},
		{"thirdId": "lim-2", "groups": ` + jsonText(strings.Join(many, ",")) + `},
		{"thirdId": "lim-3", "groups": ` + jsonText("made,\u202Eexe.gpj") + `},
		{"thirdId": "lim-4", "groups": ` + jsonText("ma\u200Bde") + `},
		{"thirdId": "lim-5", "groups": "made"},
		{"thirdId": "lim-6", "phone": ` + jsonText("+86 138 0000 0000"+strings.Repeat(" ", 16)) + `, "groups": "made"},
		{"thirdId": ` + jsonText(strings.Repeat("t", 128)) + `, "unionid": ` + jsonText(strings.Repeat("u", 128)) + `, "groups": "made"}]}`
	id := s.postBatch(token, create)
	res := s.waitFinal(token, id, 20*time.Second)
	wantCounts := map[string]int{"VALUE_TOO_LONG": 3, "TOO_MANY_GROUPS": 1, "GROUP_NAME_INVALID": 2}
	if res.Status != "PARTIAL_SUCCESS" || res.Processed != 8 || res.Success != 2 || res.Invalid != 6 || res.Failed != 0 ||
		!maps.Equal(res.ErrorCounts, wantCounts) || res.GroupsCreated != 1 {
		t.Fatalf("isMatching=false batch: %+v", res)
	}
	reasons := map[int]string{}
	for _, f := range res.Failures {
		reasons[f.Index] = f.Reason
		if len(f.ThirdID) > 128 {
			t.Errorf("failure %d shows a thirdId of %d bytes", f.Index, len(f.ThirdID))
		}
	}
	want := map[int]string{0: "VALUE_TOO_LONG", 1: "VALUE_TOO_LONG", 2: "TOO_MANY_GROUPS", 3: "GROUP_NAME_INVALID",
		4: "GROUP_NAME_INVALID", 6: "VALUE_TOO_LONG"}
	if !maps.Equal(reasons, want) {
		t.Errorf("failures %v, want %v", reasons, want)
	}
	// The over-long values created no customer; the good records did.
	var created, long int
	if err := s.pool.QueryRow(t.Context(), `SELECT count(*), count(*) FILTER (WHERE length(third_id) > 128)
		FROM customers WHERE third_id LIKE 'lim-%' OR third_id LIKE 'ttt%'`).Scan(&created, &long); err != nil {
		t.Fatal(err)
	}
	if created != 2 || long != 0 {
		t.Errorf("%d customers created (want 2: lim-5 and the 128-character thirdId), %d with a thirdId over 128", created, long)
	}
	if got := s.members(token, "made", 100); len(got) != 2 {
		t.Errorf("members of made %v, want 2", got)
	}

	// Fuzzy: an over-long unionid is not skipped in favour of a good phone.
	fuzzy := `{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 1, "optType": "add"}, "data": [
		{"unionid": ` + jsonText(strings.Repeat("u", 129)) + `, "phone": "13800000001", "groups": "made"},
		{"unionid": "union-1", "groups": "made"}]}`
	res = s.waitFinal(token, s.postBatch(token, fuzzy), 20*time.Second)
	if res.Status != "PARTIAL_SUCCESS" || res.Success != 1 || res.Invalid != 1 || res.ErrorCounts["VALUE_TOO_LONG"] != 1 {
		t.Fatalf("fuzzy batch: %+v", res)
	}

	// Group limit: the tenant has 1 group ("made") of 6. All records name
	// crm-1, so they meet in one matcher and one sink partition and are
	// judged in order: 2 + 3 new groups fit, a sixth new one does not,
	// existing ones always do.
	limit := `{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "add"}, "data": [
		{"identityType": "id", "thirdId": "crm-1", "groups": "g1,g2"},
		{"identityType": "id", "thirdId": "crm-1", "groups": "g3,g4,g5"},
		{"identityType": "id", "thirdId": "crm-1", "groups": "g6,g1"},
		{"identityType": "id", "thirdId": "crm-1", "groups": "made,g5"}]}`
	res = s.waitFinal(token, s.postBatch(token, limit), 20*time.Second)
	if res.Status != "PARTIAL_SUCCESS" || res.Processed != 4 || res.Success != 3 || res.Invalid != 1 ||
		!maps.Equal(res.ErrorCounts, map[string]int{"GROUP_LIMIT": 1}) || res.GroupsCreated != 5 ||
		len(res.Failures) != 1 || res.Failures[0].Index != 2 || res.Failures[0].Reason != "GROUP_LIMIT" {
		t.Fatalf("group limit batch: %+v", res)
	}
	var list groupList
	s.get("/api/integrate/audience/group/list?pageSize=1000", token, http.StatusOK, &list)
	var names []string
	for _, g := range list.Data.Groups {
		names = append(names, g.GroupName)
	}
	if want := []string{"g1", "g2", "g3", "g4", "g5", "made"}; list.Data.Total != 6 || !slices.Equal(names, want) {
		t.Errorf("groups after the limit: total %d, %v; want %v", list.Data.Total, names, want)
	}
}
