package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

const tenant = 1

// newBatch records a batch row in the given status.
func newBatch(t *testing.T, db *pgxpool.Pool, id int64, total int, status string) {
	t.Helper()
	_, err := db.Exec(context.Background(), `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES ($1, $2, 'app', 'add', '{}', $3, $4)`, id, tenant, status, total)
	if err != nil {
		t.Fatal(err)
	}
}

func matched(batch int64, index int, opt pipeline.OptType, customer int64, groups ...string) pipeline.ResolvedMessage {
	return pipeline.ResolvedMessage{V: 1, TenantID: tenant, BatchID: batch, Index: index, OptType: opt,
		Outcome: pipeline.OutcomeMatched, MatchedBy: pipeline.KindThirdID, CustomerID: customer, Groups: groups}
}

type batchRow struct {
	status                                                    string
	processed, success, unmatched, ambiguous, invalid, failed int
	groupsCreated, conflicts                                  int
}

func readBatch(t *testing.T, db *pgxpool.Pool, id int64) batchRow {
	t.Helper()
	var b batchRow
	err := db.QueryRow(context.Background(), `SELECT status, processed, success, unmatched, ambiguous, invalid, failed,
		groups_created, conflicts FROM batches WHERE batch_id = $1`, id).Scan(&b.status, &b.processed, &b.success,
		&b.unmatched, &b.ambiguous, &b.invalid, &b.failed, &b.groupsCreated, &b.conflicts)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// members returns "group/customer" of every present membership, sorted.
func members(t *testing.T, db *pgxpool.Pool) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `SELECT g.name, m.customer_id FROM memberships m
		JOIN groups g USING (tenant_id, group_id) WHERE m.present ORDER BY 1, 2`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var g string
		var c int64
		if err := rows.Scan(&g, &c); err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%s/%d", g, c))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestApplyCountsOnceAndFinishes(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	newBatch(t, db, 1, 4, "PROCESSING")
	chunk := []pipeline.ResolvedMessage{
		matched(1, 0, pipeline.OptAdd, 10, "vip", "new"),
		{V: 1, TenantID: tenant, BatchID: 1, Index: 1, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound,
			Ref: &pipeline.RecordRef{ThirdID: "x", Phone: "138****0000"}},
		matched(1, 0, pipeline.OptAdd, 10, "vip", "new"), // duplicate inside the chunk
	}
	res, err := s.Apply(ctx, chunk)
	if err != nil {
		t.Fatal(err)
	}
	if res.Applied != 2 || res.Duplicates != 1 || len(res.Finished) != 0 ||
		res.Outcomes[pipeline.OutcomeMatched] != 1 || res.Outcomes[pipeline.OutcomeNotFound] != 1 {
		t.Fatalf("first chunk: %+v", res)
	}
	// Redelivery of the whole chunk changes nothing.
	res, err = s.Apply(ctx, chunk)
	if err != nil || res.Applied != 0 || res.Duplicates != 3 || len(res.Outcomes) != 0 {
		t.Fatalf("redelivery: %+v, %v", res, err)
	}
	res, err = s.Apply(ctx, []pipeline.ResolvedMessage{
		{V: 1, TenantID: tenant, BatchID: 1, Index: 2, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeInvalid, Reason: pipeline.ReasonNoGroups},
		{V: 1, TenantID: tenant, BatchID: 1, Index: 3, OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonUndecodable},
	})
	if err != nil || len(res.Finished) != 1 || res.Finished[0].Status != "PARTIAL_SUCCESS" {
		t.Fatalf("last chunk: %+v, %v", res, err)
	}
	got := readBatch(t, db, 1)
	want := batchRow{status: "PARTIAL_SUCCESS", processed: 4, success: 1, unmatched: 1, invalid: 1, failed: 1, groupsCreated: 2}
	if got != want {
		t.Fatalf("batch row %+v, want %+v", got, want)
	}
	if m := members(t, db); fmt.Sprint(m) != "[new/10 vip/10]" {
		t.Fatalf("members %v", m)
	}
}

