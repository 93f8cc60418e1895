package matcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// fixtureBinding is a pending binding as the sink stores it (migration
// 0008): its row in pending_bindings, and one pending_identities row per
// identity of its Pending.
type fixtureBinding struct {
	tenant, batch int64
	index         int
	op            pipeline.OptType
	pending       pipeline.Pending
	raw           string        // stored instead of pending's JSON when set
	ttl           time.Duration // default an hour; negative: expired
}

// insertPending writes the bindings directly, as the sink would, in one
// round trip of array inserts.
func insertPending(tb testing.TB, db *pgxpool.Pool, bs ...fixtureBinding) {
	tb.Helper()
	var bt, bb, ie, ib, bx []int64
	var bi, ii []int32
	var bo, bp, ik, iv []string
	for _, b := range bs {
		raw := b.raw
		if raw == "" {
			j, err := json.Marshal(b.pending)
			if err != nil {
				tb.Fatal(err)
			}
			raw = string(j)
		}
		ttl := b.ttl
		if ttl == 0 {
			ttl = time.Hour
		}
		bt, bb, bi, bo, bp = append(bt, b.tenant), append(bb, b.batch), append(bi, int32(b.index)), append(bo, string(b.op)), append(bp, raw)
		bx = append(bx, int64(ttl/time.Millisecond))
		for k, v := range b.pending.Identities {
			ie, ib, ii = append(ie, b.tenant), append(ib, b.batch), append(ii, int32(b.index))
			ik, iv = append(ik, string(k)), append(iv, v)
		}
	}
	ctx := context.Background()
	if _, err := db.Exec(ctx, `
		INSERT INTO pending_bindings (tenant_id, batch_id, rec_index, opt_type, pending, expires_at)
		SELECT t, b, i, o, p::jsonb, now() + x * interval '1 millisecond'
		FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::text[], $5::text[], $6::bigint[]) AS s(t, b, i, o, p, x)`,
		bt, bb, bi, bo, bp, bx); err != nil {
		tb.Fatalf("pending_bindings: %v", err)
	}
	if _, err := db.Exec(ctx, `
		INSERT INTO pending_identities (tenant_id, kind, value, batch_id, rec_index)
		SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[], $5::int[])`,
		ie, ik, iv, ib, ii); err != nil {
		tb.Fatalf("pending_identities: %v", err)
	}
}

func exactPending(kind pipeline.IdentityKind, value string, app ...string) pipeline.Pending {
	p := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd, DeferUnmatched: true}
	if len(app) == 2 {
		p.AppType, p.AppID = app[0], app[1]
	}
	return pipeline.Pending{Identities: map[pipeline.IdentityKind]string{kind: value}, IdentityType: kind, Params: p, Groups: []string{"vip"}}
}

func fuzzyPending(way int, ids map[pipeline.IdentityKind]string, groups ...string) pipeline.Pending {
	return pipeline.Pending{Identities: ids, Groups: groups,
		Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: way, OptType: pipeline.OptDelete, DeferUnmatched: true}}
}

