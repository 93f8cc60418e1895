package sink

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// ErrBatchPending means a record's batch is not accepted yet (ingest is still
// writing its records to Kafka). It is transient: retry the chunk.
var ErrBatchPending = fmt.Errorf("sink: batch not yet accepted: %w", retry.ErrTransient)

// errBatchGone means a batch finished or was pruned between reading its
// state and applying its records; the retry reads the state again.
var errBatchGone = fmt.Errorf("sink: a batch finished or vanished while its records were applied: %w", retry.ErrTransient)

// Store applies chunks of resolved records. Implementations must make each
// record's effect happen once however often it is applied.
type Store interface {
	Apply(ctx context.Context, recs []pipeline.ResolvedMessage) (ApplyResult, error)
}

// ApplyResult says what a chunk did.
type ApplyResult struct {
	Applied int // records newly recorded in the ledger
	// Outcomes counts the newly recorded records by outcome.
	Outcomes   map[pipeline.Outcome]int
	Duplicates int // records the ledger had already
	Dropped    int // records of aborted batches, never applied
	// Orphans are positions (indexes into the chunk) of records whose batch
	// does not exist for their tenant, or has no such index; the caller
	// dead-letters them.
	Orphans  []int
	Finished []FinishedBatch // batches that reached a final status
	// PendingStored counts the new NOT_FOUND records kept as pending
	// bindings; LateMatched the late matches applied (SPEC §13).
	PendingStored, LateMatched int
}

// FinishedBatch is a batch that reached its final status in a chunk.
type FinishedBatch struct {
	BatchID  int64
	TenantID int64
	Status   string
	Latency  time.Duration // accept to final
	Counts   BatchCounts   // the batch's counters once final
}

// BatchCounts are a batch's record counters, as its batches row has them.
type BatchCounts struct {
	Total, Processed, Success, Unmatched, Ambiguous, Invalid, Failed int
}

// LogAttrs are the counters as slog attributes, with the batch's latency
// in seconds: what the "batch finished" log line carries. No identity
// value is among them.
func (f FinishedBatch) LogAttrs() []any {
	c := f.Counts
	return []any{"batch_id", f.BatchID, "tenant_id", f.TenantID, "status", f.Status,
		"total", c.Total, "processed", c.Processed, "success", c.Success, "unmatched", c.Unmatched,
		"ambiguous", c.Ambiguous, "invalid", c.Invalid, "failed", c.Failed, "latency_s", f.Latency.Seconds()}
}

// PGStore is the PostgreSQL Store.
type PGStore struct {
	db *pgxpool.Pool
	// PendingTimeout is how long a PENDING batch may wait for its ingest
	// to accept it before the sink aborts it; it must exceed ingest's
	// longest request.
	PendingTimeout time.Duration
	// MaxGroupsPerTenant is the most visible groups a tenant may have
	// (SPEC §10; default DefaultMaxGroupsPerTenant). An add that would
	// create more leaves its record INVALID with pipeline.ReasonGroupLimit
	// and creates none of its groups; adding to existing groups is always
	// allowed. Lowering it removes no group.
	MaxGroupsPerTenant int
	// DeferTTL is how long a pending binding waits for its customer
	// (SPEC §13; default pipeline.DefaultDeferTTL): its expires_at is the
	// time its NOT_FOUND record was recorded plus DeferTTL.
	DeferTTL time.Duration
}

// DefaultMaxGroupsPerTenant is PGStore.MaxGroupsPerTenant's default.
const DefaultMaxGroupsPerTenant = 10000

var _ Store = (*PGStore)(nil)

// NewPGStore returns a store on db.
func NewPGStore(db *pgxpool.Pool) *PGStore {
	return &PGStore{db: db, PendingTimeout: pipeline.DefaultPendingTimeout, MaxGroupsPerTenant: DefaultMaxGroupsPerTenant,
		DeferTTL: pipeline.DefaultDeferTTL}
}

type batchState struct {
	tenantID int64
	status   string
	aborted  bool
	stale    bool
	total    int
	done     []byte // the applied bitmap as read (unlocked): a hint
}

// bitSet reports whether record index i's bit is set in the applied
// bitmap done (batches.done; bit i is PostgreSQL's get_bit(done, i)).
func bitSet(done []byte, i int) bool {
	return i >= 0 && i/8 < len(done) && done[i/8]&(1<<(i%8)) != 0
}

// setBit sets record index i's bit in done, which must hold it.
func setBit(done []byte, i int) {
	done[i/8] |= 1 << (i % 8)
}

type ledgerKey struct {
	batch int64
	index int
}

// liveKey tells a record's first verdict from a late match of the same
// position: both may be in one chunk (redelivery), and each is applied
// by its own rule.
type liveKey struct {
	ledgerKey
	late bool
}

