package main

// Deferred matching (SPEC §13) end to end. The re-matcher's half (the
// directory topic, its writers and the re-matcher) is tested here against
// pending bindings inserted as the sink stores them; the whole feature,
// with the sink's half (bindings stored from deferred NOT_FOUND verdicts,
// late verdicts applied through the ledger), by TestDeferredMatchingEndToEnd,
// which skips until that half is in the build.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// storedBinding is a pending binding as the sink stores it (migration
// 0008): a pending_bindings row and its pending_identities rows.
type storedBinding struct {
	batch   int64
	index   int
	op      pipeline.OptType
	pending pipeline.Pending
	expired bool
}

// storeBindings inserts bindings of tenant directly, and their batches as
// PROCESSING (so that the sink knows them).
func storeBindings(t *testing.T, pool *pgxpool.Pool, tenant int64, bs []storedBinding) {
	t.Helper()
	ctx := context.Background()
	var batches, bb, ib []int64
	var bi, ii []int32
	var bo, bp, ik, iv []string
	var bexp []bool
	for _, b := range bs {
		raw, err := json.Marshal(b.pending)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(batches, b.batch) {
			batches = append(batches, b.batch)
		}
		bb, bi, bo, bp, bexp = append(bb, b.batch), append(bi, int32(b.index)), append(bo, string(b.op)), append(bp, string(raw)), append(bexp, b.expired)
		for k, v := range b.pending.Identities {
			ib, ii, ik, iv = append(ib, b.batch), append(ii, int32(b.index)), append(ik, string(k)), append(iv, v)
		}
	}
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, aborted, total)
			SELECT id, $2, 'app', 'add', '{}', 'PROCESSING', false, 500 FROM unnest($1::bigint[]) AS id`, []any{batches, tenant}},
		{`INSERT INTO pending_bindings (tenant_id, batch_id, rec_index, opt_type, pending, expires_at)
			SELECT $1, b, i, o, p::jsonb, CASE WHEN x THEN now() - interval '1 minute' ELSE now() + interval '1 day' END
			FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::bool[]) AS s(b, i, o, p, x)`, []any{tenant, bb, bi, bo, bp, bexp}},
		{`INSERT INTO pending_identities (tenant_id, kind, value, batch_id, rec_index)
			SELECT $1, k, v, b, i FROM unnest($2::text[], $3::text[], $4::bigint[], $5::int[]) AS s(k, v, b, i)`, []any{tenant, ik, iv, ib, ii}},
	} {
		if _, err := pool.Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("store bindings: %v", err)
		}
	}
}

func exactBinding(kind pipeline.IdentityKind, value string, groups ...string) pipeline.Pending {
	return pipeline.Pending{Identities: map[pipeline.IdentityKind]string{kind: value}, IdentityType: kind, Groups: groups,
		Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd, DeferUnmatched: true}}
}

// lateVerdicts reads the resolved topic's late verdicts, by position.
func lateVerdicts(t *testing.T, brokers []string, topic string) map[[2]int64][]pipeline.ResolvedMessage {
	t.Helper()
	out := map[[2]int64][]pipeline.ResolvedMessage{}
	for _, m := range readTopic(t, brokers, topic) {
		r, err := pipeline.DecodeResolved(m.Value)
		if err != nil || !r.Late {
			continue
		}
		if string(m.Key) != string(pipeline.ResolvedKey(r)) {
			t.Errorf("late verdict keyed %q, want %q", m.Key, pipeline.ResolvedKey(r))
		}
		k := [2]int64{r.BatchID, int64(r.Index)}
		out[k] = append(out[k], r)
	}
	return out
}

// directoryLoad runs `groupmatch directory load` in this process against
// the system's Kafka and database, publishing.
func (s *system) directoryLoad(tenant, lines string, extra ...string) {
	s.t.Helper()
	path := filepath.Join(s.t.TempDir(), "directory.jsonl")
	if err := os.WriteFile(path, []byte(lines), 0o600); err != nil {
		s.t.Fatal(err)
	}
	var out strings.Builder
	args := append([]string{"directory", "load", "--tenant", tenant, "--database-url", s.opts.databaseURL,
		"--kafka-brokers", s.opts.brokers, "--topic-prefix", s.opts.topicPrefix}, extra...)
	if err := run(context.Background(), append(args, path), &out, &out); err != nil {
		s.t.Fatalf("directory load: %v\n%s", err, out.String())
	}
}

// The re-matcher's half, running now: bindings stored as the sink stores
// them are matched late when `directory load` learns their customers
// (publishing after each chunk) and when an isMatching=false import
// creates one; an ambiguous, an expired and a still unknown binding get no
// verdict. Directory messages validate against their schema and are keyed
// without values.
func TestRematcherLateVerdicts(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("late", apps.ScopeGroup)
	ctx := context.Background()
	tenant, err := s.apps.EnsureTenant(ctx, "late")
	if err != nil {
		t.Fatal(err)
	}
	fuzzyThird := pipeline.Pending{Identities: map[pipeline.IdentityKind]string{pipeline.KindThirdID: "crm-new", pipeline.KindPhone: "13900000077"},
		Groups: []string{"g3"}, Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy,
			IdentifyWay: pipeline.IdentifyThirdIDFirst, OptType: pipeline.OptDelete, DeferUnmatched: true}}
	storeBindings(t, s.pool, tenant, []storedBinding{
		{batch: 900001, index: 0, op: pipeline.OptAdd, pending: exactBinding(pipeline.KindPhone, "13900000002", "g1")},
		{batch: 900001, index: 1, op: pipeline.OptAdd, pending: exactBinding(pipeline.KindPhone, "13900000009", "g1")}, // two customers
		{batch: 900001, index: 2, op: pipeline.OptAdd, pending: exactBinding(pipeline.KindUnionID, "u-3", "g2"), expired: true},
		{batch: 900001, index: 3, op: pipeline.OptAdd, pending: exactBinding(pipeline.KindPhone, "13900000404", "g4")}, // nobody
		{batch: 900002, index: 0, op: pipeline.OptDelete, pending: fuzzyThird},
	})

	s.directoryLoad("late", `{"customerId": 2, "thirdId": "crm-2", "phones": ["+86 139 0000 0002"]}
{"customerId": 3, "unionid": "u-3", "phones": ["13900000009"]}
{"customerId": 4, "phones": ["13900000009"]}
`)
	id := s.postBatch(token, `{"publicParams": {"isMatching": false, "optType": "add"}, "data": [{"thirdId": "crm-new", "groups": "g5"}]}`)
	if res := s.waitFinal(token, id, 15*time.Second); res.Success != 1 {
		t.Fatalf("import: %+v", res)
	}
	var created int64
	if err := s.pool.QueryRow(ctx, `SELECT customer_id FROM customers WHERE tenant_id = $1 AND third_id = 'crm-new'`, tenant).Scan(&created); err != nil {
		t.Fatal(err)
	}

	brokers := []string{s.opts.brokers}
	want := map[[2]int64]string{
		{900001, 0}: "add phone→2 [g1]",
		{900002, 0}: fmt.Sprintf("delete id→%d [g3]", created),
	}
	var got map[[2]int64][]pipeline.ResolvedMessage
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		got = lateVerdicts(t, brokers, s.topic("resolved"))
		if len(got) >= len(want) || time.Now().After(deadline) {
			break
		}
	}
	for k, vs := range got {
		for _, v := range vs {
			desc := fmt.Sprintf("%s %s→%d %v", v.OptType, v.MatchedBy, v.CustomerID, v.Groups)
			if want[k] != desc || v.TenantID != tenant || v.Outcome != pipeline.OutcomeMatched {
				t.Errorf("late verdict at %v: %s, want %q", k, desc, want[k])
			}
		}
	}
	for k := range want {
		if len(got[k]) == 0 {
			t.Errorf("no late verdict at %v (want %s)", k, want[k])
		}
	}

	// The directory topic: identity messages of the load and the import,
	// valid, keyed by hash.
	c := schematest.MustContracts(t)
	seen := map[string]bool{}
	for _, m := range readTopic(t, brokers, s.topic("directory")) {
		if err := c.Validate(schemas.Directory, m.Value); err != nil {
			t.Errorf("directory message %s: %v", m.Value, err)
		}
		d, err := pipeline.DecodeDirectory(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Key) != string(pipeline.DirectoryKey(d)) || strings.Contains(string(m.Key), d.Value) {
			t.Errorf("directory message keyed %q", m.Key)
		}
		seen[fmt.Sprintf("%s/%s/%d", d.Kind, d.Value, d.CustomerID)] = true
	}
	for _, w := range []string{"phone/13900000002/2", "id/crm-2/2", "unionid/u-3/3", "phone/13900000009/3", "phone/13900000009/4",
		fmt.Sprintf("id/crm-new/%d", created)} {
		if !seen[w] {
			t.Errorf("directory topic lacks %s; has %v", w, seen)
		}
	}
	body := scrape(t, s.admin)
	for _, w := range []string{`groupmatch_rematcher_late_matches_total{matched_by="phone",stage="rematcher"}`, "groupmatch_pending_bindings",
		`groupmatch_kafka_consumer_lag_messages{group="` + s.opts.groupID(rematcher) + `"`} {
		if !strings.Contains(body, w) {
			t.Errorf("scrape lacks %s", w)
		}
	}
	for _, v := range []string{"13900000002", "crm-new", "u-3"} {
		if strings.Contains(body, v) || strings.Contains(s.logs.String(), v) {
			t.Errorf("an identity value %q is in the metrics or logs", v)
		}
	}
}

// A load with --publish=false needs no Kafka.
func TestDirectoryLoadWithoutPublishing(t *testing.T) {
	_, dbURL := schematest.NewPool(t)
	path := filepath.Join(t.TempDir(), "d.jsonl")
	if err := os.WriteFile(path, []byte(`{"customerId": 1, "phones": ["13800000001"]}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err := run(context.Background(), []string{"directory", "load", "--tenant", "t", "--database-url", dbURL,
		"--kafka-brokers", "127.0.0.1:1", "--publish=false", path}, &out, &out)
	if err != nil || !strings.Contains(out.String(), "loaded 1 customers") {
		t.Fatalf("load without publishing: %v\n%s", err, out.String())
	}
	out.Reset()
	err = run(context.Background(), []string{"directory", "load", "--tenant", "t", "--database-url", dbURL,
		"--kafka-brokers", "127.0.0.1:1", path}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "--publish=false") {
		t.Fatalf("load publishing to no Kafka: %v, want an error naming --publish=false", err)
	}
}