// PendingFor finds, in one query per tenant, exactly the unexpired
// bindings waiting for the identities asked about, each once, and
// reports an undecodable binding without failing the others.
func TestPendingForQuery(t *testing.T) {
	db, _ := schematest.NewPool(t)
	a, b := ensureTenant(t, db, "a"), ensureTenant(t, db, "b")
	insertPending(t, db,
		fixtureBinding{tenant: a, batch: 1, index: 0, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000001")},
		fixtureBinding{tenant: a, batch: 1, index: 1, op: pipeline.OptDelete, pending: fuzzyPending(pipeline.IdentifyUnionIDFirst,
			map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000001", pipeline.KindUnionID: "u1"}, "g1", "g2")},
		fixtureBinding{tenant: a, batch: 2, index: 0, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000001"), ttl: -time.Minute},
		fixtureBinding{tenant: a, batch: 2, index: 1, op: pipeline.OptAdd, pending: exactPending(pipeline.KindOpenID, "oA")},
		fixtureBinding{tenant: b, batch: 3, index: 0, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000001")},
		fixtureBinding{tenant: a, batch: 4, index: 7, op: pipeline.OptAdd, pending: exactPending(pipeline.KindThirdID, "crm-x"), raw: `{"identities": 5}`},
	)
	store := NewPGStore(db)
	ctx := context.Background()
	got, err := store.PendingFor(ctx, []directory.Key{
		{TenantID: a, Kind: pipeline.KindPhone, Value: "13800000001"},
		{TenantID: a, Kind: pipeline.KindUnionID, Value: "u1"}, // the same binding again
		{TenantID: a, Kind: pipeline.KindPhone, Value: "13800000001"},
		{TenantID: a, Kind: pipeline.KindOpenID, Value: "13800000001"}, // another kind: nobody
		{TenantID: a, Kind: pipeline.KindThirdID, Value: "crm-x"},
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, pb := range got {
		name := fmt.Sprintf("%d/%d/%d/%s", pb.TenantID, pb.BatchID, pb.Index, pb.OptType)
		if pb.Err != nil {
			name += " undecodable"
			if strings.Contains(pb.Err.Error(), "crm-x") {
				t.Errorf("error quotes a value: %v", pb.Err)
			}
		}
		names = append(names, name)
	}
	slices.Sort(names)
	want := []string{fmt.Sprintf("%d/1/0/add", a), fmt.Sprintf("%d/1/1/delete", a), fmt.Sprintf("%d/4/7/add undecodable", a)}
	if !slices.Equal(names, want) {
		t.Fatalf("bindings %q, want %q", names, want)
	}
	for _, pb := range got {
		if pb.BatchID == 1 && pb.Index == 1 {
			if !slices.Equal(pb.Pending.Groups, []string{"g1", "g2"}) || pb.Pending.Identities[pipeline.KindUnionID] != "u1" ||
				pb.Pending.Params.IdentifyWay != pipeline.IdentifyUnionIDFirst {
				t.Errorf("binding read back as %+v", pb.Pending)
			}
		}
	}
	// Tenant b's binding, and nothing for an empty list.
	got, err = store.PendingFor(ctx, []directory.Key{{TenantID: b, Kind: pipeline.KindPhone, Value: "13800000001"}})
	if err != nil || len(got) != 1 || got[0].BatchID != 3 {
		t.Fatalf("tenant b: %+v, %v", got, err)
	}
	if got, err := store.PendingFor(ctx, nil); err != nil || len(got) != 0 {
		t.Fatalf("no keys: %+v, %v", got, err)
	}
}

// The re-matcher's query probes the indexes: the identities by
// pending_identities' primary key, the bindings by pending_bindings'.
func TestPendingForUsesIndexes(t *testing.T) {
	db, _ := schematest.NewPool(t)
	schematest.SkipOnCitus(t, db, "plan shapes differ on Citus")
	a := ensureTenant(t, db, "a")
	var bs []fixtureBinding
	for i := range 3000 {
		bs = append(bs, fixtureBinding{tenant: a, batch: int64(i/500 + 1), index: i % 500, op: pipeline.OptAdd,
			pending: exactPending(pipeline.KindPhone, fmt.Sprintf("138%08d", i))})
	}
	insertPending(t, db, bs...)
	ctx := context.Background()
	if _, err := db.Exec(ctx, `ANALYZE pending_bindings, pending_identities`); err != nil {
		t.Fatal(err)
	}
	rows, err := db.Query(ctx, "EXPLAIN "+pendingForSQL, a, []string{"phone", "phone"}, []string{"13800000001", "13800000002"})
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
	for rows.Next() {
		var l string
		if err := rows.Scan(&l); err != nil {
			t.Fatal(err)
		}
		plan = append(plan, l)
	}
	text := strings.Join(plan, "\n")
	if strings.Contains(text, "Seq Scan on pending") || !strings.Contains(text, "pending_identities_pkey") || !strings.Contains(text, "pending_bindings_pkey") {
		t.Fatalf("plan does not probe the indexes:\n%s", text)
	}
}

// fakeRematchStore answers from maps and counts calls, for the batching
// and failure tests.
type fakeRematchStore struct {
	bindings    []PendingBinding
	dir         map[directory.Key][]identity.Binding
	pendingCall int
	lookupCall  int
	lookupErr   error
	pendingErr  func(keys []directory.Key) error
}

func (f *fakeRematchStore) PendingFor(_ context.Context, keys []directory.Key) ([]PendingBinding, error) {
	f.pendingCall++
	if f.pendingErr != nil {
		if err := f.pendingErr(keys); err != nil {
			return nil, err
		}
	}
	var out []PendingBinding
	for _, b := range f.bindings {
		for _, k := range keys {
			if k.TenantID == b.TenantID && b.Pending.Identities[k.Kind] == k.Value {
				out = append(out, b)
				break
			}
		}
	}
	return out, nil
}

func (f *fakeRematchStore) Lookup(_ context.Context, keys []directory.Key) (*directory.Hits, error) {
	f.lookupCall++
	if f.lookupErr != nil {
		return nil, f.lookupErr
	}
	out := map[directory.Key][]identity.Binding{}
	for _, k := range keys {
		if bs, ok := f.dir[k]; ok {
			out[k] = bs
		}
	}
	return directory.HitsOf(out), nil
}

var direct = func(op func() error) error { return op() }

// Rematch resolves by SPEC §5 against the directory as it is now: exact
// with and without an application filter, fuzzy by priority order with
// conflicts, ambiguity keeping a binding pending; one PendingFor and one
// Lookup per chunk; the late verdict carries the binding's op, groups and
// position.
func TestRematchResolves(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	a := ensureTenant(t, db, "a")
	// Two customers share phone 13800000009; customer 2's openid oB is
	// bound through wx2 only.
	lines := strings.Join([]string{
		`{"customerId": 1, "thirdId": "crm-1", "unionid": "u1", "phones": ["13800000001", "13800000009"]}`,
		`{"customerId": 2, "thirdId": "crm-2", "phones": ["13800000009"], "openids": [{"openid": "oB", "appType": "gzh", "appId": "wx2"}]}`,
		`{"customerId": 3, "thirdId": "crm-3", "phones": [{"phone": "13800000003", "appType": "gzh", "appId": "wx1"}]}`,
	}, "\n")
	if _, err := directory.NewLoader(db).Load(ctx, a, strings.NewReader(lines)); err != nil {
		t.Fatal(err)
	}
	type bk = map[pipeline.IdentityKind]string
	bindings := []fixtureBinding{
		{tenant: a, batch: 10, index: 0, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000001")},               // → 1 by phone
		{tenant: a, batch: 10, index: 1, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000009")},               // ambiguous: stays
		{tenant: a, batch: 10, index: 2, op: pipeline.OptAdd, pending: exactPending(pipeline.KindOpenID, "oB", "gzh", "wx1")},         // wrong app: stays
		{tenant: a, batch: 10, index: 3, op: pipeline.OptAdd, pending: exactPending(pipeline.KindOpenID, "oB", "GZH", "wx2")},         // → 2 by openid
		{tenant: a, batch: 10, index: 4, op: pipeline.OptAdd, pending: exactPending(pipeline.KindPhone, "13800000003", "gzh", "wx1")}, // → 3
		{tenant: a, batch: 11, index: 0, op: pipeline.OptDelete, pending: fuzzyPending(pipeline.IdentifyUnionIDFirst,
			bk{pipeline.KindPhone: "13800000009", pipeline.KindThirdID: "crm-2"}, "x")}, // phone ambiguous, skipped: id wins, conflict
		{tenant: a, batch: 11, index: 1, op: pipeline.OptDelete, pending: fuzzyPending(pipeline.IdentifyThirdIDFirst,
			bk{pipeline.KindThirdID: "crm-1", pipeline.KindOpenID: "oB"}, "y")}, // id → 1; lower openid → 2: conflict
		{tenant: a, batch: 11, index: 2, op: pipeline.OptAdd, pending: fuzzyPending(pipeline.IdentifyUnionIDFirst,
			bk{pipeline.KindUnionID: "u-nobody", pipeline.KindPhone: "13800000777"}, "z")}, // still not found
	}
	insertPending(t, db, bindings...)
	store := NewPGStore(db)
	msgs := []pipeline.DirectoryMessage{
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindPhone, Value: "13800000001", CustomerID: 1},
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindPhone, Value: "13800000009", CustomerID: 2},
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindOpenID, Value: "oB", CustomerID: 2},
		{Type: pipeline.DirectoryRecheck, TenantID: a, Kind: pipeline.KindPhone, Value: "13800000003"},
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindThirdID, Value: "crm-1", CustomerID: 1},
		{Type: pipeline.DirectoryRecheck, TenantID: a, Kind: pipeline.KindUnionID, Value: "u-nobody"},
	}
	late, st, err := Rematch(ctx, store, msgs, direct)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range late {
		if !v.Late || v.Outcome != pipeline.OutcomeMatched || v.V != pipeline.Version || v.TenantID != a || v.Ref != nil || v.Pending != nil {
			t.Errorf("verdict %+v", v)
		}
		got = append(got, fmt.Sprintf("%d/%d %s %s→%d conflict=%v %q", v.BatchID, v.Index, v.OptType, v.MatchedBy, v.CustomerID, v.Conflict, v.Groups))
	}
	slices.Sort(got)
	want := []string{
		`10/0 add phone→1 conflict=false ["vip"]`,
		`10/3 add openid→2 conflict=false ["vip"]`,
		`10/4 add phone→3 conflict=false ["vip"]`,
		`11/0 delete id→2 conflict=true ["x"]`,
		`11/1 delete id→1 conflict=true ["y"]`,
	}
	if !slices.Equal(got, want) {
		t.Fatalf("late verdicts\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st.Rechecked[pipeline.OutcomeMatched] != 5 || st.Rechecked[pipeline.OutcomeAmbiguous] != 1 || st.Rechecked[pipeline.OutcomeNotFound] != 2 {
		t.Errorf("stats %+v", st.Rechecked)
	}
	// Late verdicts validate as resolved messages the sink decodes.
	for _, v := range late {
		b, err := pipeline.EncodeResolved(v)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pipeline.DecodeResolved(b); err != nil {
			t.Fatalf("late verdict does not decode: %v", err)
		}
	}
}

// One chunk costs one PendingFor and one Lookup, however many messages
// and bindings; a store error fails the chunk; a chunk naming nobody
// costs no Lookup.
func TestRematchBatches(t *testing.T) {
	f := &fakeRematchStore{dir: map[directory.Key][]identity.Binding{}}
	var msgs []pipeline.DirectoryMessage
	for i := range 500 {
		v := fmt.Sprintf("1380000%04d", i)
		f.bindings = append(f.bindings, PendingBinding{TenantID: 1 + int64(i%3), BatchID: 5, Index: i, OptType: pipeline.OptAdd,
			Pending: exactPending(pipeline.KindPhone, v)})
		f.dir[directory.Key{TenantID: 1 + int64(i%3), Kind: pipeline.KindPhone, Value: v}] = []identity.Binding{{CustomerID: int64(i + 1)}}
		msgs = append(msgs, pipeline.DirectoryMessage{Type: pipeline.DirectoryIdentity, TenantID: 1 + int64(i%3), Kind: pipeline.KindPhone, Value: v, CustomerID: int64(i + 1)})
	}
	late, _, err := Rematch(context.Background(), f, append(msgs, msgs...), direct)
	if err != nil || len(late) != 500 || f.pendingCall != 1 || f.lookupCall != 1 {
		t.Fatalf("%d verdicts, %v, %d PendingFor, %d Lookup", len(late), err, f.pendingCall, f.lookupCall)
	}
	f.pendingCall, f.lookupCall = 0, 0
	late, _, err = Rematch(context.Background(), f, []pipeline.DirectoryMessage{{Type: pipeline.DirectoryRecheck, TenantID: 1, Kind: pipeline.KindOpenID, Value: "nobody"}}, direct)
	if err != nil || len(late) != 0 || f.pendingCall != 1 || f.lookupCall != 0 {
		t.Fatalf("nobody waiting: %d verdicts, %v, %d PendingFor, %d Lookup", len(late), err, f.pendingCall, f.lookupCall)
	}
	boom := errors.New("boom")
	f.lookupErr = boom
	if _, _, err := Rematch(context.Background(), f, msgs[:3], direct); !errors.Is(err, boom) {
		t.Fatalf("lookup error: %v", err)
	}
}

// NormalizePending gives Resolve what Normalize gave it first: the same
// values, identityType and groups, so a binding stored from a record
// resolves as the record would against the same directory.
func TestNormalizePendingAgreesWithNormalize(t *testing.T) {
	recs := []struct {
		p   pipeline.Params
		raw pipeline.RawRecord
	}{
		{pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, AppType: "gzh", AppID: "wx1", OptType: pipeline.OptAdd},
			pipeline.RawRecord{IdentityType: "PHONE", Phone: "+86 138-0000-0001", OpenID: "oA", Groups: "a, b"}},
		{pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyThirdIDFirst, OptType: pipeline.OptDelete},
			pipeline.RawRecord{ThirdID: " crm-1 ", UnionID: "u1", Phone: "null", Groups: "x"}},
		{pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyUnionIDFirst, OptType: pipeline.OptAdd},
			pipeline.RawRecord{OpenID: "oA", Phone: "13800000001", IdentityType: "mobile", Groups: "x"}},
	}
	for i, r := range recs {
		n := Normalize(r.p, r.raw)
		pd := testPending(r.p, &n)
		back := NormalizePending(&pd)
		if back.Invalid != pipeline.ReasonNone || !slices.Equal(back.Groups, n.Groups) ||
			!slices.Equal(back.Lookups(r.p), n.Lookups(r.p)) {
			t.Fatalf("record %d: %+v, want the lookups %v of %+v", i, back, n.Lookups(r.p), n)
		}
		for _, k := range n.Lookups(r.p) {
			if back.Value(k) != n.Value(k) {
				t.Errorf("record %d: %s differs", i, k)
			}
		}
	}
	// Bindings that could not have been stored never resolve.
	for _, pd := range []pipeline.Pending{
		{Identities: map[pipeline.IdentityKind]string{pipeline.KindThirdID: "crm-1"}, Params: pipeline.Params{OptType: pipeline.OptAdd}, Groups: []string{"g"}},
		{Identities: map[pipeline.IdentityKind]string{}, Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy}, Groups: []string{"g"}},
		{Identities: map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000001"}, Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact}, Groups: []string{"g"}},
		{Identities: map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000001"}, IdentityType: pipeline.KindPhone, Params: pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact}},
	} {
		if n := NormalizePending(&pd); n.Invalid == pipeline.ReasonNone {
			t.Errorf("binding %+v resolves", pd)
		}
	}
}

// testPending is the pipeline.Pending the matcher attaches to a deferred
// NOT_FOUND verdict (SPEC §13): the values looked up, the params, the
// identityType under exact matching, the groups.
func testPending(p pipeline.Params, n *Normalized) pipeline.Pending {
	pd := pipeline.Pending{Identities: map[pipeline.IdentityKind]string{}, Params: p, Groups: slices.Clone(n.Groups)}
	if !isFuzzy(p) {
		pd.IdentityType = n.IdentityType
	}
	for _, k := range n.Lookups(p) {
		if v := n.Value(k); v != "" {
			pd.Identities[k] = v
		}
	}
	return pd
}
