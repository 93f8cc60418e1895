// Package batches reads a batch's summary (pipeline.BatchSummary) from
// PostgreSQL: the one SQL text and the one scan that both batchResult
// (ingest) and the batch.finished event (sink's relay) use, so the two can
// never disagree. A new counter is added here, in pipeline.BatchSummary and
// in the migration that adds its column; nowhere else.
//
// It only reads: it never writes batches or their ledger, and never reads
// the identity values of the ledger's rows.
package batches

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Querier is what Read needs of a pool, connection or transaction.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Summary is one batch's summary as read.
type Summary struct {
	TenantID int64
	BatchID  int64
	pipeline.BatchSummary
}

// summarySQL selects the summaries of the tenant ($1) batches whose ids are
// in $2, in batch id order; scan reads its rows.
const summarySQL = `
	SELECT batch_id, tenant_id, status, opt_type, total, processed, success, unmatched, ambiguous, invalid, failed,
	       matched_by, groups_created, conflicts,
	       accepted_at, finished_at, deferred, late_matched
	FROM batches WHERE tenant_id = $1 AND batch_id = ANY($2)
	ORDER BY batch_id`

// scan reads one row of summarySQL. A batch still PENDING reads as
// PROCESSING, the status the API and events name.
func scan(rows pgx.Rows) (Summary, error) {
	var s Summary
	var matched []int32
	if err := rows.Scan(&s.BatchID, &s.TenantID, &s.Status, &s.OptType, &s.Total, &s.Processed, &s.Success,
		&s.Unmatched, &s.Ambiguous, &s.Invalid, &s.Failed, &matched, &s.GroupsCreated, &s.Conflicts,
		&s.AcceptedAt, &s.FinishedAt, &s.Deferred, &s.LateMatched); err != nil {
		return s, err
	}
	if s.Status == "PENDING" {
		s.Status = "PROCESSING"
	}
	s.MatchedBy = matchedBy(matched)
	s.ErrorCounts = map[string]int{}
	return s, nil
}

// Read returns the summaries of those of the tenant's batches ids that
// exist, in batch id order, with their error counts (records not applied,
// by reason) from the ledger. Ids of no batch of the tenant are left out.
// Every statement names the tenant, so on Citus it stays in one shard.
func Read(ctx context.Context, q Querier, tenantID int64, ids []int64) ([]Summary, error) {
	rows, err := q.Query(ctx, summarySQL, tenantID, ids)
	if err != nil {
		return nil, fmt.Errorf("batches: read summary: %w", err)
	}
	var out []Summary
	for rows.Next() {
		s, err := scan(rows)
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("batches: read summary: %w", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("batches: read summary: %w", err)
	}
	if len(out) == 0 {
		return out, nil
	}
	if err := errorCounts(ctx, q, tenantID, out); err != nil {
		return nil, err
	}
	return out, nil
}

// errorCounts fills the summaries' ErrorCounts from the tenant's ledger
// failure rows.
func errorCounts(ctx context.Context, q Querier, tenantID int64, sums []Summary) error {
	ids := make([]int64, len(sums))
	pos := make(map[int64]int, len(sums))
	for i, s := range sums {
		ids[i] = s.BatchID
		pos[s.BatchID] = i
	}
	rows, err := q.Query(ctx, `SELECT batch_id, reason, count(*) FROM batch_records
		WHERE tenant_id = $1 AND batch_id = ANY($2) AND reason IS NOT NULL GROUP BY 1, 2`, tenantID, ids)
	if err != nil {
		return fmt.Errorf("batches: read error counts: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id int64
		var reason string
		var n int
		if err := rows.Scan(&id, &reason, &n); err != nil {
			return fmt.Errorf("batches: read error counts: %w", err)
		}
		sums[pos[id]].ErrorCounts[reason] = n
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("batches: read error counts: %w", err)
	}
	return nil
}

// matchedBy returns the matchedBy object of a batch's matched_by counters,
// indexed by kind ordinal (pipeline.IdentityKinds), leaving out the kinds
// that matched nothing.
func matchedBy(counts []int32) map[string]int {
	m := make(map[string]int, len(counts))
	for o, n := range counts {
		if n > 0 && o < pipeline.NumKinds {
			m[string(pipeline.IdentityKinds[o])] = int(n)
		}
	}
	return m
}
