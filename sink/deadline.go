package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
)

// Deadline finishes batches still PROCESSING After their acceptance (SPEC
// §10: no batch stays PROCESSING for ever). Each overdue batch is finished
// in a transaction of its own that
//
//   - locks the batch row and reads its applied bitmap (batches.done);
//   - writes a ledger row (outcome FAILED, reason TIMED_OUT) for every
//     record index whose bit is clear, and sets every bit, so a record
//     arriving later is a duplicate to Apply and changes nothing;
//   - adds those records to failed and sets the final status by the rule
//     Apply uses (SUCCESS, PARTIAL_SUCCESS or FAILED), with a conditional
//     UPDATE … WHERE status = 'PROCESSING';
//   - writes the batch's row of the batch.finished outbox.
//
// Several sink processes may sweep at once: the batch row's lock and the
// status condition make exactly one of them finish a batch; the others find
// it finished and roll back. A sink transaction applying records of the
// batch at the same time locks the batch row too (after its memberships,
// before it writes any ledger row, as this transaction: batch row, then
// ledger rows): either it commits first (its records keep their outcomes
// and bits) or it finds the batch finished, rolls back, and its retry counts
// its records as duplicates.
type Deadline struct {
	db  *pgxpool.Pool
	cfg DeadlineConfig
}

// DeadlineConfig configures a Deadline. Zero values take the documented
// defaults; negative values are refused by Validate.
type DeadlineConfig struct {
	// After is how long a batch may stay PROCESSING after acceptance;
	// default DefaultBatchDeadline (1 h).
	After time.Duration
	// Interval is how often overdue batches are looked for; default
	// After/10, within [50 ms, 1 min].
	Interval time.Duration
	Metrics  *Metrics     // nil: none
	Logger   *slog.Logger // default: discard
}

// DefaultBatchDeadline is DeadlineConfig.After's default; cmd/groupmatch's
// --batch-deadline defaults to it too.
const DefaultBatchDeadline = time.Hour