func TestApplyWaitsForPendingAndDropsAborted(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	newBatch(t, db, 1, 1, "PENDING")
	newBatch(t, db, 2, 1, "FAILED")
	if _, err := db.Exec(ctx, `UPDATE batches SET aborted = true WHERE batch_id = 2`); err != nil {
		t.Fatal(err)
	}
	_, err := s.Apply(ctx, []pipeline.ResolvedMessage{matched(1, 0, pipeline.OptAdd, 10, "vip")})
	if !errors.Is(err, ErrBatchPending) {
		t.Fatalf("pending batch: err %v, want ErrBatchPending", err)
	}
	res, err := s.Apply(ctx, []pipeline.ResolvedMessage{matched(2, 0, pipeline.OptAdd, 10, "vip")})
	if err != nil || res.Dropped != 1 || res.Applied != 0 {
		t.Fatalf("aborted batch: %+v, %v", res, err)
	}
	// A PENDING batch older than PendingTimeout is aborted by the sink.
	if _, err := db.Exec(ctx, `UPDATE batches SET accepted_at = now() - interval '1 hour' WHERE batch_id = 1`); err != nil {
		t.Fatal(err)
	}
	res, err = s.Apply(ctx, []pipeline.ResolvedMessage{matched(1, 0, pipeline.OptAdd, 10, "vip")})
	if err != nil || res.Dropped != 1 {
		t.Fatalf("stale pending batch: %+v, %v", res, err)
	}
	if b := readBatch(t, db, 1); b.status != "FAILED" || b.processed != 0 {
		t.Fatalf("stale batch row %+v", b)
	}
	if m := members(t, db); len(m) != 0 {
		t.Fatalf("aborted records were applied: %v", m)
	}
	// Unknown batches, other tenants' batches and out-of-range indexes are orphans.
	other := matched(1, 0, pipeline.OptAdd, 10, "vip")
	other.TenantID = 2
	res, err = s.Apply(ctx, []pipeline.ResolvedMessage{matched(99, 0, pipeline.OptAdd, 10, "vip"), other, matched(2, 5, pipeline.OptAdd, 1, "x")})
	if err != nil || fmt.Sprint(res.Orphans) != "[0 1 2]" {
		t.Fatalf("orphans: %+v, %v", res, err)
	}
}

// change is one membership change of the serial history.
type change struct {
	batch    int64
	index    int
	add      bool
	customer int64
	groups   []string
}