// Apply writes a chunk, one transaction per tenant (on Citus a transaction
// stays in one tenant's shard): group creation, membership changes guarded
// by position (the highest (batch, index) wins, deletes leave tombstones),
// then, under the batch rows' locks, the ledger rows of the records that did
// not apply (failures, for the failures page) and one counter update per
// batch that also sets the records' bits in the batch's applied bitmap
// (batches.done). A record whose bit is set is a duplicate: the bitmap read
// with the batch states filters them first, and the bitmap read again
// under the lock decides (a record applied meanwhile by a concurrent
// transaction rolls the tenant's transaction back, and it runs again
// without that record, counted a duplicate). Each record's bit, effect and
// counters share a transaction, so each takes effect once. A chunk holding
// a record of a batch still PENDING fails with ErrBatchPending and changes
// nothing.
// When a later tenant's transaction fails, the tenants before it stay
// applied and Apply returns the error: applying the chunk again finds their
// records' bits set (duplicates). Records of finished batches are
// duplicates, decided from the status; records of aborted batches are
// dropped; records of batches the tenant does not have (never, or no
// longer: see Pruner) are orphans.
func (s *PGStore) Apply(ctx context.Context, recs []pipeline.ResolvedMessage) (ApplyResult, error) {
	var res ApplyResult
	batches, err := s.batchStates(ctx, recs)
	if err != nil {
		return res, err
	}
	// Keep the records that can be applied, first copy of each position.
	seen := make(map[liveKey]bool, len(recs))
	live := make([]*pipeline.ResolvedMessage, 0, len(recs))
	for i := range recs {
		r := &recs[i]
		st, ok := batches[r.BatchID]
		switch {
		case r.Late && r.Outcome != pipeline.OutcomeMatched:
			res.Orphans = append(res.Orphans, i) // no such verdict exists (resolved.schema.json)
			continue
		case r.Late && (!ok || st.tenantID != r.TenantID || r.Index >= st.total || st.aborted || st.status == "PENDING"):
			// A late match of a batch pruned since (with its binding),
			// or that never had the position: nothing waits for it.
			res.Duplicates++
			continue
		case r.Late:
			// Applied whatever the batch's status: the ledger's
			// deferral state and the binding decide (applyLate).
		case !ok || st.tenantID != r.TenantID || r.Index >= st.total:
			res.Orphans = append(res.Orphans, i)
			continue
		case st.aborted:
			res.Dropped++
			continue
		case st.status == "PENDING":
			return ApplyResult{}, ErrBatchPending
		case st.status != "PROCESSING":
			// Finished: every record of the batch has its bit (a batch
			// finishes when processed = total, and the bitmap and the
			// counters change together), so this one is a duplicate.
			// Deciding it here keeps it one after Prune deleted the
			// batch.
			res.Duplicates++
			continue
		case bitSet(st.done, r.Index):
			res.Duplicates++ // applied already (the lock checks again)
			continue
		}
		k := liveKey{ledgerKey{r.BatchID, r.Index}, r.Late}
		if seen[k] {
			res.Duplicates++
			continue
		}
		seen[k] = true
		live = append(live, r)
	}
	res.Outcomes = make(map[pipeline.Outcome]int, 4)
	if len(live) == 0 {
		return res, nil
	}
	slices.SortFunc(live, func(a, b *pipeline.ResolvedMessage) int {
		return cmp.Or(cmp.Compare(a.TenantID, b.TenantID), cmp.Compare(a.BatchID, b.BatchID), cmp.Compare(a.Index, b.Index))
	})
	for len(live) > 0 {
		n := 1
		for n < len(live) && live[n].TenantID == live[0].TenantID {
			n++
		}
		if err := s.applyTenant(ctx, live[0].TenantID, live[:n], &res); err != nil {
			return ApplyResult{}, fmt.Errorf("sink: apply chunk: %w", err)
		}
		live = live[n:]
	}
	return res, nil
}

// errApplyRaced rolls back a tenant's transaction that found, under the
// batch rows' locks, records of its own already applied: by a concurrent
// transaction (a redelivery applied by another sink) or a Deadline that
// finished their batch since the bitmaps were read without a lock.
// applyTenant runs the transaction again without them.
var errApplyRaced = errors.New("sink: records applied concurrently")

// applyTenant writes one tenant's live records, in (batch, index) order, in
// one transaction, adding what it did to res once it committed.
//
// Lock order, the same in every transaction that changes a batch's records:
// pending bindings, then existing ledger rows (claimLate; the Pruner's
// expiry likewise), then the tenant's group-limit lock (limitGroups), then
// groups and memberships in key order, then the batches rows in batch id
// order (lockBatches, as Deadline.finish), and only then new ledger rows and
// bindings: a new ledger row is written only under its batch row's lock,
// after its bit was found clear, so no insert ever waits for another.
func (s *PGStore) applyTenant(ctx context.Context, tenantID int64, live []*pipeline.ResolvedMessage, res *ApplyResult) error {
	first := make([]*pipeline.ResolvedMessage, 0, len(live))
	var late []*pipeline.ResolvedMessage
	for _, r := range live {
		if r.Late {
			late = append(late, r)
		} else {
			first = append(first, r)
		}
	}
	var t tenantTx
	dups := 0
	for {
		var err error
		t, err = s.applyTenantTx(ctx, tenantID, first, late)
		if !errors.Is(err, errApplyRaced) {
			if err != nil {
				return err
			}
			break
		}
		// Each round drops at least one record: the loop ends.
		first = slices.DeleteFunc(first, func(r *pipeline.ResolvedMessage) bool { return t.raced[ledgerKey{r.BatchID, r.Index}] })
		dups += len(t.raced)
	}
	res.Applied += len(t.fresh)
	res.Duplicates += dups + len(late) - len(t.moved)
	for _, r := range t.fresh {
		res.Outcomes[r.Outcome]++
	}
	res.Finished = append(res.Finished, t.finished...)
	res.PendingStored += t.stored
	res.LateMatched += len(t.moved)
	return nil
}

