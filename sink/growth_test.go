package sink

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// TestMeasureGrowth measures how big each table grows per million records
// applied through PGStore.Apply, and how fast a Pruner deletes them once
// they expire: the figures of docs/operations.md, "Table sizes". The
// records are shaped like BenchmarkApply's (batches of 500, 92 % matched
// with two of 20 groups among a million customers, one batch in ten a
// delete, 8 % NOT_FOUND with a masked ref), applied in chunks of 2,000.
// It runs only when GROUPMATCH_MEASURE_RECORDS names the record count, e.g.
//
//	GROUPMATCH_MEASURE_RECORDS=1000000 go test ./sink -run MeasureGrowth -v -timeout 30m
func TestMeasureGrowth(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("GROUPMATCH_MEASURE_RECORDS"))
	if n <= 0 {
		t.Skip("set GROUPMATCH_MEASURE_RECORDS to measure")
	}
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	const batchSize, chunk = 500, 2000
	rng := rand.New(rand.NewPCG(1, 2))
	groups := make([]string, 20)
	for i := range groups {
		groups[i] = "group-" + strconv.Itoa(i)
	}
	start := time.Now()
	var recs []pipeline.ResolvedMessage
	for id := int64(1); int(id-1)*batchSize < n; id++ {
		newBatch(t, db, id, batchSize, "PROCESSING")
		recs = appendBenchBatch(recs, rng, tenant, id, batchSize, groups)
		if len(recs) >= chunk {
			apply(t, s, recs...)
			recs = recs[:0]
		}
	}
	if len(recs) > 0 {
		apply(t, s, recs...)
	}
	t.Logf("applied %d records in %s", n, time.Since(start).Round(time.Millisecond))
	exec(t, db, `DELETE FROM batch_events_outbox`) // the relay published them
	exec(t, db, `VACUUM ANALYZE`)
	tables := []string{"batches", "batch_records", "memberships", "groups", "batch_events_outbox"}
	perMillion := 1e6 / float64(n)
	for _, tbl := range tables {
		var total, heap int64
		var rows int
		if err := db.QueryRow(ctx, `SELECT pg_total_relation_size($1::regclass), pg_relation_size($1::regclass),
			(SELECT count(*) FROM `+tbl+`)`, tbl).Scan(&total, &heap, &rows); err != nil {
			t.Fatal(err)
		}
		t.Logf("%-20s rows %9d  total %8.1f MB  (heap %7.1f MB)  per million records: %7.1f MB, %.0f B/row",
			tbl, rows, float64(total)/1e6, float64(heap)/1e6, float64(total)/1e6*perMillion, float64(total)/float64(max(rows, 1)))
	}

	exec(t, db, `UPDATE batches SET finished_at = now() - interval '40 days'`)
	exec(t, db, `UPDATE groups SET created_at = now() - interval '40 days'`)
	p := mustPruner(t, db, PruneConfig{})
	start = time.Now()
	st, err := p.Prune(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	rows := st.Batches + st.BatchRecords + st.Tombstones + st.Groups
	t.Logf("pruned %+v in %s: %.0f rows/s (%.0f ledger rows/s)", st, d.Round(time.Millisecond),
		float64(rows)/d.Seconds(), float64(st.BatchRecords)/d.Seconds())
	if left := count(t, db, `SELECT count(*) FROM batch_records`); left != 0 || st.BatchRecords == 0 {
		t.Errorf("pruned %d ledger rows, %d left; want every one (one per record not applied)", st.BatchRecords, left)
	}
	// A pass with nothing to prune, as most are: its cost per tenant.
	start = time.Now()
	if _, err := p.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("a pass with nothing left to prune, right after: %s", time.Since(start).Round(time.Microsecond))
	exec(t, db, `VACUUM ANALYZE`)
	start = time.Now()
	if _, err := p.Prune(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("the same after VACUUM: %s", time.Since(start).Round(time.Microsecond))
}
