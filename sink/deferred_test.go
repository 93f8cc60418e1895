package sink

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// deferredRec is a NOT_FOUND verdict of a deferring batch: its binding
// waits for phone 1380000000<index> and unionid u<index>.
func deferredRec(batch int64, index int, opt pipeline.OptType, groups ...string) pipeline.ResolvedMessage {
	p := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: 1, OptType: opt, DeferUnmatched: true}
	return pipeline.ResolvedMessage{V: 1, TenantID: tenant, BatchID: batch, Index: index, OptType: opt,
		Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound, Ref: &pipeline.RecordRef{Phone: "138****0000"},
		Pending: &pipeline.Pending{Params: p, Groups: groups, Identities: map[pipeline.IdentityKind]string{
			pipeline.KindPhone: fmt.Sprintf("1380000000%d", index), pipeline.KindUnionID: fmt.Sprintf("u%d", index)}}}
}

// lateRec is the re-matcher's late match of a deferred record.
func lateRec(batch int64, index int, opt pipeline.OptType, customer int64, groups ...string) pipeline.ResolvedMessage {
	r := matched(batch, index, opt, customer, groups...)
	r.MatchedBy, r.Late = pipeline.KindPhone, true
	return r
}

type deferState struct {
	deferred, lateMatched int
	bindings, identities  int
	deferral              string // of record 0 of the batch
	updates               int    // batch.updated outbox rows of the batch
}

func readDefer(t *testing.T, db *pgxpool.Pool, batch int64) deferState {
	t.Helper()
	var s deferState
	err := db.QueryRow(context.Background(), `SELECT b.deferred, b.late_matched,
		(SELECT count(*) FROM pending_bindings p WHERE p.tenant_id = b.tenant_id AND p.batch_id = b.batch_id),
		(SELECT count(*) FROM pending_identities p WHERE p.tenant_id = b.tenant_id AND p.batch_id = b.batch_id),
		coalesce((SELECT deferral FROM batch_records r WHERE r.tenant_id = b.tenant_id AND r.batch_id = b.batch_id AND r.rec_index = 0), ''),
		(SELECT count(*) FROM batch_updates_outbox o WHERE o.tenant_id = b.tenant_id AND o.batch_id = b.batch_id)
		FROM batches b WHERE b.tenant_id = $1 AND b.batch_id = $2`, tenant, batch).Scan(
		&s.deferred, &s.lateMatched, &s.bindings, &s.identities, &s.deferral, &s.updates)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// A deferred NOT_FOUND record is kept once however often it is delivered,
// and its late match is applied once: first counters unchanged, deferred
// and lateMatched exact, one batch.updated for the finished batch.
func TestDeferredStoredAndLateMatchedOnce(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	newBatch(t, db, 1, 2, "PROCESSING")
	chunk := []pipeline.ResolvedMessage{deferredRec(1, 0, pipeline.OptAdd, "vip", "new"), matched(1, 1, pipeline.OptAdd, 11, "vip")}
	res := apply(t, s, chunk...)
	if res.PendingStored != 1 || res.Applied != 2 || len(res.Finished) != 1 {
		t.Fatalf("first delivery: %+v", res)
	}
	res = apply(t, s, append(chunk, chunk[0])...)
	if res.PendingStored != 0 || res.Applied != 0 || res.Duplicates != 3 {
		t.Fatalf("redelivery: %+v", res)
	}
	first := readBatch(t, db, 1)
	want := batchRow{status: "PARTIAL_SUCCESS", processed: 2, success: 1, unmatched: 1, groupsCreated: 1}
	if first != want {
		t.Fatalf("batch row %+v, want %+v", first, want)
	}
	if got := readDefer(t, db, 1); got != (deferState{deferred: 1, bindings: 1, identities: 2, deferral: "PENDING"}) {
		t.Fatalf("after storing: %+v", got)
	}
	var announced bool
	var opt string
	var pending pipeline.Pending
	if err := db.QueryRow(context.Background(), `SELECT announced, opt_type, pending FROM pending_bindings`).Scan(&announced, &opt, &pending); err != nil {
		t.Fatal(err)
	}
	if announced || opt != "add" || pending.Identities[pipeline.KindPhone] != "13800000000" || fmt.Sprint(pending.Groups) != "[vip new]" {
		t.Fatalf("binding: announced %v, opt %s, pending %+v", announced, opt, pending)
	}

	late := lateRec(1, 0, pipeline.OptAdd, 10, "vip", "new")
	res = apply(t, s, late, late) // a duplicate in the chunk, too
	if res.LateMatched != 1 || res.Applied != 0 || res.Duplicates != 1 || len(res.Outcomes) != 0 {
		t.Fatalf("late match: %+v", res)
	}
	for range 2 { // redelivered later: nothing
		res = apply(t, s, late)
		if res.LateMatched != 0 || res.Duplicates != 1 {
			t.Fatalf("redelivered late match: %+v", res)
		}
	}
	if got := readBatch(t, db, 1); got != first {
		t.Fatalf("first counters changed: %+v, want %+v", got, first)
	}
	if got := readDefer(t, db, 1); got != (deferState{deferred: 1, lateMatched: 1, deferral: "LATE_MATCHED", updates: 1}) {
		t.Fatalf("after the late match: %+v", got)
	}
	if m := members(t, db); fmt.Sprint(m) != "[new/10 vip/10 vip/11]" {
		t.Fatalf("members %v", m)
	}
	var customer int64
	var by string
	if err := db.QueryRow(context.Background(), `SELECT customer_id, matched_by FROM batch_records WHERE batch_id = 1 AND rec_index = 0`).Scan(&customer, &by); err != nil {
		t.Fatal(err)
	}
	if customer != 10 || by != "phone" {
		t.Fatalf("ledger row: customer %d matched by %s", customer, by)
	}
}

// A late match may land while its batch is still PROCESSING: it counts,
// and the batch's batch.finished (not a batch.updated) reports it.
func TestLateMatchWhileProcessing(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	newBatch(t, db, 1, 2, "PROCESSING")
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "vip"))
	if res := apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "vip")); res.LateMatched != 1 || len(res.Finished) != 0 {
		t.Fatalf("late match: %+v", res)
	}
	if got := readDefer(t, db, 1); got != (deferState{deferred: 1, lateMatched: 1, deferral: "LATE_MATCHED"}) {
		t.Fatalf("after the late match: %+v", got)
	}
	// A late match and the record that finishes the batch in one chunk.
	newBatch(t, db, 2, 2, "PROCESSING")
	apply(t, s, deferredRec(2, 0, pipeline.OptAdd, "vip"))
	res := apply(t, s, lateRec(2, 0, pipeline.OptAdd, 20, "vip"), matched(1, 1, pipeline.OptAdd, 11, "vip"), matched(2, 1, pipeline.OptAdd, 21, "vip"))
	if res.LateMatched != 1 || res.Applied != 2 || len(res.Finished) != 2 {
		t.Fatalf("late match with finishing records: %+v", res)
	}
	for _, b := range []int64{1, 2} {
		if got := readDefer(t, db, b); got.updates != 0 || got.lateMatched != 1 {
			t.Fatalf("batch %d: %+v, want no batch.updated (batch.finished carries lateMatched)", b, got)
		}
	}
	if n := count(t, db, `SELECT count(*) FROM batch_events_outbox`); n != 2 {
		t.Fatalf("%d batch.finished rows, want 2", n)
	}
	if m := members(t, db); fmt.Sprint(m) != "[vip/10 vip/11 vip/20 vip/21]" {
		t.Fatalf("members %v", m)
	}
}