// SIGKILL of the matcher process (and with it the re-matcher) while it
// works through a directory load's messages loses no late verdict: every
// binding gets its verdict, with the right customer, once the process is
// back; a redelivered chunk writes some verdicts again, which the sink's
// ledger applies once (that half is the sink's, E1).
func TestRematcherSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	pool, dbURL := schematest.NewPool(t)
	c := startClusterOn(t, dbURL, "", "MATCHER_CHUNK=50")
	ctx := context.Background()
	tenant, err := apps.NewStore(pool).EnsureTenant(ctx, "kill")
	if err != nil {
		t.Fatal(err)
	}
	const n = 20000
	var bs []storedBinding
	var lines strings.Builder
	for i := range n {
		phone := fmt.Sprintf("139%08d", i)
		bs = append(bs, storedBinding{batch: int64(800000 + i/500), index: i % 500, op: pipeline.OptAdd, pending: exactBinding(pipeline.KindPhone, phone, "g")})
		fmt.Fprintf(&lines, `{"customerId": %d, "phones": [%q]}`+"\n", i+1, phone)
	}
	storeBindings(t, pool, tenant, bs)
	runProc(t, c.env, strings.NewReader(lines.String()), "directory", "load", "--tenant", "kill", "-")

	brokers := []string{c.brokers}
	// Kill once some verdicts are out, then start again.
	var before int
	for deadline := time.Now().Add(60 * time.Second); before == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no late verdict within 60 s")
		}
		before = len(lateVerdicts(t, brokers, c.topic("resolved")))
	}
	c.matcher.kill()
	t.Logf("killed the matcher (SIGKILL) with %d of %d bindings' verdicts out", before, n)
	c.matcher = c.start(t, "matcher")
	c.matcher.waitFor(adminAddrRE, 30*time.Second)

	var got map[[2]int64][]pipeline.ResolvedMessage
	for deadline := time.Now().Add(120 * time.Second); ; time.Sleep(time.Second) {
		got = lateVerdicts(t, brokers, c.topic("resolved"))
		if len(got) >= n || time.Now().After(deadline) {
			break
		}
	}
	dups := 0
	for i := range n {
		k := [2]int64{int64(800000 + i/500), int64(i % 500)}
		if len(got[k]) == 0 {
			t.Fatalf("binding %v lost: %d of %d have verdicts", k, len(got), n)
		}
		dups += len(got[k]) - 1
		for _, v := range got[k] {
			if v.CustomerID != int64(i+1) || v.MatchedBy != pipeline.KindPhone || v.OptType != pipeline.OptAdd {
				t.Fatalf("binding %v: verdict %+v", k, v)
			}
		}
	}
	t.Logf("%d bindings matched late, %d verdicts written again after the kill", n, dups)
}