// tenantTx is what one try of applyTenant's transaction did: its first
// verdicts recorded (fresh, as limitGroups left them), its late matches
// applied (moved), the batches it finished and the pending bindings it
// stored; or, when it rolled back with errApplyRaced, the records another
// transaction had applied meanwhile (raced).
type tenantTx struct {
	fresh, moved []*pipeline.ResolvedMessage
	finished     []FinishedBatch
	stored       int
	raced        map[ledgerKey]bool
}

// applyTenantTx is one try of applyTenant's transaction. It fails with
// errApplyRaced, naming the records concerned in raced, when records of
// first had their outcomes recorded by another transaction meanwhile.
func (s *PGStore) applyTenantTx(ctx context.Context, tenantID int64, first, late []*pipeline.ResolvedMessage) (tenantTx, error) {
	var t tenantTx
	err := pgx.BeginFunc(ctx, s.db, func(tx pgx.Tx) error {
		now := time.Now()
		t = tenantTx{}
		m, err := claimLate(ctx, tx, tenantID, late, now)
		if err != nil {
			return err
		}
		if len(first) == 0 && len(m) == 0 {
			return nil
		}
		// Late matches join the first verdicts at their original
		// positions: the group limit and the position guard judge both.
		// limitGroups replaces the records it refuses in apply, so fresh
		// and moved are read from apply afterwards.
		apply := make([]*pipeline.ResolvedMessage, 0, len(first)+len(m))
		apply = append(append(apply, first...), m...)
		if err := limitGroups(ctx, tx, tenantID, apply, s.MaxGroupsPerTenant); err != nil {
			return err
		}
		f := apply[:len(first)]
		created, err := applyMemberships(ctx, tx, tenantID, apply)
		if err != nil {
			return err
		}
		locked, err := lockBatches(ctx, tx, tenantID, apply)
		if err != nil {
			return err
		}
		var fin []FinishedBatch
		if len(f) > 0 {
			// The authority: a record whose bit is set now, or whose
			// batch finished (every bit set), was applied meanwhile.
			for _, r := range f {
				lb, ok := locked[r.BatchID]
				if ok && (bitSet(lb.done, r.Index) || lb.status != "PROCESSING") {
					if t.raced == nil {
						t.raced = make(map[ledgerKey]bool)
					}
					t.raced[ledgerKey{r.BatchID, r.Index}] = true
				}
			}
			if t.raced != nil {
				return errApplyRaced
			}
			if err := insertLedger(ctx, tx, tenantID, f); err != nil {
				return err
			}
			if t.stored, err = storePending(ctx, tx, tenantID, f, now.Add(s.DeferTTL)); err != nil {
				return err
			}
			if fin, err = updateCounters(ctx, tx, tenantID, f, created, now, locked); err != nil {
				return err
			}
		}
		m, err = finishLate(ctx, tx, tenantID, apply[len(f):], fin)
		if err != nil {
			return err
		}
		t.fresh, t.moved, t.finished = f, m, fin
		return nil
	})
	return t, err
}

// lockedBatch is a batch row as read under its lock.
type lockedBatch struct {
	status string
	total  int
	done   []byte // the applied bitmap
}

// lockBatches locks the tenant's batches rows of recs in batch id order, so
// that no two sink transactions (first verdicts and late matches alike) nor
// a sink and a Deadline wait for each other in opposite orders, and returns
// them as locked: their applied bitmaps are the authority on which records
// have had their outcome.
func lockBatches(ctx context.Context, tx pgx.Tx, tenantID int64, recs []*pipeline.ResolvedMessage) (map[int64]lockedBatch, error) {
	ids := make([]int64, 0, 4)
	for _, r := range recs {
		if !slices.Contains(ids, r.BatchID) {
			ids = append(ids, r.BatchID)
		}
	}
	rows, err := tx.Query(ctx, `SELECT batch_id, status, total, done FROM batches
		WHERE tenant_id = $1 AND batch_id = ANY($2) ORDER BY batch_id FOR UPDATE`, tenantID, ids)
	if err != nil {
		return nil, fmt.Errorf("sink: lock batches: %w", err)
	}
	out := make(map[int64]lockedBatch, len(ids))
	for rows.Next() {
		var id int64
		var b lockedBatch
		if err := rows.Scan(&id, &b.status, &b.total, &b.done); err != nil {
			return nil, fmt.Errorf("sink: lock batches: %w", err)
		}
		out[id] = b
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sink: lock batches: %w", err)
	}
	return out, nil
}