// serial applies the history in (batch, index) order: the reference.
func serial(history []change) []string {
	sorted := append([]change(nil), history...)
	sort.Slice(sorted, func(i, j int) bool {
		if sorted[i].batch != sorted[j].batch {
			return sorted[i].batch < sorted[j].batch
		}
		return sorted[i].index < sorted[j].index
	})
	state := map[string]bool{}
	for _, c := range sorted {
		for _, g := range c.groups {
			state[fmt.Sprintf("%s/%d", g, c.customer)] = c.add
		}
	}
	var out []string
	for k, present := range state {
		if present {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// Whatever order, chunking and duplication changes arrive in, the final
// memberships equal applying the batches one after another, and the
// counters count each record once.
func TestApplySerialEquivalence(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(7, 11))
	const batches, perBatch = 12, 40
	var history []change
	var msgs []pipeline.ResolvedMessage
	for b := int64(1); b <= batches; b++ {
		newBatch(t, db, b, perBatch, "PROCESSING")
		add := rng.IntN(2) == 0
		opt := pipeline.OptDelete
		if add {
			opt = pipeline.OptAdd
		}
		for i := range perBatch {
			c := change{batch: b, index: i, add: add, customer: int64(1 + rng.IntN(6))}
			for _, g := range []string{"a", "b", "c"} {
				if rng.IntN(2) == 0 {
					c.groups = append(c.groups, g)
				}
			}
			if len(c.groups) == 0 {
				c.groups = []string{"a"}
			}
			history = append(history, c)
			msgs = append(msgs, matched(b, i, opt, c.customer, c.groups...))
		}
	}
	// Deliver every message once in random order, then a third of them
	// again (redeliveries), in random chunk sizes.
	delivery := append([]pipeline.ResolvedMessage(nil), msgs...)
	rng.Shuffle(len(delivery), func(i, j int) { delivery[i], delivery[j] = delivery[j], delivery[i] })
	for _, i := range rng.Perm(len(msgs))[:len(msgs)/3] {
		delivery = append(delivery, msgs[i])
	}
	applied := 0
	for len(delivery) > 0 {
		n := min(len(delivery), 1+rng.IntN(60))
		res, err := s.Apply(ctx, delivery[:n])
		if err != nil {
			t.Fatal(err)
		}
		applied += res.Applied
		delivery = delivery[n:]
	}
	if applied != len(msgs) {
		t.Fatalf("applied %d records, want %d", applied, len(msgs))
	}
	if got, want := members(t, db), serial(history); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("memberships\n got %v\nwant %v", got, want)
	}
	for b := int64(1); b <= batches; b++ {
		if r := readBatch(t, db, b); r.status != "SUCCESS" || r.processed != perBatch || r.success != perBatch {
			t.Fatalf("batch %d: %+v", b, r)
		}
	}
	// Tombstones never show: only visible groups, and only present rows count.
	var listed int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM memberships WHERE NOT present`).Scan(&listed); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d tombstones kept for ordering", listed)
}

// Two sinks applying overlapping chunks at once (a rebalance) neither
// deadlock for good nor count twice.
func TestApplyConcurrentOverlap(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	var msgs []pipeline.ResolvedMessage
	for b := int64(1); b <= 4; b++ {
		newBatch(t, db, b, 100, "PROCESSING")
		for i := range 100 {
			msgs = append(msgs, matched(b, i, pipeline.OptAdd, int64(i%17+1), "g1", "g2", fmt.Sprintf("g%d", i%5+3)))
		}
	}
	applyShuffled(t, []*PGStore{s, s}, msgs, 50, 3)
	for b := int64(1); b <= 4; b++ {
		if r := readBatch(t, db, b); r.processed != 100 || r.success != 100 || r.status != "SUCCESS" {
			t.Fatalf("batch %d: %+v", b, r)
		}
	}
	var created int
	if err := db.QueryRow(ctx, `SELECT sum(groups_created) FROM batches`).Scan(&created); err != nil || created != 7 {
		t.Fatalf("groups created counted %d times, want 7 (%v)", created, err)
	}
}

// applyShuffled applies msgs through every store at once, each in its own
// random order (seeded by seed and its position) and in chunks of n,
// retrying transient failures (deadlocks, serialization failures between
// the stores) until each chunk applies; a permanent error fails t.
func applyShuffled(t *testing.T, stores []*PGStore, msgs []pipeline.ResolvedMessage, n int, seed uint64) {
	t.Helper()
	ctx := context.Background()
	errs := make(chan error, len(stores))
	for w, s := range stores {
		go func() {
			rng := rand.New(rand.NewPCG(uint64(w), seed))
			mine := append([]pipeline.ResolvedMessage(nil), msgs...)
			rng.Shuffle(len(mine), func(i, j int) { mine[i], mine[j] = mine[j], mine[i] })
			for len(mine) > 0 {
				k := min(len(mine), n)
				for {
					_, err := s.Apply(ctx, mine[:k])
					if err == nil {
						break
					}
					if !retry.Transient(err) {
						errs <- err
						return
					}
				}
				mine = mine[k:]
			}
			errs <- nil
		}()
	}
	for range stores {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// The bitmap read under the batch row's lock is the authority: a record
// whose bit another transaction set after Apply's unlocked read (here: a
// record applied before, handed to applyTenant as if that read were stale)
// is a duplicate. The transaction rolls back and runs again without it,
// so neither its membership change nor its counters happen twice.
func TestApplyRacedRecordIsDuplicate(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	newBatch(t, db, 1, 3, "PROCESSING")
	apply(t, s, matched(1, 0, pipeline.OptAdd, 10, "vip"))
	// Another group: had the stale copy applied, 10 would join it too.
	stale, fresh := matched(1, 0, pipeline.OptAdd, 10, "other"), matched(1, 1, pipeline.OptAdd, 11, "vip")
	res := ApplyResult{Outcomes: map[pipeline.Outcome]int{}}
	if err := s.applyTenant(ctx, tenant, []*pipeline.ResolvedMessage{&stale, &fresh}, &res); err != nil {
		t.Fatal(err)
	}
	if res.Applied != 1 || res.Duplicates != 1 || res.Outcomes[pipeline.OutcomeMatched] != 1 {
		t.Fatalf("result %+v, want 1 applied, 1 duplicate", res)
	}
	if m := fmt.Sprint(members(t, db)); m != "[vip/10 vip/11]" {
		t.Fatalf("members %s", m)
	}
	if b := readBatch(t, db, 1); b.processed != 2 || b.success != 2 || b.groupsCreated != 1 {
		t.Fatalf("batch %+v", b)
	}
	if b := appliedBits(t, db, 1); b != "110/2" {
		t.Fatalf("applied bits %s", b)
	}
	var groups int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM groups WHERE name = 'other'`).Scan(&groups); err != nil || groups != 0 {
		t.Fatalf("group of the duplicate created: %d, %v", groups, err)
	}
}