// A late match is applied at its record's original position: it never
// overrides a later batch's change of the same (group, customer), and it
// overrides an earlier one, whichever arrives first.
func TestLateMatchKeepsPositionOrder(t *testing.T) {
	add, del := pipeline.OptAdd, pipeline.OptDelete
	cases := []struct {
		name       string
		deferredOp pipeline.OptType // batch 2's deferred record
		otherBatch int64            // the other change's batch: 1 (earlier) or 3 (later)
		otherOp    pipeline.OptType
		lateFirst  bool // the late match arrives before the other change
		want       string
	}{
		{"late add, later delete, late first", add, 3, del, true, "[]"},
		{"late add, later delete, late last", add, 3, del, false, "[]"},
		{"late delete, later add, late first", del, 3, add, true, "[vip/10]"},
		{"late delete, later add, late last", del, 3, add, false, "[vip/10]"},
		{"late add, earlier delete, late first", add, 1, del, true, "[vip/10]"},
		{"late add, earlier delete, late last", add, 1, del, false, "[vip/10]"},
		{"late delete, earlier add, late first", del, 1, add, true, "[]"},
		{"late delete, earlier add, late last", del, 1, add, false, "[]"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			db, _ := schematest.NewPool(t)
			s := NewPGStore(db)
			for b := int64(1); b <= 3; b++ {
				newBatch(t, db, b, 1, "PROCESSING")
			}
			apply(t, s, deferredRec(2, 0, c.deferredOp, "vip"))
			other := matched(c.otherBatch, 0, c.otherOp, 10, "vip")
			late := lateRec(2, 0, c.deferredOp, 10, "vip")
			if c.lateFirst {
				apply(t, s, late)
				apply(t, s, other)
			} else {
				apply(t, s, other)
				apply(t, s, late)
			}
			apply(t, s, late) // redelivered: changes nothing
			if m := fmt.Sprint(members(t, db)); m != c.want {
				t.Fatalf("members %s, want %s", m, c.want)
			}
			if got := readDefer(t, db, 2); got.lateMatched != 1 || got.deferral != "LATE_MATCHED" {
				t.Fatalf("batch 2: %+v", got)
			}
		})
	}
}