// The whole of deferred matching (needs the sink's half, E1): groups
// naming unknown people are imported with deferUnmatched; the directory is
// loaded later and a customer is created by an isMatching=false import;
// memberships then equal the serial reference with the late matches
// applied at their records' positions — a later delete wins over a late
// add of the same person.
func TestDeferredMatchingEndToEnd(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("defer", apps.ScopeGroup)
	s.loadDirectory("defer", `{"customerId": 1, "thirdId": "crm-1", "phones": ["13800000001"]}`)
	ctx := context.Background()
	tenant, err := s.apps.EnsureTenant(ctx, "defer")
	if err != nil {
		t.Fatal(err)
	}

	a := s.postBatch(token, `{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 1, "optType": "add", "deferUnmatched": true},
	 "data": [
	  {"phone": "139 0000 0002", "groups": "g1"},
	  {"unionid": "u-3", "groups": "g1,g2"},
	  {"phone": "13800000001", "groups": "g1"},
	  {"thirdId": "crm-new", "groups": "g3"}
	 ]}`)
	b := s.postBatch(token, `{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "delete", "deferUnmatched": true},
	 "data": [{"identityType": "phone", "phone": "13900000002", "groups": "g1"}]}`)
	cb := s.postBatch(token, `{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "add", "deferUnmatched": true},
	 "data": [{"identityType": "phone", "phone": "13900000404", "groups": "g4"}]}`)
	for _, id := range []int64{a, b, cb} {
		s.waitFinal(token, id, 15*time.Second)
	}
	var stored int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pending_bindings WHERE tenant_id = $1`, tenant).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if stored != 5 {
		t.Fatalf("%d pending bindings, want 5", stored)
	}

	s.directoryLoad("defer", `{"customerId": 2, "phones": ["13900000002"]}
{"customerId": 3, "unionid": "u-3"}
`)
	d := s.postBatch(token, `{"publicParams": {"isMatching": false, "optType": "add"}, "data": [{"thirdId": "crm-new", "groups": "g5"}]}`)
	s.waitFinal(token, d, 15*time.Second)
	var created int64
	if err := s.pool.QueryRow(ctx, `SELECT customer_id FROM customers WHERE tenant_id = $1 AND third_id = 'crm-new'`, tenant).Scan(&created); err != nil {
		t.Fatal(err)
	}

	// The serial reference against the final directory: A adds 2, 3, 1 to
	// g1 (3 also to g2) and X to g3; B, later, deletes 2 from g1; C's
	// person stays unknown; D adds X to g5.
	want := map[string][]int64{"g1": {1, 3}, "g2": {3}, "g3": {created}, "g5": {created}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		ok := true
		for g, w := range want {
			// A group a late add creates does not exist (404) until
			// that add lands.
			var visible bool
			if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM groups WHERE tenant_id = $1 AND name = $2 AND visible)`, tenant, g).Scan(&visible); err != nil {
				t.Fatal(err)
			}
			if !visible {
				ok = false
				continue
			}
			got := s.members(token, g, 100)
			slices.Sort(got)
			ok = ok && equalIDs(got, w...)
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			for g, w := range want {
				t.Errorf("group %s: members %v, want %v", g, s.members(token, g, 100), w)
			}
			t.FailNow()
		}
	}
	// Results keep their first counters and add the late matches.
	for id, late := range map[int64]float64{a: 3, b: 1, cb: 0} {
		var env struct{ Data map[string]any }
		s.get(fmt.Sprintf("/api/integrate/audience/group/rel/batchResult?batchId=%d", id), token, http.StatusOK, &env)
		got, ok := env.Data["lateMatched"].(float64)
		if !ok {
			t.Errorf("batch %d: no lateMatched in %v", id, env.Data)
		}
		if got != late {
			t.Errorf("batch %d: lateMatched %v, want %v (%v)", id, env.Data["lateMatched"], late, env.Data)
		}
	}
	var left int
	if err := s.pool.QueryRow(ctx, `SELECT count(*) FROM pending_bindings WHERE tenant_id = $1`, tenant).Scan(&left); err != nil || left != 1 {
		t.Errorf("%d pending bindings left (%v), want 1 (batch C's)", left, err)
	}
}
