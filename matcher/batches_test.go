package matcher

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// acceptBatches records the batches as accepted (PROCESSING) for the
// tenant, as ingest does before the matcher sees their records.
func acceptBatches(tb testing.TB, db *pgxpool.Pool, tenantID int64, ids ...int64) {
	tb.Helper()
	setBatches(tb, db, tenantID, "PROCESSING", ids...)
}

func setBatches(tb testing.TB, db *pgxpool.Pool, tenantID int64, status string, ids ...int64) {
	tb.Helper()
	_, err := db.Exec(context.Background(), `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, aborted, total)
		SELECT id, $2, 'app', 'add', '{}', $3, $3 = 'FAILED', 500 FROM unnest($1::bigint[]) AS id
		ON CONFLICT (tenant_id, batch_id) DO UPDATE SET status = excluded.status, aborted = excluded.aborted`, ids, tenantID, status)
	if err != nil {
		tb.Fatalf("batches: %v", err)
	}
}

func customerCount(t *testing.T, db *pgxpool.Pool) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM customers`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// noMatchItems are isMatching=false records of the batches, one each,
// naming new thirdIds.
func noMatchItems(tenantID int64, batches ...int64) []item {
	p := pipeline.Params{IsMatching: false, OptType: pipeline.OptAdd}
	var items []item
	for i, b := range batches {
		rec := pipeline.RawRecord{ThirdID: "new-" + string(rune('a'+i)), Phone: "1380000000" + string(rune('0'+i)), Groups: "g"}
		msg := pipeline.RecordMessage{V: pipeline.Version, TenantID: tenantID, BatchID: b, Index: 0, Params: p, Record: rec}
		items = append(items, item{msg: msg, norm: Normalize(p, rec)})
	}
	return items
}

// Records of an aborted, finished or unknown isMatching=false batch create
// no customer and go on as FAILED/BATCH_CLOSED; those of an open batch
// create theirs. One batch-state query answers the chunk.
func TestClosedBatchesCreateNoCustomer(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	tenant := ensureTenant(t, db, "t")
	acceptBatches(t, db, tenant, 1)
	setBatches(t, db, tenant, "FAILED", 2)          // aborted: ingest answered 503
	setBatches(t, db, tenant, "PARTIAL_SUCCESS", 3) // finished (say, at its deadline)
	setBatches(t, db, tenant+1, "PROCESSING", 5)    // another tenant's batch
	items := noMatchItems(tenant, 1, 2, 3, 4, 5)    // 4: no such batch
	dir := &countingDir{Store: NewPGStore(db)}
	direct := func(op func() error) error { return op() }
	if err := resolveChunk(ctx, dir, items, direct); err != nil {
		t.Fatal(err)
	}
	if dir.states != 1 {
		t.Errorf("%d BatchStates calls for one chunk, want 1", dir.states)
	}
	if o := items[0].out; o.Outcome != pipeline.OutcomeMatched || !o.Created || o.CustomerID == 0 {
		t.Errorf("open batch: %+v", o)
	}
	for _, it := range items[1:] {
		o := it.out
		if o.Outcome != pipeline.OutcomeFailed || o.Reason != pipeline.ReasonBatchClosed || o.CustomerID != 0 || o.Created || o.Ref != nil ||
			o.BatchID != it.msg.BatchID || o.TenantID != tenant {
			t.Errorf("closed batch %d: %+v", it.msg.BatchID, o)
		}
		if _, err := pipeline.EncodeResolved(o); err != nil {
			t.Errorf("closed batch %d: %v", it.msg.BatchID, err)
		}
	}
	if n := customerCount(t, db); n != 1 {
		t.Errorf("%d customers, want the open batch's 1", n)
	}

	// A chunk without isMatching=false records never asks.
	dir.states = 0
	match := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	rec := pipeline.RawRecord{IdentityType: "id", ThirdID: "x", Groups: "g"}
	only := []item{{msg: pipeline.RecordMessage{TenantID: tenant, BatchID: 4, Params: match, Record: rec}, norm: Normalize(match, rec)}}
	if err := resolveChunk(ctx, dir, only, direct); err != nil || dir.states != 0 {
		t.Errorf("matching chunk: %d BatchStates calls, %v", dir.states, err)
	}
}

// A record of a batch still PENDING waits (ErrBatchPending, retried) until
// ingest accepts the batch, or aborts it.
func TestPendingBatchWaits(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	tenant := ensureTenant(t, db, "t")
	setBatches(t, db, tenant, "PENDING", 1, 2)
	dir := NewPGStore(db)
	items := noMatchItems(tenant, 1, 2)
	attempts := 0
	do := func(op func() error) error {
		for {
			err := op()
			if !errors.Is(err, ErrBatchPending) {
				return err
			}
			attempts++
			// Ingest accepts batch 1 and aborts batch 2 while the chunk waits.
			if _, err := db.Exec(ctx, `UPDATE batches SET status = CASE batch_id WHEN 1 THEN 'PROCESSING' ELSE 'FAILED' END,
				aborted = batch_id = 2 WHERE batch_id IN (1, 2)`); err != nil {
				return err
			}
		}
	}
	if err := resolveChunk(ctx, dir, items, do); err != nil {
		t.Fatal(err)
	}
	if attempts != 1 || !items[0].out.Created || items[1].out.Reason != pipeline.ReasonBatchClosed {
		t.Errorf("after %d waits: %+v / %+v", attempts, items[0].out, items[1].out)
	}
	if n := customerCount(t, db); n != 1 {
		t.Errorf("%d customers, want 1", n)
	}

	// A batch PENDING for longer than PendingTimeout is aborted (its
	// ingest died), as the sink would.
	setBatches(t, db, tenant, "PENDING", 3)
	if _, err := db.Exec(ctx, `UPDATE batches SET accepted_at = now() - interval '1 hour' WHERE batch_id = 3`); err != nil {
		t.Fatal(err)
	}
	states, err := dir.BatchStates(ctx, []BatchRef{{tenant, 3}})
	if err != nil || states[3].Open {
		t.Fatalf("stale pending batch: %+v, %v", states, err)
	}
	var status string
	var aborted bool
	if err := db.QueryRow(ctx, `SELECT status, aborted FROM batches WHERE batch_id = 3`).Scan(&status, &aborted); err != nil || status != "FAILED" || !aborted {
		t.Fatalf("stale pending batch is %s aborted=%v, %v", status, aborted, err)
	}
}

// countingDir counts BatchStates calls.
type countingDir struct {
	Store
	states int
}

func (d *countingDir) BatchStates(ctx context.Context, ids []BatchRef) (map[int64]BatchState, error) {
	d.states++
	return d.Store.BatchStates(ctx, ids)
}

// ensureTenant returns the id of the tenant named name, creating it.
func ensureTenant(tb testing.TB, db *pgxpool.Pool, name string) int64 {
	tb.Helper()
	var id int64
	err := db.QueryRow(context.Background(), `
		WITH t AS (INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING tenant_id)
		SELECT tenant_id FROM t UNION ALL SELECT tenant_id FROM tenants WHERE name = $1`, name).Scan(&id)
	if err != nil {
		tb.Fatalf("tenant: %v", err)
	}
	return id
}