// A late match of a binding that expired, or of a batch pruned since,
// changes nothing (and is no orphan: nothing is dead-lettered).
func TestLateMatchOfExpiredOrPrunedBindingIsNoOp(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	newBatch(t, db, 1, 1, "PROCESSING")
	newBatch(t, db, 2, 1, "PROCESSING")
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "vip"), deferredRec(2, 0, pipeline.OptAdd, "vip"))
	exec(t, db, `UPDATE pending_bindings SET expires_at = now() - interval '1 second' WHERE batch_id = 1`)
	exec(t, db, `DELETE FROM pending_identities WHERE batch_id = 2`)
	exec(t, db, `DELETE FROM pending_bindings WHERE batch_id = 2`)
	exec(t, db, `DELETE FROM batch_records WHERE batch_id = 2`)
	exec(t, db, `DELETE FROM batches WHERE batch_id = 2`)
	res := apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "vip"), lateRec(2, 0, pipeline.OptAdd, 20, "vip"))
	if res.LateMatched != 0 || res.Duplicates != 2 || len(res.Orphans) != 0 {
		t.Fatalf("late matches: %+v", res)
	}
	if got := readDefer(t, db, 1); got != (deferState{deferred: 1, bindings: 1, identities: 2, deferral: "PENDING"}) {
		t.Fatalf("expired binding: %+v", got)
	}
	if m := members(t, db); len(m) != 0 {
		t.Fatalf("members %v", m)
	}
}

// A late add that would make the tenant exceed its group limit applies
// nothing and ends its binding as EXPIRED, leaving the first counters.
func TestLateMatchOverGroupLimit(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	s.MaxGroupsPerTenant = 1
	newBatch(t, db, 1, 2, "PROCESSING")
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "new"), matched(1, 1, pipeline.OptAdd, 11, "vip"))
	res := apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "new"))
	if res.LateMatched != 0 {
		t.Fatalf("late match over the limit: %+v", res)
	}
	if got := readDefer(t, db, 1); got != (deferState{deferred: 1, deferral: "EXPIRED"}) {
		t.Fatalf("after the late match: %+v", got)
	}
	if b := readBatch(t, db, 1); b.success != 1 || b.unmatched != 1 || b.invalid != 0 {
		t.Fatalf("first counters changed: %+v", b)
	}
	if m := members(t, db); fmt.Sprint(m) != "[vip/11]" {
		t.Fatalf("members %v", m)
	}
}

