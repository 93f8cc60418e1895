package sink

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// backdate makes batches look accepted age ago.
func backdate(t *testing.T, db *pgxpool.Pool, age time.Duration, ids ...int64) {
	t.Helper()
	_, err := db.Exec(context.Background(), `UPDATE batches SET accepted_at = now() - make_interval(secs => $1)
		WHERE batch_id = ANY($2)`, age.Seconds(), ids)
	if err != nil {
		t.Fatal(err)
	}
}

// ledgerReasons renders a batch's ledger as "index:outcome/reason".
func ledgerReasons(t *testing.T, db *pgxpool.Pool, id int64) string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT rec_index, outcome, coalesce(reason, '') FROM batch_records
		WHERE batch_id = $1 ORDER BY rec_index`, id)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var i int
		var o, r string
		if err := rows.Scan(&i, &o, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%d:%s/%s", i, o, r))
	}
	return fmt.Sprint(out)
}

// appliedBits renders a batch's applied bitmap (batches.done) as one
// character per record index below its total, '1' for a set bit, followed
// by "/processed" (the two change together: processed = bit_count(done)).
func appliedBits(t *testing.T, db *pgxpool.Pool, id int64) string {
	t.Helper()
	var bits string
	var processed, count int
	if err := db.QueryRow(context.Background(), `SELECT coalesce(string_agg(
			CASE WHEN i < 8 * length(b.done) THEN get_bit(b.done, i) ELSE 0 END::text, '' ORDER BY i), ''),
			b.processed, bit_count(b.done)
		FROM batches b LEFT JOIN generate_series(0, b.total - 1) AS i ON true
		WHERE b.batch_id = $1 GROUP BY b.batch_id, b.processed, b.done`, id).Scan(&bits, &processed, &count); err != nil {
		t.Fatal(err)
	}
	if processed != count {
		t.Errorf("batch %d: processed %d, %d bits set", id, processed, count)
	}
	return fmt.Sprintf("%s/%d", bits, processed)
}

func outboxRows(t *testing.T, db *pgxpool.Pool) string {
	t.Helper()
	var ids []int64
	if err := db.QueryRow(context.Background(), `SELECT coalesce(array_agg(batch_id ORDER BY batch_id), '{}') FROM batch_events_outbox`).Scan(&ids); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(ids)
}

// A batch still PROCESSING at its deadline is finished with its missing
// records failed (TIMED_OUT), one outbox row, exact counters; a record
// arriving later changes nothing.
func TestDeadlineFinishesOverdueBatches(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	metrics := NewMetrics(reg)
	d := mustDeadline(t, db, DeadlineConfig{After: time.Hour, Metrics: metrics})

	newBatch(t, db, 1, 4, "PROCESSING") // two records arrive, two never do
	newBatch(t, db, 2, 3, "PROCESSING") // no record ever arrives
	newBatch(t, db, 3, 2, "PROCESSING") // young: left alone
	newBatch(t, db, 4, 1, "PENDING")    // not accepted: the pending timeout's business
	_, err := s.Apply(ctx, []pipeline.ResolvedMessage{
		matched(1, 0, pipeline.OptAdd, 10, "vip"),
		{V: 1, TenantID: tenant, BatchID: 1, Index: 2, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound},
	})
	if err != nil {
		t.Fatal(err)
	}
	if done, err := d.Sweep(ctx); err != nil || len(done) != 0 {
		t.Fatalf("sweep before the deadline finished %+v, %v", done, err)
	}
	backdate(t, db, 2*time.Hour, 1, 2, 4)
	done, err := d.Sweep(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got := map[int64]TimedOut{}
	for _, f := range done {
		got[f.BatchID] = f
	}
	if len(done) != 2 || got[1].Status != "PARTIAL_SUCCESS" || got[1].Records != 2 ||
		got[2].Status != "FAILED" || got[2].Records != 3 || got[1].Latency < 2*time.Hour {
		t.Fatalf("sweep finished %+v", done)
	}
	if b, want := readBatch(t, db, 1), (batchRow{status: "PARTIAL_SUCCESS", processed: 4, success: 1, unmatched: 1, failed: 2, groupsCreated: 1}); b != want {
		t.Errorf("batch 1 %+v, want %+v", b, want)
	}
	if b, want := readBatch(t, db, 2), (batchRow{status: "FAILED", processed: 3, failed: 3}); b != want {
		t.Errorf("batch 2 %+v, want %+v", b, want)
	}
	if b := readBatch(t, db, 3); b.status != "PROCESSING" || b.processed != 0 {
		t.Errorf("young batch 3 %+v", b)
	}
	if b := readBatch(t, db, 4); b.status != "PENDING" {
		t.Errorf("pending batch 4 %+v", b)
	}
	// The matched record 0 has its bit and no ledger row; the others
	// have a row each.
	if l := ledgerReasons(t, db, 1); l != "[1:FAILED/TIMED_OUT 2:NOT_FOUND/NOT_FOUND 3:FAILED/TIMED_OUT]" {
		t.Errorf("ledger of batch 1: %s", l)
	}
	if b := appliedBits(t, db, 1); b != "1111/4" {
		t.Errorf("applied bits of batch 1: %s", b)
	}
	if b := appliedBits(t, db, 2); b != "111/3" {
		t.Errorf("applied bits of batch 2: %s", b)
	}
	if b := appliedBits(t, db, 3); b != "00/0" {
		t.Errorf("applied bits of young batch 3: %s", b)
	}
	if o := outboxRows(t, db); o != "[1 2]" {
		t.Errorf("outbox %s, want one row for each of batches 1 and 2", o)
	}
	if n := testutil.ToFloat64(metrics.TimedOut); n != 2 {
		t.Errorf("timed-out batches metric %v", n)
	}
	if n := testutil.ToFloat64(metrics.TimedOutRecords); n != 5 {
		t.Errorf("timed-out records metric %v", n)
	}
	if n := testutil.ToFloat64(metrics.Finished.WithLabelValues("FAILED")); n != 1 {
		t.Errorf("finished FAILED metric %v", n)
	}

	// Late records of the finished batches change nothing: not the
	// memberships, not the counters.
	res, err := s.Apply(ctx, []pipeline.ResolvedMessage{
		matched(1, 1, pipeline.OptAdd, 11, "vip", "late"),
		matched(2, 0, pipeline.OptAdd, 12, "late"),
	})
	if err != nil || res.Applied != 0 || res.Duplicates != 2 || len(res.Finished) != 0 {
		t.Fatalf("late records: %+v, %v", res, err)
	}
	if m := members(t, db); fmt.Sprint(m) != "[vip/10]" {
		t.Errorf("members after late records %v", m)
	}
	if b := readBatch(t, db, 1); b.processed != 4 || b.success != 1 || b.failed != 2 {
		t.Errorf("batch 1 after a late record %+v", b)
	}
	// A second sweep finds nothing; the outbox keeps one row per batch.
	if done, err := d.Sweep(ctx); err != nil || len(done) != 0 {
		t.Fatalf("second sweep finished %+v, %v", done, err)
	}
	if o := outboxRows(t, db); o != "[1 2]" {
		t.Errorf("outbox after a second sweep %s", o)
	}
}

// Sweepers of several sink processes, racing each other and the sink's
// own writes, finish every overdue batch exactly once with exact counters.
func TestDeadlineConcurrentSweepers(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	const batches, perBatch = 30, 20
	ids := make([]int64, batches)
	for i := range ids {
		ids[i] = int64(i + 1)
		newBatch(t, db, ids[i], perBatch, "PROCESSING")
	}
	backdate(t, db, 2*time.Hour, ids...)
	var wg sync.WaitGroup
	results := make([][]TimedOut, 3)
	applied := make([]int, 2)
	for w := range results {
		d := mustDeadline(t, db, DeadlineConfig{After: time.Hour})
		wg.Go(func() {
			for {
				done, err := d.Sweep(ctx)
				if err != nil {
					t.Error(err)
					return
				}
				results[w] = append(results[w], done...)
				if len(done) == 0 {
					return
				}
			}
		})
	}
	// Two sinks apply the even records of every batch meanwhile.
	for w := range applied {
		wg.Go(func() {
			for _, id := range ids {
				var chunk []pipeline.ResolvedMessage
				for i := w; i < perBatch; i += 2 * len(applied) {
					chunk = append(chunk, matched(id, i, pipeline.OptAdd, int64(1000*id)+int64(i), "g"))
				}
				res, err := s.Apply(ctx, chunk)
				if err != nil {
					t.Error(err)
					return
				}
				applied[w] += res.Applied
			}
		})
	}
	wg.Wait()
	seen := map[int64]int{}
	timedOut := 0
	for _, r := range results {
		for _, f := range r {
			seen[f.BatchID]++
			timedOut += f.Records
		}
	}
	for _, id := range ids {
		if seen[id] != 1 {
			t.Errorf("batch %d finished %d times", id, seen[id])
		}
		b := readBatch(t, db, id)
		if b.processed != perBatch || b.success+b.failed != perBatch || b.status == "PROCESSING" {
			t.Errorf("batch %d: %+v", id, b)
		}
	}
	var success, failed int
	if err := db.QueryRow(ctx, `SELECT sum(success), sum(failed) FROM batches`).Scan(&success, &failed); err != nil {
		t.Fatal(err)
	}
	if success != applied[0]+applied[1] || failed != timedOut || success+failed != batches*perBatch {
		t.Errorf("success %d (sinks applied %v), failed %d (timed out %d)", success, applied, failed, timedOut)
	}
	// Every record has its bit; every timed-out one, and only those,
	// its ledger row.
	var ledger, bits, outbox int
	if err := db.QueryRow(ctx, `SELECT (SELECT count(*) FROM batch_records WHERE reason = 'TIMED_OUT'),
		(SELECT sum(bit_count(done)) FROM batches), (SELECT count(*) FROM batch_events_outbox)`).Scan(&ledger, &bits, &outbox); err != nil {
		t.Fatal(err)
	}
	if ledger != timedOut || bits != batches*perBatch || outbox != batches {
		t.Errorf("ledger rows %d (timed out %d), bits %d, outbox rows %d", ledger, timedOut, bits, outbox)
	}
	if n := count(t, db, `SELECT count(*) FROM batch_records`); n != timedOut {
		t.Errorf("%d ledger rows, want the %d timed-out records'", n, timedOut)
	}
}
