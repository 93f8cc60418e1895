package sink

import (
	"context"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

func visibleGroupCount(t *testing.T, db *pgxpool.Pool, tenantID int64) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM groups WHERE tenant_id = $1 AND visible`, tenantID).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// ledgerReasons returns "index:outcome/reason" of the batch's ledger rows.
func groupLimitLedger(t *testing.T, db *pgxpool.Pool, batch int64) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT rec_index, outcome, coalesce(reason, ''), customer_id IS NULL
		FROM batch_records WHERE batch_id = $1 ORDER BY rec_index`, batch)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var i int
		var o, r string
		var noCustomer bool
		if err := rows.Scan(&i, &o, &r, &noCustomer); err != nil {
			t.Fatal(err)
		}
		if o == string(pipeline.OutcomeInvalid) && !noCustomer {
			t.Errorf("record %d is INVALID but names a customer", i)
		}
		out = append(out, fmt.Sprintf("%d:%s/%s", i, o, r))
	}
	return out
}

func TestApplyGroupLimit(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	s.MaxGroupsPerTenant = 3
	ctx := context.Background()
	if _, err := db.Exec(ctx, `INSERT INTO groups (tenant_id, name, visible) VALUES ($1, 'a', true), ($1, 'hidden', false)`, tenant); err != nil {
		t.Fatal(err)
	}
	newBatch(t, db, 1, 7, "PROCESSING")
	chunk := []pipeline.ResolvedMessage{
		matched(1, 0, pipeline.OptAdd, 10, "a"),           // existing group: always allowed
		matched(1, 1, pipeline.OptAdd, 11, "b", "c"),      // 1 + 2 = 3: at the limit
		matched(1, 2, pipeline.OptAdd, 12, "d"),           // a fourth group: GROUP_LIMIT
		matched(1, 3, pipeline.OptAdd, 13, "b"),           // created by record 1 of this chunk
		matched(1, 4, pipeline.OptAdd, 14, "a", "hidden"), // making "hidden" visible creates it: GROUP_LIMIT, "a" untouched too
		matched(1, 5, pipeline.OptDelete, 15, "z"),        // deletes create only invisible groups
	}
	res, err := s.Apply(ctx, chunk)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 6 || res.Outcomes[pipeline.OutcomeMatched] != 4 || res.Outcomes[pipeline.OutcomeInvalid] != 2 {
		t.Fatalf("first chunk: %+v", res)
	}
	// Matched records have their bit only; refused ones a ledger row too.
	if got := fmt.Sprint(groupLimitLedger(t, db, 1)); got != "[2:INVALID/GROUP_LIMIT 4:INVALID/GROUP_LIMIT]" {
		t.Fatalf("ledger %s", got)
	}
	if got := appliedBits(t, db, 1); got != "1111110/6" {
		t.Fatalf("applied bits %s", got)
	}
	if n := visibleGroupCount(t, db, tenant); n != 3 {
		t.Fatalf("%d visible groups, want 3", n)
	}
	if m := fmt.Sprint(members(t, db)); m != "[a/10 b/11 b/13 c/11]" {
		t.Fatalf("members %s", m)
	}
	// Redelivery changes nothing, and another tenant is not limited by this one.
	if res, err := s.Apply(ctx, chunk); err != nil || res.Applied != 0 {
		t.Fatalf("redelivery: %+v, %v", res, err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (2, 2, 'app', 'add', '{}', 'PROCESSING', 1)`); err != nil {
		t.Fatal(err)
	}
	other := matched(2, 0, pipeline.OptAdd, 10, "x", "y", "z")
	other.TenantID = 2
	last := []pipeline.ResolvedMessage{other,
		{V: 1, TenantID: tenant, BatchID: 1, Index: 6, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound}}
	res, err = s.Apply(ctx, last)
	if err != nil || len(res.Finished) != 2 {
		t.Fatalf("last chunk: %+v, %v", res, err)
	}
	got := readBatch(t, db, 1)
	want := batchRow{status: "PARTIAL_SUCCESS", processed: 7, success: 4, unmatched: 1, invalid: 2, groupsCreated: 2}
	if got != want {
		t.Fatalf("batch row %+v, want %+v", got, want)
	}
	if n := visibleGroupCount(t, db, 2); n != 3 {
		t.Fatalf("tenant 2 has %d visible groups, want 3", n)
	}
}

// TestApplyGroupLimitConcurrent runs two sinks applying chunks that each want
// new groups of one tenant at the same time: the tenant ends with exactly
// the limit, every record is counted once, and a record was refused only
// when its groups did not all exist.
func TestApplyGroupLimitConcurrent(t *testing.T) {
	db, _ := schematest.NewPool(t)
	const limit = 25
	ctx := context.Background()
	var msgs []pipeline.ResolvedMessage
	for b := int64(1); b <= 4; b++ {
		newBatch(t, db, b, 60, "PROCESSING")
		for i := range 60 {
			msgs = append(msgs, matched(b, i, pipeline.OptAdd, int64(i+1), "common", fmt.Sprintf("g%d", (int(b)*60+i)%70)))
		}
	}
	stores := []*PGStore{NewPGStore(db), NewPGStore(db)}
	for _, s := range stores {
		s.MaxGroupsPerTenant = limit
	}
	applyShuffled(t, stores, msgs, 15, 7)
	if n := visibleGroupCount(t, db, tenant); n != limit {
		t.Fatalf("%d visible groups, want exactly %d", n, limit)
	}
	var success, invalid, created int
	for b := int64(1); b <= 4; b++ {
		r := readBatch(t, db, b)
		if r.processed != 60 || r.success+r.invalid != 60 || r.status == "PROCESSING" {
			t.Fatalf("batch %d: %+v", b, r)
		}
		success, invalid, created = success+r.success, invalid+r.invalid, created+r.groupsCreated
	}
	if created != limit || invalid == 0 {
		t.Fatalf("groupsCreated %d (want %d), invalid %d (want some)", created, limit, invalid)
	}
	// Every record has its bit; the refused ones, and only they, a ledger
	// row. Record (b, i) alone names customer i+1 in group g((60b+i) % 70),
	// so its membership there carries its position: every applied record
	// is a member of its own group, and no refused one is.
	var bits, refused, ledger, memberRows, refusedRows int
	if err := db.QueryRow(ctx, `SELECT (SELECT sum(bit_count(done)) FROM batches WHERE tenant_id = $1),
		(SELECT count(*) FROM batch_records WHERE reason = 'GROUP_LIMIT'), (SELECT count(*) FROM batch_records)`, tenant).Scan(&bits, &refused, &ledger); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE r.rec_index IS NULL), count(*) FILTER (WHERE r.rec_index IS NOT NULL)
		FROM memberships m
		JOIN groups g ON g.tenant_id = m.tenant_id AND g.group_id = m.group_id AND g.name <> 'common'
		LEFT JOIN batch_records r ON r.tenant_id = m.tenant_id AND r.batch_id = m.batch_id AND r.rec_index = m.rec_index
		WHERE m.tenant_id = $1 AND m.present AND m.customer_id = m.rec_index + 1
		  AND g.name = 'g' || ((m.batch_id * 60 + m.rec_index) % 70)`, tenant).Scan(&memberRows, &refusedRows); err != nil {
		t.Fatal(err)
	}
	if bits != 240 || refused != invalid || ledger != invalid || memberRows != success || refusedRows != 0 {
		t.Fatalf("bits %d, refused rows %d of %d ledger rows (invalid %d), own memberships %d (success %d), refused members %d",
			bits, refused, ledger, invalid, memberRows, success, refusedRows)
	}
}

// A chunk mixing a late match with first verdicts: a first verdict the
// group limit refuses is counted INVALID (not the MATCHED it arrived as),
// gets its GROUP_LIMIT ledger row and its bit, and the late match to an
// existing group still applies.
func TestApplyGroupLimitWithLateMatch(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	s.MaxGroupsPerTenant = 1
	ctx := context.Background()
	if _, err := db.Exec(ctx, `INSERT INTO groups (tenant_id, name, visible) VALUES ($1, 'x', true)`, tenant); err != nil {
		t.Fatal(err)
	}
	newBatch(t, db, 1, 1, "PROCESSING")
	newBatch(t, db, 2, 1, "PROCESSING")
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "x"))
	res := apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "x"), matched(2, 0, pipeline.OptAdd, 11, "b"))
	if res.LateMatched != 1 || res.Applied != 1 || res.Outcomes[pipeline.OutcomeInvalid] != 1 || res.Outcomes[pipeline.OutcomeMatched] != 0 {
		t.Fatalf("chunk: %+v", res)
	}
	if got, want := readBatch(t, db, 2), (batchRow{status: "FAILED", processed: 1, invalid: 1}); got != want {
		t.Fatalf("batch 2 %+v, want %+v", got, want)
	}
	if got := fmt.Sprint(groupLimitLedger(t, db, 2)); got != "[0:INVALID/GROUP_LIMIT]" {
		t.Fatalf("ledger of batch 2 %s", got)
	}
	if got := appliedBits(t, db, 2); got != "1/1" {
		t.Fatalf("applied bits of batch 2 %s", got)
	}
	if m := fmt.Sprint(members(t, db)); m != "[x/10]" {
		t.Fatalf("members %s", m)
	}
}
