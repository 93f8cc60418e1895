package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Deferred matching (SPEC §13) in the sink. A NOT_FOUND verdict carrying
// Pending gets, in the transaction that writes its ledger row (deferral
// PENDING), a pending_bindings row and one pending_identities row per
// identity, and counts in its batch's deferred. A late match (a MATCHED
// verdict with Late, from the re-matcher) is applied once: the transaction
// that deletes the position's unexpired binding moves its ledger row from
// PENDING to LATE_MATCHED, applies the membership change at the record's
// original (batch id, record index) through the position guard, and adds
// one to late_matched. The first counters never change. Bindings are
// locked before ledger rows, by the sink and the Pruner alike, so a late
// match and an expiry never deadlock and exactly one of them wins.

// storePending keeps the bindings of the fresh (new to the ledger) NOT_FOUND
// records that carry Pending, expiring at expires, and returns how many.
// Each is new exactly when its ledger row is, so ON CONFLICT never skips
// one; it only makes the statements safe to repeat.
func storePending(ctx context.Context, tx pgx.Tx, tenantID int64, fresh []*pipeline.ResolvedMessage, expires time.Time) (int, error) {
	var (
		batchIDs, idBatches []int64
		indexes, idIndexes  []int32
		opts, kinds, values []string
		pendings            [][]byte
	)
	for _, r := range fresh {
		if r.Outcome != pipeline.OutcomeNotFound || r.Pending == nil {
			continue
		}
		b, err := json.Marshal(r.Pending)
		if err != nil {
			return 0, fmt.Errorf("sink: encode pending binding of batch %d record %d: %w", r.BatchID, r.Index, err)
		}
		batchIDs, indexes = append(batchIDs, r.BatchID), append(indexes, int32(r.Index))
		opts, pendings = append(opts, string(r.OptType)), append(pendings, b)
		for _, k := range slices.Sorted(maps.Keys(r.Pending.Identities)) {
			idBatches, idIndexes = append(idBatches, r.BatchID), append(idIndexes, int32(r.Index))
			kinds, values = append(kinds, string(k)), append(values, r.Pending.Identities[k])
		}
	}
	if len(batchIDs) == 0 {
		return 0, nil
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO pending_bindings (tenant_id, batch_id, rec_index, opt_type, pending, expires_at)
		SELECT $1, b, i, o, p, $6 FROM unnest($2::bigint[], $3::int[], $4::text[], $5::jsonb[]) AS u(b, i, o, p)
		ON CONFLICT DO NOTHING`, tenantID, batchIDs, indexes, opts, pendings, expires); err != nil {
		return 0, fmt.Errorf("sink: store pending bindings: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO pending_identities (tenant_id, kind, value, batch_id, rec_index)
		SELECT $1, k, v, b, i FROM unnest($2::text[], $3::text[], $4::bigint[], $5::int[]) AS u(k, v, b, i)
		ON CONFLICT DO NOTHING`, tenantID, kinds, values, idBatches, idIndexes); err != nil {
		return 0, fmt.Errorf("sink: store pending identities: %w", err)
	}
	return len(batchIDs), nil
}

// claimLate takes the bindings of the late matches: it deletes each
// position's binding that has not expired as of now (waiting for a
// concurrent transaction holding it, then finding it gone), moves its
// ledger row from PENDING to LATE_MATCHED with the customer and the
// identifier that matched, and deletes its pending_identities rows. It
// returns the late matches whose binding it took, in the order of late;
// the others (redelivered, expired, pruned) change nothing.
func claimLate(ctx context.Context, tx pgx.Tx, tenantID int64, late []*pipeline.ResolvedMessage, now time.Time) ([]*pipeline.ResolvedMessage, error) {
	if len(late) == 0 {
		return nil, nil
	}
	n := len(late)
	batchIDs, indexes := make([]int64, n), make([]int32, n)
	matchedBy, customers := make([]string, n), make([]int64, n)
	for i, r := range late {
		batchIDs[i], indexes[i] = r.BatchID, int32(r.Index)
		matchedBy[i], customers[i] = string(r.MatchedBy), r.CustomerID
	}
	rows, err := tx.Query(ctx, `
		DELETE FROM pending_bindings p USING unnest($2::bigint[], $3::int[]) AS u(b, i)
		WHERE p.tenant_id = $1 AND p.batch_id = u.b AND p.rec_index = u.i AND p.expires_at > $4
		RETURNING p.batch_id, p.rec_index`, tenantID, batchIDs, indexes, now)
	if err != nil {
		return nil, fmt.Errorf("sink: claim pending bindings: %w", err)
	}
	claimed, err := collectKeys(rows)
	if err != nil {
		return nil, fmt.Errorf("sink: claim pending bindings: %w", err)
	}
	if len(claimed) == 0 {
		return nil, nil
	}
	rows, err = tx.Query(ctx, `
		UPDATE batch_records r SET deferral = 'LATE_MATCHED', customer_id = u.c, matched_by = nullif(u.m, '')
		FROM unnest($2::bigint[], $3::int[], $4::bigint[], $5::text[]) AS u(b, i, c, m)
		WHERE r.tenant_id = $1 AND r.batch_id = u.b AND r.rec_index = u.i AND r.deferral = 'PENDING'
		RETURNING r.batch_id, r.rec_index`, tenantID, batchIDs, indexes, customers, matchedBy)
	if err != nil {
		return nil, fmt.Errorf("sink: record late matches: %w", err)
	}
	updated, err := collectKeys(rows)
	if err != nil {
		return nil, fmt.Errorf("sink: record late matches: %w", err)
	}
	if err := deleteIdentities(ctx, tx, tenantID, claimed); err != nil {
		return nil, err
	}
	var moved []*pipeline.ResolvedMessage
	for _, r := range late {
		k := ledgerKey{r.BatchID, r.Index}
		// A binding without its PENDING ledger row cannot exist (both
		// are written and removed together); the check keeps a late
		// match from applying twice if one ever did.
		if claimed[k] && updated[k] {
			moved = append(moved, r)
		}
	}
	return moved, nil
}

