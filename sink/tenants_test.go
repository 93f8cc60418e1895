package sink

import (
	"context"
	"fmt"
	"testing"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// A chunk mixing tenants is applied in one transaction per tenant: rows
// carry their tenant, a tenant whose transaction fails changes nothing,
// the tenants applied before it stay applied, and applying the chunk again
// counts those as duplicates, so every record still takes effect once.
func TestApplyOneTransactionPerTenant(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	const other = tenant + 1
	newBatch(t, db, 1, 2, "PROCESSING") // tenant's
	if _, err := db.Exec(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (2, $1, 'app', 'add', '{}', 'PROCESSING', 2)`, other); err != nil {
		t.Fatal(err)
	}
	otherMatched := matched(2, 0, pipeline.OptAdd, 10, "vip")
	otherMatched.TenantID = other
	poison := pipeline.ResolvedMessage{V: 1, TenantID: other, BatchID: 2, Index: 1, OptType: pipeline.OptAdd,
		Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound, Ref: &pipeline.RecordRef{ThirdID: "x\x00"}}
	chunk := []pipeline.ResolvedMessage{otherMatched, matched(1, 0, pipeline.OptAdd, 10, "vip"), poison,
		matched(1, 1, pipeline.OptAdd, 11, "vip")}
	if _, err := s.Apply(ctx, chunk); err == nil {
		t.Fatal("a ref PostgreSQL refuses (NUL in jsonb) applied")
	}
	if got := readBatch(t, db, 1); got.status != "SUCCESS" || got.processed != 2 {
		t.Fatalf("the tenant applied first: %+v", got)
	}
	if got := readBatch(t, db, 2); got.processed != 0 {
		t.Fatalf("the failed tenant's batch: %+v", got)
	}
	var n int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM batch_records WHERE tenant_id = $1`, other).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the failed tenant has %d ledger rows, %v", n, err)
	}
	if b := appliedBits(t, db, 2); b != "00/0" {
		t.Fatalf("the failed tenant's applied bits: %s", b)
	}

	chunk[2].Ref = &pipeline.RecordRef{ThirdID: "x"}
	res, err := s.Apply(ctx, chunk)
	if err != nil || res.Applied != 2 || res.Duplicates != 2 || len(res.Finished) != 1 || res.Finished[0].TenantID != other {
		t.Fatalf("again: %+v, %v", res, err)
	}
	if got := readBatch(t, db, 2); got.status != "PARTIAL_SUCCESS" || got.processed != 2 || got.unmatched != 1 {
		t.Fatalf("the other tenant's batch: %+v", got)
	}
	rows, err := db.Query(ctx, `
		SELECT 'bits', tenant_id, bit_count(done) FROM batches
		UNION ALL SELECT 'ledger', tenant_id, batch_id FROM batch_records
		UNION ALL SELECT 'member', m.tenant_id, g.tenant_id FROM memberships m JOIN groups g USING (tenant_id, group_id)
		UNION ALL SELECT 'outbox', tenant_id, batch_id FROM batch_events_outbox ORDER BY 1, 2, 3`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var kind string
		var a, b int64
		if err := rows.Scan(&kind, &a, &b); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %d/%d", kind, a, b))
	}
	// Matched records have their bits only; the NOT_FOUND one a row too.
	want := "[bits 1/2 bits 2/2 ledger 2/2 member 1/1 member 1/1 member 2/2 outbox 1/1 outbox 2/2]"
	if fmt.Sprint(got) != want {
		t.Fatalf("rows by tenant:\n%v\nwant\n%s", got, want)
	}
}