// batchStates reads the batches of a chunk, by (tenant, batch id), aborting
// those PENDING for longer than PendingTimeout (their ingest died before
// accepting them).
func (s *PGStore) batchStates(ctx context.Context, recs []pipeline.ResolvedMessage) (map[int64]batchState, error) {
	ids := make([]int64, 0, 4)
	tenants := make([]int64, 0, 1)
	for i := range recs {
		if !slices.Contains(ids, recs[i].BatchID) {
			ids = append(ids, recs[i].BatchID)
		}
		if !slices.Contains(tenants, recs[i].TenantID) {
			tenants = append(tenants, recs[i].TenantID)
		}
	}
	out := make(map[int64]batchState, len(ids))
	stale := make(map[int64][]int64) // tenant -> its stale batches
	rows, err := s.db.Query(ctx, `
		SELECT batch_id, tenant_id, status, aborted, total, accepted_at < $3, done
		FROM batches WHERE tenant_id = ANY($1) AND batch_id = ANY($2)`, tenants, ids, time.Now().Add(-s.PendingTimeout))
	if err != nil {
		return nil, fmt.Errorf("sink: read batches: %w", err)
	}
	for rows.Next() {
		var id int64
		var st batchState
		if err := rows.Scan(&id, &st.tenantID, &st.status, &st.aborted, &st.total, &st.stale, &st.done); err != nil {
			return nil, fmt.Errorf("sink: read batches: %w", err)
		}
		if st.status == "PENDING" && st.stale {
			stale[st.tenantID] = append(stale[st.tenantID], id)
		}
		out[id] = st
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sink: read batches: %w", err)
	}
	// The same compare-and-set ingest uses: exactly one of accept and
	// abort wins. One statement per tenant, each its own transaction.
	for tenant, ids := range stale {
		aborted, err := abortPending(ctx, s.db, tenant, ids, time.Now())
		if err != nil {
			return nil, fmt.Errorf("sink: abort stale batches: %w", err)
		}
		for _, id := range aborted {
			st := out[id]
			st.status, st.aborted = "FAILED", true
			out[id] = st
		}
		// A stale batch that was accepted meanwhile is read again next time.
		if len(aborted) < len(ids) {
			return nil, ErrBatchPending
		}
	}
	return out, nil
}

// abortPending marks those of one tenant's batches that are still PENDING
// FAILED and aborted, as of now, and returns their ids.
func abortPending(ctx context.Context, db interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}, tenantID int64, ids []int64, now time.Time) ([]int64, error) {
	rows, err := db.Query(ctx, `
		UPDATE batches SET status = 'FAILED', aborted = true, finished_at = $3, idempotency_key = NULL
		WHERE tenant_id = $1 AND batch_id = ANY($2) AND status = 'PENDING' RETURNING batch_id`, tenantID, ids, now)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[int64])
}