// NewDeadline returns a Deadline on db, or the error of cfg.Validate.
func NewDeadline(db *pgxpool.Pool, cfg DeadlineConfig) (*Deadline, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.After == 0 {
		cfg.After = DefaultBatchDeadline
	}
	if cfg.Interval == 0 {
		cfg.Interval = min(max(cfg.After/10, 50*time.Millisecond), time.Minute)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("stage", "sink", "component", "deadline")
	return &Deadline{db: db, cfg: cfg}, nil
}

// deadlineSweep is the most overdue batches one Sweep finishes.
const deadlineSweep = 100

// Run sweeps every Interval until ctx is done. Failures are logged and
// retried at the next tick.
func (d *Deadline) Run(ctx context.Context) error {
	t := time.NewTicker(d.cfg.Interval)
	defer t.Stop()
	for {
		for {
			done, err := d.Sweep(ctx)
			if err != nil && ctx.Err() == nil {
				d.cfg.Logger.Warn("finishing overdue batches failed; will retry", "err", redact.Error(err))
			}
			if err != nil || len(done) < deadlineSweep {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// TimedOut is a batch a Sweep finished at its deadline.
type TimedOut struct {
	FinishedBatch
	Records int // records counted failed with reason TIMED_OUT
}

// Sweep finishes up to 100 overdue batches, oldest first, each in its own
// transaction, and returns those it finished. Batches another sweeper or
// the sink finished meanwhile are skipped.
func (d *Deadline) Sweep(ctx context.Context) ([]TimedOut, error) {
	// Across tenants, read only: each batch is then finished in a
	// transaction of its tenant.
	rows, err := d.db.Query(ctx, `
		SELECT /* all tenants */ batch_id, tenant_id FROM batches
		WHERE status = 'PROCESSING' AND accepted_at < $1
		ORDER BY accepted_at LIMIT $2`, time.Now().Add(-d.cfg.After), deadlineSweep)
	if err != nil {
		return nil, fmt.Errorf("sink: find overdue batches: %w", err)
	}
	type batchRef struct{ id, tenant int64 }
	due, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (batchRef, error) {
		var b batchRef
		err := r.Scan(&b.id, &b.tenant)
		return b, err
	})
	if err != nil {
		return nil, fmt.Errorf("sink: find overdue batches: %w", err)
	}
	var done []TimedOut
	for _, b := range due {
		t, ok, err := d.finish(ctx, b.tenant, b.id)
		if err != nil {
			return done, err
		}
		if !ok {
			continue
		}
		done = append(done, t)
		if m := d.cfg.Metrics; m != nil {
			m.TimedOut.Inc()
			m.TimedOutRecords.Add(float64(t.Records))
			m.Finished.WithLabelValues(t.Status).Inc()
			m.BatchLatency.Observe(t.Latency.Seconds())
		}
		// One line per finished batch, like the sink's "batch finished".
		d.cfg.Logger.Warn("batch finished", append(t.LogAttrs(), "timed_out", true, "timed_out_records", t.Records)...)
	}
	return done, nil
}

// errNotOverdue rolls back a finish whose batch was finished meanwhile.
var errNotOverdue = errors.New("sink: batch no longer overdue")

// finish finishes one overdue batch; ok is false when it was not (any
// more) PROCESSING and overdue.
func (d *Deadline) finish(ctx context.Context, tenantID, batchID int64) (TimedOut, bool, error) {
	out := TimedOut{FinishedBatch: FinishedBatch{BatchID: batchID, TenantID: tenantID}}
	now := time.Now()
	err := pgx.BeginFunc(ctx, d.db, func(tx pgx.Tx) error {
		// The batch row is locked first, then the ledger rows written:
		// the order of Apply, which writes ledger rows only under the
		// lock of their batch row, after finding their bits clear.
		var total int
		var done []byte
		err := tx.QueryRow(ctx, `
			SELECT total, done FROM batches
			WHERE tenant_id = $1 AND batch_id = $2 AND status = 'PROCESSING'
			  AND accepted_at < $3
			FOR UPDATE`,
			tenantID, batchID, now.Add(-d.cfg.After)).Scan(&total, &done)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotOverdue
		}
		if err != nil {
			return fmt.Errorf("sink: read overdue batch: %w", err)
		}
		var missing []int32
		full := make([]byte, (total+7)/8)
		for i := range total {
			if !bitSet(done, i) {
				missing = append(missing, int32(i))
			}
			setBit(full, i)
		}
		out.Records = len(missing)
		if len(missing) > 0 {
			if _, err := tx.Exec(ctx, `
				INSERT INTO batch_records (tenant_id, batch_id, rec_index, outcome, reason)
				SELECT $1, $2, i, $4, $5 FROM unnest($3::int[]) AS i`,
				tenantID, batchID, missing, string(pipeline.OutcomeFailed), string(pipeline.ReasonTimedOut)); err != nil {
				return fmt.Errorf("sink: write timed-out ledger rows: %w", err)
			}
		}
		// Every record without a counted outcome is one of the rows just
		// written (the bitmap and the counters change together:
		// processed = bit_count(done)), so failed grows by total -
		// processed.
		var accepted, finished time.Time
		err = tx.QueryRow(ctx, `
			UPDATE batches SET
				failed = failed + (total - processed),
				processed = total,
				done = $4,
				status = CASE
					WHEN success = total THEN 'SUCCESS'
					WHEN success = 0 THEN 'FAILED'
					ELSE 'PARTIAL_SUCCESS' END,
				finished_at = $3
			WHERE tenant_id = $1 AND batch_id = $2 AND status = 'PROCESSING'
			RETURNING status, accepted_at, finished_at,
				total, processed, success, unmatched, ambiguous, invalid, failed`, tenantID, batchID, now, full).Scan(&out.Status, &accepted, &finished,
			&out.Counts.Total, &out.Counts.Processed, &out.Counts.Success, &out.Counts.Unmatched,
			&out.Counts.Ambiguous, &out.Counts.Invalid, &out.Counts.Failed)
		if errors.Is(err, pgx.ErrNoRows) {
			return errNotOverdue
		}
		if err != nil {
			return fmt.Errorf("sink: finish timed-out batch: %w", err)
		}
		out.Latency = finished.Sub(accepted)
		if _, err := tx.Exec(ctx, `INSERT INTO batch_events_outbox (tenant_id, batch_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`,
			tenantID, batchID); err != nil {
			return fmt.Errorf("sink: write outbox: %w", err)
		}
		return nil
	})
	if errors.Is(err, errNotOverdue) {
		return out, false, nil
	}
	if err != nil {
		return out, false, fmt.Errorf("sink: batch %d: %w", batchID, err)
	}
	return out, true, nil
}