// Concurrent sink transactions naming the same visible groups do not wait
// for each other on the groups rows: while one transaction that applied a
// chunk to groups g1 and g2 is still open, another chunk naming them (other
// customers, another batch) applies and commits. A group only deletes name
// is still created, invisibly, and locked, as the Pruner relies on.
func TestApplyVisibleGroupsTakeNoLock(t *testing.T) {
	db, _ := schematest.NewPool(t)
	s := NewPGStore(db)
	ctx := context.Background()
	newBatch(t, db, 1, 2, "PROCESSING")
	newBatch(t, db, 2, 2, "PROCESSING")
	newBatch(t, db, 3, 2, "PROCESSING")
	if _, err := s.Apply(ctx, []pipeline.ResolvedMessage{
		matched(1, 0, pipeline.OptAdd, 1, "g1", "g2"), matched(1, 1, pipeline.OptAdd, 2, "g1"),
	}); err != nil {
		t.Fatal(err)
	}

	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	open := []*pipeline.ResolvedMessage{new(matched(2, 0, pipeline.OptAdd, 3, "g1", "g2")), new(matched(2, 1, pipeline.OptDelete, 4, "g2", "only-deleted"))}
	if _, err := applyMemberships(ctx, tx, tenant, open); err != nil {
		t.Fatal(err)
	}

	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := s.Apply(wait, []pipeline.ResolvedMessage{
		matched(3, 0, pipeline.OptAdd, 5, "g1", "g2"), matched(3, 1, pipeline.OptDelete, 6, "g2"),
	})
	if err != nil {
		t.Fatalf("a chunk naming visible groups waited for another transaction: %v", err)
	}
	if res.Applied != 2 {
		t.Fatalf("applied %d records, want 2", res.Applied)
	}
	if r := readBatch(t, db, 3); r.status != "SUCCESS" || r.groupsCreated != 0 {
		t.Fatalf("batch 3: %+v", r)
	}

	// The invisible group the open transaction created stays locked.
	var locked bool
	err = db.QueryRow(ctx, `SELECT NOT EXISTS (SELECT 1 FROM groups WHERE tenant_id = $1 AND name = 'only-deleted' FOR UPDATE SKIP LOCKED)`, tenant).Scan(&locked)
	if err != nil || !locked {
		t.Fatalf("the open transaction's invisible group is not locked (%v)", err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	var visible bool
	if err := db.QueryRow(ctx, `SELECT visible FROM groups WHERE tenant_id = $1 AND name = 'only-deleted'`, tenant).Scan(&visible); err != nil || visible {
		t.Fatalf("a group only a delete names: visible %v (%v), want invisible", visible, err)
	}
}
