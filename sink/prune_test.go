package sink

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

func count(t *testing.T, db *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func exec(t *testing.T, db *pgxpool.Pool, query string, args ...any) {
	t.Helper()
	if _, err := db.Exec(context.Background(), query, args...); err != nil {
		t.Fatal(err)
	}
}

func apply(t *testing.T, s *PGStore, recs ...pipeline.ResolvedMessage) ApplyResult {
	t.Helper()
	res, err := s.Apply(context.Background(), recs)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// tombstones returns "group/customer@batch" of every delete tombstone.
func tombstones(t *testing.T, db *pgxpool.Pool) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT g.name || '/' || m.customer_id || '@' || m.batch_id
		FROM memberships m JOIN groups g USING (tenant_id, group_id) WHERE NOT m.present ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestPruneHorizons drives batches through the store, moves them past the
// horizons, and checks what Prune deletes and what it must keep: live
// batches, present memberships, tombstones a live earlier batch could
// still need, unpublished events; and that late records of pruned batches
// change nothing.
func TestPruneHorizons(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	old := time.Now().Add(-40 * 24 * time.Hour)

	// Batch 1 adds 10..13 to vip and finishes. Batch 2 stays PROCESSING
	// with two records applied. Batch 3 deletes 10 and 11 from vip and 10
	// from ghost (a group only deletes name: invisible) and finishes. Each
	// has one NOT_FOUND record, whose ledger row goes with its batch (a
	// MATCHED record has only its bit in the batch row).
	newBatch(t, db, 1, 5, "PROCESSING")
	apply(t, s, matched(1, 0, pipeline.OptAdd, 10, "vip"), matched(1, 1, pipeline.OptAdd, 11, "vip"),
		matched(1, 2, pipeline.OptAdd, 12, "vip"), matched(1, 3, pipeline.OptAdd, 13, "vip"), notFound(1, 4))
	newBatch(t, db, 2, 4, "PROCESSING")
	apply(t, s, matched(2, 0, pipeline.OptAdd, 20, "vip"), notFound(2, 3))
	newBatch(t, db, 3, 4, "PROCESSING")
	exec(t, db, `UPDATE batches SET opt_type = 'delete' WHERE batch_id = 3`)
	apply(t, s, matched(3, 0, pipeline.OptDelete, 10, "vip"), matched(3, 1, pipeline.OptDelete, 11, "vip"),
		matched(3, 2, pipeline.OptDelete, 10, "ghost"), notFound(3, 3))
	// Batch 4: finished yesterday with an idempotency key older than 24 h.
	newBatch(t, db, 4, 1, "PROCESSING")
	exec(t, db, `UPDATE batches SET idempotency_key = 'k4', accepted_at = $1 WHERE batch_id = 4`, time.Now().Add(-25*time.Hour))
	apply(t, s, matched(4, 0, pipeline.OptAdd, 40, "vip"))
	// Batch 5 aborted two days ago; batch 6 aborted an hour ago.
	newBatch(t, db, 5, 2, "FAILED")
	newBatch(t, db, 6, 2, "FAILED")
	exec(t, db, `UPDATE batches SET aborted = true, finished_at = $1 WHERE batch_id = 5`, time.Now().Add(-48*time.Hour))
	exec(t, db, `UPDATE batches SET aborted = true, finished_at = $1 WHERE batch_id = 6`, time.Now().Add(-time.Hour))
	// Batch 7 finished long ago, but its batch.finished event is unpublished.
	newBatch(t, db, 7, 1, "PROCESSING")
	apply(t, s, matched(7, 0, pipeline.OptAdd, 70, "vip"))

	exec(t, db, `UPDATE batches SET finished_at = $1 WHERE batch_id IN (1, 3, 7)`, old)
	exec(t, db, `UPDATE groups SET created_at = $1`, old)
	exec(t, db, `DELETE FROM batch_events_outbox WHERE batch_id <> 7`) // the relay published the others

	p := mustPruner(t, db, PruneConfig{Rows: 2}) // tiny statements: every loop runs
	st, err := p.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// 1 and 3 expired, 5 aborted over a day ago; 7's event is unpublished.
	if got := ids(t, db, `SELECT batch_id FROM batches ORDER BY 1`); !slices.Equal(got, []int64{2, 4, 6, 7}) {
		t.Errorf("batches left %v, want 2 4 6 7", got)
	}
	if st.Batches != 3 || st.BatchRecords != 2 || st.IdempotencyKeys != 1 {
		t.Errorf("stats %+v, want 3 batches, 2 ledger rows, 1 key", st)
	}
	if st.Overdue < 239*time.Hour { // batch 7, ten days past the horizon
		t.Errorf("overdue %v, want 240h", st.Overdue)
	}
	if n := count(t, db, `SELECT count(*) FROM batches WHERE idempotency_key IS NOT NULL`); n != 0 {
		t.Errorf("%d idempotency keys left, want 0", n)
	}
	if n := count(t, db, `SELECT count(*) FROM batch_records WHERE batch_id = 2`); n != 1 {
		t.Errorf("live batch 2 has %d ledger rows, want 1", n)
	}
	// Batch 3 is pruned, but live batch 2 comes before it: batch 3's
	// tombstones must stay, and so must the invisible group holding one.
	if got, want := tombstones(t, db), []string{"ghost/10@3", "vip/10@3", "vip/11@3"}; !slices.Equal(got, want) {
		t.Errorf("tombstones %v, want %v", got, want)
	}
	wantMembers := []string{"vip/12", "vip/13", "vip/20", "vip/40", "vip/70"}
	if got := members(t, db); !slices.Equal(got, wantMembers) {
		t.Errorf("members %v, want %v", got, wantMembers)
	}

	// A late add of live batch 2 positioned before the delete loses to it.
	apply(t, s, matched(2, 1, pipeline.OptAdd, 10, "vip"), matched(2, 2, pipeline.OptAdd, 21, "vip"))
	wantMembers = []string{"vip/12", "vip/13", "vip/20", "vip/21", "vip/40", "vip/70"}
	if got := members(t, db); !slices.Equal(got, wantMembers) {
		t.Errorf("after a late add of batch 2: members %v, want %v", got, wantMembers)
	}
	// A redelivered record of pruned batch 1 is an orphan and changes
	// nothing: the tombstone of 10 is older than nothing it could beat.
	before := count(t, db, `SELECT count(*) FROM batch_records`)
	res := apply(t, s, matched(1, 0, pipeline.OptAdd, 10, "vip"), matched(1, 3, pipeline.OptAdd, 99, "vip"))
	if len(res.Orphans) != 2 || res.Applied != 0 {
		t.Errorf("late records of a pruned batch: %+v, want 2 orphans", res)
	}
	if n := count(t, db, `SELECT count(*) FROM batch_records`); n != before {
		t.Errorf("ledger rows %d, want %d", n, before)
	}
	if got := members(t, db); !slices.Equal(got, wantMembers) {
		t.Errorf("after late records of pruned batch 1: members %v, want %v", got, wantMembers)
	}

	// Batch 2 is finished now and goes past the horizon; the relay
	// publishes batch 7's event. Everything old goes, tombstones and the
	// ghost group too; present memberships stay.
	exec(t, db, `UPDATE batches SET finished_at = $1 WHERE batch_id = 2`, old)
	exec(t, db, `DELETE FROM batch_events_outbox`)
	if _, err := p.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	if got := ids(t, db, `SELECT batch_id FROM batches ORDER BY 1`); !slices.Equal(got, []int64{4, 6}) {
		t.Errorf("batches left %v, want 4 6", got)
	}
	if got := tombstones(t, db); len(got) != 0 {
		t.Errorf("tombstones left: %v", got)
	}
	if got := ids(t, db, `SELECT count(*) FROM groups WHERE name = 'ghost'`); got[0] != 0 {
		t.Error("the invisible group ghost was not pruned")
	}
	if got := members(t, db); !slices.Equal(got, wantMembers) {
		t.Errorf("members %v, want %v", got, wantMembers)
	}
	// Late records of batches pruned with their tombstones still change
	// nothing: 10 stays out of vip.
	res = apply(t, s, matched(2, 1, pipeline.OptAdd, 10, "vip"), matched(3, 0, pipeline.OptDelete, 12, "vip"))
	if len(res.Orphans) != 2 {
		t.Errorf("late records of pruned batches: %+v, want 2 orphans", res)
	}
	if got := members(t, db); !slices.Equal(got, wantMembers) {
		t.Errorf("members %v, want %v", got, wantMembers)
	}
}

// notFound is a NOT_FOUND verdict, which keeps a ledger row.
func notFound(batch int64, index int) pipeline.ResolvedMessage {
	return pipeline.ResolvedMessage{V: 1, TenantID: tenant, BatchID: batch, Index: index, OptType: pipeline.OptAdd,
		Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound, Ref: &pipeline.RecordRef{ThirdID: "crm"}}
}

func ids(t *testing.T, db *pgxpool.Pool, query string) []int64 {
	t.Helper()
	rows, err := db.Query(context.Background(), query)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	return out
}

// TestApplyFinishedBatchWithoutLedger: a record of a finished batch is a
// duplicate even when the batch's ledger rows are gone (as while a pruner
// deletes them), so it is never applied twice.
func TestApplyFinishedBatchWithoutLedger(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	newBatch(t, db, 1, 2, "PROCESSING")
	apply(t, s, matched(1, 0, pipeline.OptAdd, 10, "vip"), matched(1, 1, pipeline.OptDelete, 11, "vip"))
	exec(t, db, `DELETE FROM batch_records`)
	res := apply(t, s, matched(1, 0, pipeline.OptAdd, 10, "vip"), matched(1, 1, pipeline.OptAdd, 11, "vip"))
	if res.Duplicates != 2 || res.Applied != 0 {
		t.Errorf("got %+v, want 2 duplicates", res)
	}
	if b := readBatch(t, db, 1); b.processed != 2 || b.success != 2 {
		t.Errorf("batch %+v, want processed 2, success 2", b)
	}
	if n := count(t, db, `SELECT count(*) FROM batch_records`); n != 0 {
		t.Errorf("%d ledger rows written for a finished batch", n)
	}
}

// TestPruneWhileImporting prunes with two pruners at once while a writer
// keeps applying new batches: the old rows go, every new batch finishes
// with exact counters, and nothing live is touched.
func TestPruneWhileImporting(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	const size = 100 // matched records per batch, and one NOT_FOUND
	run := func(from, to int64) {
		for id := from; id < to; id++ {
			newBatch(t, db, id, size+1, "PROCESSING")
			recs := make([]pipeline.ResolvedMessage, size, size+1)
			for i := range recs {
				opt := pipeline.OptAdd
				if id%5 == 0 {
					opt = pipeline.OptDelete
				}
				recs[i] = matched(id, i, opt, int64(i), "g")
			}
			apply(t, s, append(recs, notFound(id, size))...)
		}
	}
	run(1, 41) // 40 old batches, 40 ledger rows (the NOT_FOUND records')
	exec(t, db, `UPDATE batches SET finished_at = $1`, time.Now().Add(-40*24*time.Hour))
	exec(t, db, `DELETE FROM batch_events_outbox`)
	oldRecords := count(t, db, `SELECT count(*) FROM batch_records`)

	metrics := NewPruneMetrics(prometheus.NewRegistry())
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	for range 2 {
		wg.Add(1)
		p := mustPruner(t, db, PruneConfig{Rows: 300, Metrics: metrics})
		go func() {
			defer wg.Done()
			_, err := p.Prune(ctx)
			errs <- err
		}()
	}
	run(41, 61) // imports go on meanwhile
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM batches WHERE batch_id <= 40`); n != 0 {
		t.Errorf("%d old batches left", n)
	}
	if got := testutil.ToFloat64(metrics.Rows.WithLabelValues("batches")); got != 40 {
		t.Errorf("prune_rows_total{table=batches} = %v, want 40", got)
	}
	if got := testutil.ToFloat64(metrics.Rows.WithLabelValues("batch_records")); got != 40 {
		t.Errorf("prune_rows_total{table=batch_records} = %v, want 40", got)
	}
	if got := testutil.ToFloat64(metrics.LastSuccess); got < float64(time.Now().Add(-time.Minute).Unix()) {
		t.Errorf("prune_last_success_timestamp_seconds = %v", got)
	}
	if n := count(t, db, `SELECT count(*) FROM batch_records`); n != 20 {
		t.Errorf("%d ledger rows, want 20 (was %d)", n, oldRecords)
	}
	if n := count(t, db, `SELECT count(*) FROM batches WHERE batch_id > 40 AND status = 'PARTIAL_SUCCESS'
		AND processed = $1 AND success = $2 AND bit_count(done) = $1`, size+1, size); n != 20 {
		t.Errorf("%d of 20 new batches finished exactly", n)
	}
	// Batch 60 (a delete) was the last: every customer is out of g, and
	// its tombstones are recent, so they stay.
	if n := count(t, db, `SELECT count(*) FROM memberships WHERE NOT present AND batch_id = 60`); n != size {
		t.Errorf("%d tombstones of batch 60, want %d", n, size)
	}
}

// TestPruneStatementsNameTheirTenant plans every statement a pruning pass
// sends and checks that each one on a tenant table filters by tenant_id
// (SPEC §12, Citus).
func TestPruneStatementsNameTheirTenant(t *testing.T) {
	db, url := schematest.NewPool(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	newBatch(t, db, 1, 1, "PROCESSING")
	apply(t, NewPGStore(db), matched(1, 0, pipeline.OptDelete, 10, "ghost"))
	exec(t, db, `UPDATE batches SET finished_at = $1, idempotency_key = 'k', accepted_at = $1`, time.Now().Add(-40*24*time.Hour))
	exec(t, db, `UPDATE groups SET created_at = $1`, time.Now().Add(-40*24*time.Hour))
	exec(t, db, `DELETE FROM batch_events_outbox`)
	// The pruner's statements only.
	plog := &schematest.StatementLog{}
	cfg.ConnConfig.Tracer = plog
	pdb, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pdb.Close()
	st, err := mustPruner(t, pdb, PruneConfig{}).Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Batches != 1 || st.Tombstones != 1 || st.Groups != 1 {
		t.Fatalf("pruned %+v, want a batch, a tombstone and a group: every statement sent", st)
	}
	conn, err := pdb.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	bad, err := plog.TenantFilterViolations(ctx, conn.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 || plog.Len() < 8 {
		t.Errorf("%d statements; without their tenant:\n%s", plog.Len(), strings.Join(bad, "\n"))
	}
}

// TestPruneSkipsGroupASinkIsWriting: a sink transaction naming an invisible
// group in a delete holds the group's row lock (its upsert's ON CONFLICT
// locks the row even when it changes nothing) until it commits, with the
// tombstone it writes; the pruner skips the group meanwhile, so the new
// tombstone never points at a deleted group.
func TestPruneSkipsGroupASinkIsWriting(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	old := time.Now().Add(-40 * 24 * time.Hour)
	exec(t, db, `INSERT INTO groups (tenant_id, name, visible, created_at) VALUES ($1, 'ghost', false, $2)`, tenant, old)

	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	var ids []int64
	rows, err := tx.Query(ctx, `
		INSERT INTO groups (tenant_id, name, visible) VALUES ($1, 'ghost', false)
		ON CONFLICT (tenant_id, name) DO UPDATE SET visible = true
		WHERE NOT groups.visible AND excluded.visible
		RETURNING group_id`, tenant)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id int64
		_ = rows.Scan(&id)
		ids = append(ids, id)
	}
	if rows.Err() != nil || len(ids) != 0 {
		t.Fatalf("upsert returned %v, %v: want no row (nothing changed)", ids, rows.Err())
	}
	var id int64
	if err := tx.QueryRow(ctx, `SELECT group_id FROM groups WHERE tenant_id = $1 AND name = 'ghost'`, tenant).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO memberships (tenant_id, group_id, customer_id, present, batch_id, rec_index)
		VALUES ($1, $2, 10, false, 99, 0)`, tenant, id); err != nil {
		t.Fatal(err)
	}

	st, err := mustPruner(t, db, PruneConfig{}).Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Groups != 0 {
		t.Fatalf("pruned %d groups while a sink transaction held one", st.Groups)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if n := count(t, db, `SELECT count(*) FROM groups g JOIN memberships m USING (tenant_id, group_id)`); n != 1 {
		t.Errorf("%d tombstones in an existing group, want 1", n)
	}
}