func collectKeys(rows pgx.Rows) (map[ledgerKey]bool, error) {
	out := make(map[ledgerKey]bool)
	for rows.Next() {
		var k ledgerKey
		if err := rows.Scan(&k.batch, &k.index); err != nil {
			rows.Close()
			return nil, err
		}
		out[k] = true
	}
	return out, rows.Err()
}

// deleteIdentities deletes the pending_identities rows of the tenant's
// bindings at the positions keys.
func deleteIdentities(ctx context.Context, tx pgx.Tx, tenantID int64, keys map[ledgerKey]bool) error {
	batchIDs, indexes := make([]int64, 0, len(keys)), make([]int32, 0, len(keys))
	for k := range keys {
		batchIDs, indexes = append(batchIDs, k.batch), append(indexes, int32(k.index))
	}
	if _, err := tx.Exec(ctx, `
		DELETE FROM pending_identities p USING unnest($2::bigint[], $3::int[]) AS u(b, i)
		WHERE p.tenant_id = $1 AND p.batch_id = u.b AND p.rec_index = u.i`, tenantID, batchIDs, indexes); err != nil {
		return fmt.Errorf("sink: delete pending identities: %w", err)
	}
	return nil
}

// finishLate counts the late matches moved by claimLate, as limitGroups
// left them (moved[i] is INVALID with pipeline.ReasonGroupLimit when the
// add would have made the tenant exceed its group limit: such a record
// applies nothing and its ledger row becomes EXPIRED, as if its binding
// had run out). Each batch's late_matched grows by its applied late
// matches, and a batch already final when this transaction commits gets
// one batch.updated outbox row (none when the transaction finished it:
// its batch.finished carries late_matched). It returns the applied ones.
func finishLate(ctx context.Context, tx pgx.Tx, tenantID int64, moved []*pipeline.ResolvedMessage, finished []FinishedBatch) ([]*pipeline.ResolvedMessage, error) {
	if len(moved) == 0 {
		return nil, nil
	}
	var applied []*pipeline.ResolvedMessage
	var limBatches []int64
	var limIndexes []int32
	per := make(map[int64]int32)
	for _, r := range moved {
		if r.Outcome != pipeline.OutcomeMatched {
			limBatches, limIndexes = append(limBatches, r.BatchID), append(limIndexes, int32(r.Index))
			continue
		}
		applied = append(applied, r)
		per[r.BatchID]++
	}
	if len(limBatches) > 0 {
		if _, err := tx.Exec(ctx, `
			UPDATE batch_records r SET deferral = 'EXPIRED', customer_id = NULL, matched_by = NULL
			FROM unnest($2::bigint[], $3::int[]) AS u(b, i)
			WHERE r.tenant_id = $1 AND r.batch_id = u.b AND r.rec_index = u.i`, tenantID, limBatches, limIndexes); err != nil {
			return nil, fmt.Errorf("sink: record late matches over the group limit: %w", err)
		}
	}
	if len(per) == 0 {
		return nil, nil
	}
	ids := slices.Sorted(maps.Keys(per))
	counts := make([]int32, len(ids))
	for i, id := range ids {
		counts[i] = per[id]
	}
	rows, err := tx.Query(ctx, `
		UPDATE batches b SET late_matched = b.late_matched + d.n
		FROM unnest($2::bigint[], $3::int[]) AS d(batch_id, n)
		WHERE b.tenant_id = $1 AND b.batch_id = d.batch_id
		RETURNING b.batch_id, b.status`, tenantID, ids, counts)
	if err != nil {
		return nil, fmt.Errorf("sink: count late matches: %w", err)
	}
	var updated []int64
	for rows.Next() {
		var id int64
		var status string
		if err := rows.Scan(&id, &status); err != nil {
			rows.Close()
			return nil, fmt.Errorf("sink: count late matches: %w", err)
		}
		final := status != "PROCESSING" && status != "PENDING"
		if final && !slices.ContainsFunc(finished, func(f FinishedBatch) bool { return f.BatchID == id }) {
			updated = append(updated, id)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sink: count late matches: %w", err)
	}
	if len(updated) > 0 {
		// One row per batch until the relay publishes it: several late
		// matches before then make one batch.updated with the latest
		// counters.
		if _, err := tx.Exec(ctx, `INSERT INTO batch_updates_outbox (tenant_id, batch_id)
			SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING`, tenantID, updated); err != nil {
			return nil, fmt.Errorf("sink: write batch.updated outbox: %w", err)
		}
	}
	return applied, nil
}