// The Pruner keeps a batch with a pending binding and every tombstone
// positioned after the tenant's oldest binding, so a late match still
// loses to a later delete after pruning; it expires bindings past their
// TTL (ledger rows EXPIRED, identities gone) and counts them.
func TestPruneDeferred(t *testing.T) {
	db, _ := schematest.NewPool(t)
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	for b := int64(2); b <= 4; b++ {
		newBatch(t, db, b, 1, "PROCESSING")
	}
	apply(t, s, matched(2, 0, pipeline.OptDelete, 11, "vip")) // tombstone vip/11@2, before the binding
	apply(t, s, deferredRec(3, 0, pipeline.OptAdd, "vip"))    // the binding: add customer 10 to vip at (3, 0)
	apply(t, s, matched(4, 0, pipeline.OptDelete, 10, "vip")) // tombstone vip/10@4, after it
	exec(t, db, `UPDATE batches SET finished_at = now() - interval '40 days'`)
	exec(t, db, `DELETE FROM batch_events_outbox`) // published

	reg := prometheus.NewPedanticRegistry()
	m := NewPruneMetrics(reg)
	p := mustPruner(t, db, PruneConfig{Metrics: m})
	st, err := p.Prune(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Batches != 2 || st.Tombstones != 1 || st.ExpiredBindings != 0 || st.Overdue != 0 {
		t.Fatalf("first pass: %+v, want batches 2 and 4 and the tombstone of batch 2 pruned, batch 3 kept and not overdue", st)
	}
	if got := fmt.Sprint(tombstones(t, db)); got != "[vip/10@4]" {
		t.Fatalf("tombstones %s, want the one after the binding kept", got)
	}
	if got := readDefer(t, db, 3); got.bindings != 1 || got.deferral != "PENDING" {
		t.Fatalf("batch 3: %+v", got)
	}
	if res := apply(t, s, lateRec(3, 0, pipeline.OptAdd, 10, "vip")); res.LateMatched != 1 {
		t.Fatalf("late match: %+v", res)
	}
	if got := members(t, db); len(got) != 0 {
		t.Fatalf("members %v: the late add beat a later delete", got)
	}

	// Expiry.
	newBatch(t, db, 5, 1, "PROCESSING")
	apply(t, s, deferredRec(5, 0, pipeline.OptAdd, "vip"))
	exec(t, db, `UPDATE pending_bindings SET expires_at = now() - interval '1 second' WHERE batch_id = 5`)
	st, err = p.Prune(context.Background())
	if err != nil || st.ExpiredBindings != 1 {
		t.Fatalf("second pass: %+v, %v; want one binding expired", st, err)
	}
	if got := readDefer(t, db, 5); got != (deferState{deferred: 1, deferral: "EXPIRED"}) {
		t.Fatalf("batch 5 after expiry: %+v", got)
	}
	if res := apply(t, s, lateRec(5, 0, pipeline.OptAdd, 10, "vip")); res.LateMatched != 0 {
		t.Fatalf("late match after expiry: %+v", res)
	}
	if got := testutil.ToFloat64(m.PendingExpired); got != 1 {
		t.Fatalf("expired metric %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Pending); got != 0 {
		t.Fatalf("pending gauge %v, want 0", got)
	}
}

// The deferred-matching metrics exist at 0 from the start.
func TestDeferredMetricsStartAtZero(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	NewPruneMetrics(reg)
	want := `# HELP groupmatch_late_matches_total Pending bindings applied late, at their record's original position, once their customer was found.
# TYPE groupmatch_late_matches_total counter
groupmatch_late_matches_total{stage="sink"} 0
# HELP groupmatch_pending_bindings Pending bindings waiting for their customer, as PostgreSQL's statistics estimate them after the last pruning pass.
# TYPE groupmatch_pending_bindings gauge
groupmatch_pending_bindings{stage="sink"} 0
# HELP groupmatch_pending_bindings_expired_total Pending bindings (deferred NOT_FOUND records) that expired after --defer-ttl without a late match.
# TYPE groupmatch_pending_bindings_expired_total counter
groupmatch_pending_bindings_expired_total{stage="sink"} 0
# HELP groupmatch_pending_bindings_stored_total NOT_FOUND records of deferring batches kept as pending bindings.
# TYPE groupmatch_pending_bindings_stored_total counter
groupmatch_pending_bindings_stored_total{stage="sink"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "groupmatch_late_matches_total", "groupmatch_pending_bindings",
		"groupmatch_pending_bindings_expired_total", "groupmatch_pending_bindings_stored_total"); err != nil {
		t.Fatal(err)
	}
}

// Every statement of deferred matching (store, late match, relay, expiry)
// names its tenant (SPEC §12), as the statement guard judges the plans.
func TestDeferredStatementsNameTheirTenant(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	log := &schematest.StatementLog{}
	cfg.ConnConfig.Tracer = log
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	schematest.SkipOnCitus(t, db, "the guard plans on a plain PostgreSQL")
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	newBatch(t, db, 1, 2, "PROCESSING")
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "vip"), deferredRec(1, 1, pipeline.OptDelete, "vip"))
	// The relay's statements run (and are traced) before it writes to a
	// Kafka that is not there.
	r := mustRelay(t, db, RelayConfig{Brokers: []string{"127.0.0.1:1"}})
	defer r.w.Close()
	defer r.dir.Close()
	if _, err := r.announce(ctx); err == nil {
		t.Fatal("announced without Kafka")
	}
	apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "vip"))
	if _, err := r.publishUpdates(ctx); err == nil {
		t.Fatal("batch.updated published without Kafka")
	}
	exec(t, db, `UPDATE pending_bindings SET expires_at = now() - interval '1 second' WHERE tenant_id = $1`, tenant)
	if _, err := mustPruner(t, db, PruneConfig{Metrics: NewPruneMetrics(prometheus.NewRegistry())}).Prune(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err := db.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	bad, err := log.TenantFilterViolations(ctx, conn.Conn())
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("%d of %d statements without their tenant:\n%s", len(bad), log.Len(), strings.Join(bad, "\n"))
	}
}