// insertLedger writes the ledger rows of one tenant's fresh records that
// did not apply (every outcome but MATCHED, GROUP_LIMIT refusals included):
// what the failures page, errorCounts and deferred matching read. A MATCHED
// record writes no row: its bit in the batch's applied bitmap is its only
// trace. Called under the batches rows' locks, after the records' bits were
// found clear, so no row of them exists (a row is written only with its
// bit) and the plain INSERT waits for nobody.
func insertLedger(ctx context.Context, tx pgx.Tx, tenantID int64, recs []*pipeline.ResolvedMessage) error {
	var (
		batchIDs                               []int64
		indexes                                []int32
		outcomes, reasons, matchedBy, deferral []string
		customers                              []int64
		refs                                   [][]byte
	)
	for _, r := range recs {
		if r.Outcome == pipeline.OutcomeMatched {
			continue
		}
		d := ""
		if r.Outcome == pipeline.OutcomeNotFound && r.Pending != nil {
			d = "PENDING"
		}
		var ref []byte
		if r.Ref != nil {
			b, err := json.Marshal(r.Ref)
			if err != nil {
				return fmt.Errorf("sink: encode ref: %w", err)
			}
			ref = b
		}
		batchIDs, indexes = append(batchIDs, r.BatchID), append(indexes, int32(r.Index))
		outcomes, reasons, matchedBy = append(outcomes, string(r.Outcome)), append(reasons, string(r.Reason)), append(matchedBy, string(r.MatchedBy))
		customers, refs, deferral = append(customers, r.CustomerID), append(refs, ref), append(deferral, d)
	}
	if len(batchIDs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO batch_records (tenant_id, batch_id, rec_index, outcome, reason, matched_by, customer_id, ref, deferral)
		SELECT $1, b, i, o, nullif(r, ''), nullif(m, ''), nullif(c, 0), j, nullif(d, '')
		FROM unnest($2::bigint[], $3::int[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::jsonb[], $9::text[]) AS u(b, i, o, r, m, c, j, d)`,
		tenantID, batchIDs, indexes, outcomes, reasons, matchedBy, customers, refs, deferral); err != nil {
		return fmt.Errorf("sink: insert ledger: %w", err)
	}
	return nil
}

// groupLimitLockClass is the first key of the transaction-scoped advisory
// lock pg_advisory_xact_lock(groupLimitLockClass, hashint8(tenant_id)) that
// serialises the transactions creating groups for one tenant. The two-key
// form lives apart from the one-key locks of the matcher and migrations.
const groupLimitLockClass = 0x67726f75 // "grou"

// limitGroups enforces limit, the most visible groups per tenant, on recs,
// one tenant's records new to the bitmap in (batch id, record index) order.
// Each matched add that would make the tenant exceed the limit by creating
// (or making visible) groups is replaced in recs by a copy that is INVALID
// with pipeline.ReasonGroupLimit (insertLedger then writes its ledger row,
// finishLate expires a late one's); it creates no group and no
// membership, and counts as invalid. Records
// are judged in order, each against the groups of earlier ones, so which
// records of a chunk pass is deterministic. The *ResolvedMessage values
// themselves are never modified: Apply may run the chunk again.
//
// Guarantee: a tenant never has more than limit visible groups, however
// many sink transactions run at once, unless it had them before (a lowered
// limit removes nothing). One query per chunk reads which named groups are
// visible already; only when some add would create a group does the
// transaction take the tenant's advisory lock, then count the tenant's
// visible groups and read the named ones again in later statements, which
// in READ COMMITTED see every creation committed before the lock was
// granted. A transaction that creates groups always holds that lock until
// it commits; one that creates none never waits for it. Groups made
// invisibly by deletes (tombstone holders) are not counted.
//
// The lock statement names no table, so on Citus it runs on the
// coordinator, inside the transaction's coordinator part; every sink
// connects to the coordinator, so the lock serialises them all (a worker's
// advisory locks would not), and it is released only when the coordinator
// commits, after the tenant's shard committed.
func limitGroups(ctx context.Context, tx pgx.Tx, tenantID int64, recs []*pipeline.ResolvedMessage, limit int) error {
	var wanted []string
	seen := make(map[string]bool)
	for _, r := range recs {
		if r.Outcome != pipeline.OutcomeMatched || r.OptType != pipeline.OptAdd {
			continue
		}
		for _, g := range r.Groups {
			if !seen[g] {
				seen[g] = true
				wanted = append(wanted, g)
			}
		}
	}
	if len(wanted) == 0 {
		return nil
	}
	visible, err := visibleGroups(ctx, tx, tenantID, wanted)
	if err != nil {
		return err
	}
	wanted = slices.DeleteFunc(wanted, func(g string) bool { return visible[g] })
	if len(wanted) == 0 {
		return nil // the chunk creates no group
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1::int, hashint8($2::bigint))`, groupLimitLockClass, tenantID); err != nil {
		return fmt.Errorf("sink: lock group limit: %w", err)
	}
	var count int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM groups WHERE tenant_id = $1 AND visible`, tenantID).Scan(&count); err != nil {
		return fmt.Errorf("sink: count groups: %w", err)
	}
	// Groups may have been created while this transaction waited.
	since, err := visibleGroups(ctx, tx, tenantID, wanted)
	if err != nil {
		return err
	}
	maps.Copy(visible, since)
	allotted := make(map[string]bool)
	for i, r := range recs {
		if r.Outcome != pipeline.OutcomeMatched || r.OptType != pipeline.OptAdd {
			continue
		}
		need := 0
		for j, g := range r.Groups {
			if !visible[g] && !allotted[g] && !slices.Contains(r.Groups[:j], g) {
				need++
			}
		}
		if need == 0 {
			continue
		}
		if count+need > limit {
			c := *r
			c.Outcome, c.Reason, c.MatchedBy, c.CustomerID, c.Conflict, c.Groups = pipeline.OutcomeInvalid, pipeline.ReasonGroupLimit, "", 0, false, nil
			recs[i] = &c
			continue
		}
		count += need
		for _, g := range r.Groups {
			allotted[g] = true
		}
	}
	return nil
}

// visibleGroups reports which of the tenant's names are visible groups.
func visibleGroups(ctx context.Context, tx pgx.Tx, tenantID int64, names []string) (map[string]bool, error) {
	out := make(map[string]bool, len(names))
	if len(names) == 0 {
		return out, nil
	}
	rows, err := tx.Query(ctx, `SELECT name FROM groups WHERE tenant_id = $1 AND name = ANY($2) AND visible`, tenantID, names)
	if err != nil {
		return nil, fmt.Errorf("sink: read visible groups: %w", err)
	}
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return nil, fmt.Errorf("sink: read visible groups: %w", err)
		}
		out[name] = true
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sink: read visible groups: %w", err)
	}
	return out, nil
}

type memberKey struct {
	group    int64
	customer int64
}

type memberChange struct {
	present bool
	batch   int64
	index   int
}

// groupUse is how a chunk uses one group name. A late match (SPEC §13)
// creates groups too, but counts them for no batch: a batch's
// groupsCreated is one of its first counters.
type groupUse struct {
	add      bool
	addBatch int64 // the first batch adding to it; 0: only late matches do
}

// visibleGroupIDs returns the ids of those of the tenant's names that are
// visible groups. It locks nothing: a visible group is never changed nor
// deleted.
func visibleGroupIDs(ctx context.Context, tx pgx.Tx, tenantID int64, names []string) (map[string]int64, error) {
	ids := make(map[string]int64, len(names))
	err := readGroupIDs(ctx, tx, `SELECT name, group_id FROM groups WHERE tenant_id = $1 AND name = ANY($2) AND visible`, tenantID, names, ids)
	return ids, err
}

// readGroupIDs adds to ids the (name, group_id) rows query returns for the
// tenant ($1) and names ($2).
func readGroupIDs(ctx context.Context, tx pgx.Tx, query string, tenantID int64, names []string, ids map[string]int64) error {
	rows, err := tx.Query(ctx, query, tenantID, names)
	if err != nil {
		return fmt.Errorf("sink: read groups: %w", err)
	}
	for rows.Next() {
		var name string
		var id int64
		if err := rows.Scan(&name, &id); err != nil {
			return fmt.Errorf("sink: read groups: %w", err)
		}
		ids[name] = id
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sink: read groups: %w", err)
	}
	return nil
}

// upsertGroups creates or makes visible the groups of names (sorted; none
// a visible group) as uses says, adding their ids to ids and, per batch,
// the groups each made visible to created. A delete of a group nobody
// added creates it invisibly, so its tombstones order later adds; an add
// makes it visible ("created"). Every group named is locked until the
// transaction ends, which the Pruner's deletion of invisible groups
// relies on.
func upsertGroups(ctx context.Context, tx pgx.Tx, tenantID int64, names []string, uses map[string]groupUse,
	ids map[string]int64, created map[int64]int) error {
	visible := make([]bool, len(names))
	for i, n := range names {
		visible[i] = uses[n].add
	}
	rows, err := tx.Query(ctx, `
		INSERT INTO groups (tenant_id, name, visible)
		SELECT $1, n, v FROM unnest($2::text[], $3::bool[]) AS u(n, v) ORDER BY n
		ON CONFLICT (tenant_id, name) DO UPDATE SET visible = true
		WHERE NOT groups.visible AND excluded.visible
		RETURNING name, group_id, visible`, tenantID, names, visible)
	if err != nil {
		return fmt.Errorf("sink: upsert groups: %w", err)
	}
	got := 0
	for rows.Next() {
		var name string
		var id int64
		var vis bool
		if err := rows.Scan(&name, &id, &vis); err != nil {
			return fmt.Errorf("sink: upsert groups: %w", err)
		}
		ids[name] = id
		got++
		if vis && uses[name].addBatch != 0 {
			created[uses[name].addBatch]++
		}
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("sink: upsert groups: %w", err)
	}
	if got == len(names) {
		return nil
	}
	// Invisible groups that only deletes name: the upsert locked them but
	// returned nothing.
	var rest []string
	for _, n := range names {
		if _, ok := ids[n]; !ok {
			rest = append(rest, n)
		}
	}
	return readGroupIDs(ctx, tx, `SELECT name, group_id FROM groups WHERE tenant_id = $1 AND name = ANY($2)`, tenantID, rest, ids)
}

// applyMemberships creates the tenant's groups that adds name, then writes
// each (group, customer) change guarded by position. It returns, per batch,
// how many groups the batch made visible.
func applyMemberships(ctx context.Context, tx pgx.Tx, tenantID int64, recs []*pipeline.ResolvedMessage) (map[int64]int, error) {
	// Groups named, with the first batch that adds to each.
	uses := make(map[string]groupUse)
	for _, r := range recs {
		if r.Outcome != pipeline.OutcomeMatched {
			continue
		}
		for _, g := range r.Groups {
			u := uses[g]
			if r.OptType == pipeline.OptAdd {
				u.add = true
				if !r.Late && (u.addBatch == 0 || r.BatchID < u.addBatch) {
					u.addBatch = r.BatchID
				}
			}
			uses[g] = u
		}
	}
	created := make(map[int64]int)
	if len(uses) == 0 {
		return created, nil
	}
	names := slices.Sorted(maps.Keys(uses))
	// A visible group is never changed nor deleted (the Pruner deletes
	// invisible ones only), so reading it takes no lock: concurrent sink
	// transactions naming the same groups do not wait for each other here.
	ids, err := visibleGroupIDs(ctx, tx, tenantID, names)
	if err != nil {
		return nil, err
	}
	names = slices.DeleteFunc(names, func(n string) bool { _, ok := ids[n]; return ok })
	if len(names) > 0 {
		if err := upsertGroups(ctx, tx, tenantID, names, uses, ids, created); err != nil {
			return nil, err
		}
	}

	// One change per (group, customer): the highest position in the chunk.
	changes := make(map[memberKey]memberChange)
	for _, r := range recs {
		if r.Outcome != pipeline.OutcomeMatched {
			continue
		}
		for _, g := range r.Groups {
			id, ok := ids[g]
			if !ok {
				return nil, fmt.Errorf("sink: group of batch %d vanished", r.BatchID)
			}
			k := memberKey{id, r.CustomerID}
			c, ok := changes[k]
			if !ok || r.BatchID > c.batch || (r.BatchID == c.batch && r.Index > c.index) {
				changes[k] = memberChange{present: r.OptType == pipeline.OptAdd, batch: r.BatchID, index: r.Index}
			}
		}
	}
	mkeys := make([]memberKey, 0, len(changes))
	for k := range changes {
		mkeys = append(mkeys, k)
	}
	slices.SortFunc(mkeys, func(a, b memberKey) int {
		return cmp.Or(cmp.Compare(a.group, b.group), cmp.Compare(a.customer, b.customer))
	})
	n := len(mkeys)
	groupIDs, customerIDs := make([]int64, n), make([]int64, n)
	present, batchIDs, indexes := make([]bool, n), make([]int64, n), make([]int32, n)
	for i, k := range mkeys {
		c := changes[k]
		groupIDs[i], customerIDs[i] = k.group, k.customer
		present[i], batchIDs[i], indexes[i] = c.present, c.batch, int32(c.index)
	}
	_, err = tx.Exec(ctx, `
		INSERT INTO memberships (tenant_id, group_id, customer_id, present, batch_id, rec_index)
		SELECT $1, g, c, p, b, i FROM unnest($2::bigint[], $3::bigint[], $4::bool[], $5::bigint[], $6::int[]) AS u(g, c, p, b, i)
		ON CONFLICT (tenant_id, group_id, customer_id) DO UPDATE
		SET present = excluded.present, batch_id = excluded.batch_id, rec_index = excluded.rec_index
		WHERE (memberships.batch_id, memberships.rec_index) < (excluded.batch_id, excluded.rec_index)`,
		tenantID, groupIDs, customerIDs, present, batchIDs, indexes)
	if err != nil {
		return nil, fmt.Errorf("sink: write memberships: %w", err)
	}
	return created, nil
}

// updateCountersSQL adds one chunk's increments (arrays $4 on, one element
// per batch of $3) to the tenant's ($1) batches still processing, sets
// their applied bitmaps (done, the last parameter: each batch's bitmap as
// read under its lock with the chunk's bits set), finishing
// as of $2 those whose every record has an outcome. matched_by is an
// integer array indexed by kind ordinal (1-based in SQL); an element a row
// lacks (a kind added after the row was written) reads as 0. Built from
// pipeline.IdentityKinds; never modified.
var updateCountersSQL = counterUpdate()

func counterUpdate() string {
	var matched, params, names strings.Builder
	for o := range pipeline.IdentityKinds {
		if o > 0 {
			matched.WriteString(", ")
		}
		fmt.Fprintf(&matched, "coalesce(b.matched_by[%d], 0) + d.m%d", o+1, o)
		fmt.Fprintf(&params, ", $%d::int[]", 13+o)
		fmt.Fprintf(&names, ", m%d", o)
	}
	fmt.Fprintf(&params, ", $%d::bytea[]", 13+pipeline.NumKinds)
	names.WriteString(", done")
	return `
		UPDATE batches b SET
			processed = b.processed + d.processed,
			success = b.success + d.success,
			unmatched = b.unmatched + d.unmatched,
			ambiguous = b.ambiguous + d.ambiguous,
			invalid = b.invalid + d.invalid,
			failed = b.failed + d.failed,
			matched_by = ARRAY[` + matched.String() + `],
			groups_created = b.groups_created + d.groups_created,
			conflicts = b.conflicts + d.conflicts,
			deferred = b.deferred + d.deferred,
			done = d.done,
			status = CASE
				WHEN b.processed + d.processed < b.total THEN b.status
				WHEN b.success + d.success = b.total THEN 'SUCCESS'
				WHEN b.success + d.success = 0 THEN 'FAILED'
				ELSE 'PARTIAL_SUCCESS' END,
			finished_at = CASE WHEN b.processed + d.processed = b.total THEN $2::timestamptz END
		FROM unnest($3::bigint[], $4::int[], $5::int[], $6::int[], $7::int[], $8::int[], $9::int[],
			$10::int[], $11::int[], $12::int[]` + params.String() + `)
			AS d(batch_id, processed, success, unmatched, ambiguous, invalid, failed,
			     groups_created, conflicts, deferred` + names.String() + `)
		WHERE b.tenant_id = $1 AND b.batch_id = d.batch_id AND b.status = 'PROCESSING'
		RETURNING b.batch_id, b.status, b.accepted_at, b.finished_at,
			b.total, b.processed, b.success, b.unmatched, b.ambiguous, b.invalid, b.failed`
}

// counters is one batch's increments from one chunk.
type counters struct {
	processed, success, unmatched, ambiguous, invalid, failed int32
	conflicts, groupsCreated, deferred                        int32
	// byKind counts the matched records by the ordinal of their
	// matchedBy kind (pipeline.IdentityKinds).
	byKind [pipeline.NumKinds]int32
}

func (c *counters) count(r *pipeline.ResolvedMessage) {
	c.processed++
	switch r.Outcome {
	case pipeline.OutcomeMatched:
		c.success++
		if o := pipeline.KindOrdinal(r.MatchedBy); o >= 0 {
			c.byKind[o]++
		}
		if r.Conflict {
			c.conflicts++
		}
	case pipeline.OutcomeNotFound:
		c.unmatched++
		if r.Pending != nil {
			c.deferred++
		}
	case pipeline.OutcomeAmbiguous:
		c.ambiguous++
	case pipeline.OutcomeInvalid:
		c.invalid++
	default:
		c.failed++
	}
}

// updateCounters adds the chunk's increments to each of the tenant's
// batches once and sets the records' bits in their applied bitmaps,
// finishing, as of now, the batches whose every record now has an outcome.
// The rows were locked by lockBatches (locked: as read then), so the
// bitmaps written are the locked ones plus this chunk's bits. The finish time is a parameter and the latency is
// computed here: on Citus an UPDATE of a distributed table may call no
// volatile function, nor now() inside CASE or RETURNING.
func updateCounters(ctx context.Context, tx pgx.Tx, tenantID int64, recs []*pipeline.ResolvedMessage, created map[int64]int, now time.Time,
	locked map[int64]lockedBatch) ([]FinishedBatch, error) {
	per := make(map[int64]*counters)
	bits := make(map[int64][]byte)
	var ids []int64
	for _, r := range recs {
		c := per[r.BatchID]
		if c == nil {
			c = &counters{}
			per[r.BatchID] = c
			ids = append(ids, r.BatchID)
			lb := locked[r.BatchID]
			done := make([]byte, max(len(lb.done), (lb.total+7)/8))
			copy(done, lb.done)
			bits[r.BatchID] = done
		}
		c.count(r)
		if d := bits[r.BatchID]; r.Index >= 0 && r.Index/8 < len(d) {
			setBit(d, r.Index)
		}
	}
	for id, n := range created {
		if c := per[id]; c != nil {
			c.groupsCreated += int32(n)
		}
	}
	slices.Sort(ids)
	cols := make([][]int32, 9+pipeline.NumKinds)
	for _, id := range ids {
		c := per[id]
		for i, v := range []int32{c.processed, c.success, c.unmatched, c.ambiguous, c.invalid, c.failed,
			c.groupsCreated, c.conflicts, c.deferred} {
			cols[i] = append(cols[i], v)
		}
		for o, v := range c.byKind {
			cols[9+o] = append(cols[9+o], v)
		}
	}
	done := make([][]byte, len(ids))
	for i, id := range ids {
		done[i] = bits[id]
	}
	args := []any{tenantID, now, ids}
	for _, c := range cols {
		args = append(args, c)
	}
	args = append(args, done)
	rows, err := tx.Query(ctx, updateCountersSQL, args...)
	if err != nil {
		return nil, fmt.Errorf("sink: update counters: %w", err)
	}
	var finished []FinishedBatch
	updated := 0
	for rows.Next() {
		f := FinishedBatch{TenantID: tenantID}
		var accepted time.Time
		var done *time.Time
		c := &f.Counts
		if err := rows.Scan(&f.BatchID, &f.Status, &accepted, &done,
			&c.Total, &c.Processed, &c.Success, &c.Unmatched, &c.Ambiguous, &c.Invalid, &c.Failed); err != nil {
			return nil, fmt.Errorf("sink: update counters: %w", err)
		}
		updated++
		if done != nil {
			f.Latency = done.Sub(accepted)
			finished = append(finished, f)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sink: update counters: %w", err)
	}
	if updated != len(ids) {
		// Finished or pruned since batchStates read it: roll back, and
		// the retry reads it again and drops the chunk's records of it.
		return nil, errBatchGone
	}
	if len(finished) > 0 {
		done := make([]int64, len(finished))
		for i, f := range finished {
			done[i] = f.BatchID
		}
		// The batch.finished event, published by the Relay: one row per
		// batch, written with the counters that finish it.
		if _, err := tx.Exec(ctx, `INSERT INTO batch_events_outbox (tenant_id, batch_id)
			SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING`, tenantID, done); err != nil {
			return nil, fmt.Errorf("sink: write outbox: %w", err)
		}
	}
	return finished, nil
}
