package sink

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/redact"
)

// Pruner keeps the tables' growth bounded (SPEC §12): it deletes what no
// answer and no guarantee needs any more, oldest first, in small
// transactions that each touch one tenant and at most PruneConfig.Rows rows
// of a table, so imports never wait for it for long.
//
// What it deletes, per tenant:
//
//   - pending bindings (SPEC §13) whose expires_at has passed, with their
//     pending_identities rows, their ledger rows turning deferral EXPIRED
//     in the same transaction (the binding is locked first, as a late
//     match locks it, so exactly one of the two takes it);
//   - finished batches (SUCCESS, PARTIAL_SUCCESS, FAILED) whose finished_at
//     is older than Retention, aborted batches older than AbortedRetention,
//     each with its ledger rows (batch_records) in the same transaction;
//     a batch whose batch.finished or batch.updated event is still in an
//     outbox is kept until the relay has published it (the relay deletes
//     published rows), and so is a batch with a pending binding: its
//     result stays readable until its last binding is matched or expires
//     (so a batch with deferred records is kept up to the defer TTL);
//   - idempotency keys of batches accepted more than KeyWindow ago (the
//     column is set to NULL, so the unique index shrinks);
//   - delete tombstones (memberships not present) set by a batch older
//     than the tenant's tombstone floor: the smallest batch id of the tenant
//     that is not finished before the retention horizon or has a pending
//     binding. Every record that can still be applied, late matches
//     included, belongs to a batch at or above that floor, so no add
//     positioned before a pruned tombstone can arrive any more
//     (docs/operations.md, "Pruning", has the argument);
//   - invisible groups created before the horizon that hold no membership.
//
// It never touches a PENDING or PROCESSING batch or a present membership.
// Several Pruners (one per sink process) may run at once: rows are taken
// with FOR UPDATE SKIP LOCKED, and every DELETE repeats its conditions, so
// each row is pruned once and a row a sink transaction changes meanwhile is
// judged again on its new version.
type Pruner struct {
	db  *pgxpool.Pool
	cfg PruneConfig
}

// PruneConfig configures a Pruner. Zero values take the documented
// defaults; negative values are refused by Validate.
type PruneConfig struct {
	// Retention is how long finished batches, their ledger rows and
	// failures, delete tombstones and invisible groups are kept; default
	// DefaultResultRetention (30 days).
	Retention time.Duration
	// AbortedRetention is how long aborted batches are kept; default
	// DefaultAbortedRetention (24 h).
	AbortedRetention time.Duration
	// KeyWindow is how long an idempotency key names its batch; default
	// DefaultKeyWindow (24 h, ingest.IdempotencyWindow; ingest also
	// ignores older keys).
	KeyWindow time.Duration
	// Interval is the pause between passes; default DefaultPruneInterval
	// (1 min).
	Interval time.Duration
	// Rows is the most rows one statement deletes or updates; default
	// DefaultPruneRows (5,000).
	Rows    int
	Metrics *PruneMetrics // nil: none
	Logger  *slog.Logger  // default: discard
	// Now is the clock; default time.Now. Horizons are computed from it
	// in Go and passed as parameters.
	Now func() time.Time
}

// Defaults of PruneConfig, used where a field is zero.
const (
	DefaultResultRetention  = 30 * 24 * time.Hour
	DefaultAbortedRetention = 24 * time.Hour
	DefaultKeyWindow        = 24 * time.Hour
	DefaultPruneInterval    = time.Minute
	DefaultPruneRows        = 5000
)

// NewPruner returns a Pruner on db, or the error of cfg.Validate.
func NewPruner(db *pgxpool.Pool, cfg PruneConfig) (*Pruner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultResultRetention
	}
	if cfg.AbortedRetention == 0 {
		cfg.AbortedRetention = DefaultAbortedRetention
	}
	if cfg.KeyWindow == 0 {
		cfg.KeyWindow = DefaultKeyWindow
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultPruneInterval
	}
	if cfg.Rows == 0 {
		cfg.Rows = DefaultPruneRows
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Logger = cfg.Logger.With("stage", "sink", "component", "prune")
	return &Pruner{db: db, cfg: cfg}, nil
}

// PruneStats counts the rows one pass pruned, by table.
type PruneStats struct {
	ExpiredBindings int64 // pending bindings expired
	Batches         int64
	BatchRecords    int64
	IdempotencyKeys int64 // keys released (set to NULL)
	Tombstones      int64 // memberships rows
	Groups          int64 // invisible groups
	// Overdue is how far past the retention horizon the oldest finished
	// batch still kept after the pass was finished (0 when none is).
	Overdue time.Duration
}

// Run prunes every Interval until ctx is done. A failed pass is logged and
// retried at the next tick.
func (p *Pruner) Run(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if _, err := p.Prune(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Warn("pruning failed; will retry", "err", redact.Error(err))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Prune makes one pass over every tenant, each step repeated until nothing
// is left to prune before the horizons, and returns what it deleted. It
// stops at the first error, keeping what earlier transactions pruned.
func (p *Pruner) Prune(ctx context.Context) (PruneStats, error) {
	start := time.Now()
	var st PruneStats
	err := p.prune(ctx, &st)
	if m := p.cfg.Metrics; m != nil {
		m.Rows.WithLabelValues("batches").Add(float64(st.Batches))
		m.Rows.WithLabelValues("batch_records").Add(float64(st.BatchRecords))
		m.Rows.WithLabelValues("idempotency_keys").Add(float64(st.IdempotencyKeys))
		m.Rows.WithLabelValues("memberships").Add(float64(st.Tombstones))
		m.Rows.WithLabelValues("groups").Add(float64(st.Groups))
		m.Rows.WithLabelValues("pending_bindings").Add(float64(st.ExpiredBindings))
		m.PendingExpired.Add(float64(st.ExpiredBindings))
		if err == nil {
			m.Duration.Observe(time.Since(start).Seconds())
			m.LastSuccess.Set(float64(p.cfg.Now().Unix()))
			m.Overdue.Set(st.Overdue.Seconds())
		}
	}
	if err != nil {
		return st, fmt.Errorf("sink: prune: %w", err)
	}
	if st != (PruneStats{Overdue: st.Overdue}) {
		p.cfg.Logger.Info("pruned", "expired_bindings", st.ExpiredBindings, "batches", st.Batches, "batch_records", st.BatchRecords,
			"idempotency_keys", st.IdempotencyKeys, "tombstones", st.Tombstones, "groups", st.Groups,
			"duration_s", time.Since(start).Seconds())
	}
	return st, nil
}

func (p *Pruner) prune(ctx context.Context, st *PruneStats) error {
	rows, err := p.db.Query(ctx, `SELECT tenant_id FROM tenants ORDER BY tenant_id`)
	if err != nil {
		return fmt.Errorf("list tenants: %w", err)
	}
	tenants, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("list tenants: %w", err)
	}
	now := p.cfg.Now()
	h := horizons{
		now:     now,
		results: now.Add(-p.cfg.Retention),
		aborted: now.Add(-p.cfg.AbortedRetention),
		keys:    now.Add(-p.cfg.KeyWindow),
	}
	for _, t := range tenants {
		if err := p.pruneTenant(ctx, t, h, st); err != nil {
			return fmt.Errorf("tenant %d: %w", t, err)
		}
	}
	if m := p.cfg.Metrics; m != nil {
		n, err := pendingEstimate(ctx, p.db)
		if err != nil {
			return err
		}
		m.Pending.Set(float64(n))
	}
	return nil
}

// pendingEstimate is the number of pending bindings, as the planner's
// statistics have it (pg_class.reltuples, kept by autovacuum), read once
// a pass rather than counted; a table never analysed yet (reltuples -1)
// is small, and is counted.
func pendingEstimate(ctx context.Context, db *pgxpool.Pool) (int64, error) {
	var n float64
	if err := db.QueryRow(ctx, `SELECT reltuples FROM pg_class WHERE oid = 'pending_bindings'::regclass`).Scan(&n); err != nil {
		return 0, fmt.Errorf("estimate pending bindings: %w", err)
	}
	if n >= 0 {
		return int64(n), nil
	}
	var c int64
	if err := db.QueryRow(ctx, `SELECT /* all tenants */ count(*) FROM pending_bindings`).Scan(&c); err != nil {
		return 0, fmt.Errorf("count pending bindings: %w", err)
	}
	return c, nil
}

type horizons struct{ now, results, aborted, keys time.Time }

func (p *Pruner) pruneTenant(ctx context.Context, tenant int64, h horizons, st *PruneStats) error {
	for {
		n, err := p.releaseKeys(ctx, tenant, h.keys)
		if err != nil {
			return err
		}
		st.IdempotencyKeys += n
		if n < int64(p.cfg.Rows) {
			break
		}
	}
	for {
		n, err := p.expireBindings(ctx, tenant, h.now)
		if err != nil {
			return err
		}
		st.ExpiredBindings += n
		if n < int64(p.cfg.Rows) {
			break
		}
	}
	for _, aborted := range []bool{true, false} {
		for {
			b, r, more, err := p.pruneBatches(ctx, tenant, aborted, h)
			if err != nil {
				return err
			}
			st.Batches += b
			st.BatchRecords += r
			if !more {
				break
			}
		}
	}
	floor, err := p.tombstoneFloor(ctx, tenant, h.results)
	if err != nil {
		return err
	}
	for {
		n, err := p.pruneTombstones(ctx, tenant, floor)
		if err != nil {
			return err
		}
		st.Tombstones += n
		if n < int64(p.cfg.Rows) {
			break
		}
	}
	for after := int64(0); ; {
		n, last, err := p.pruneGroups(ctx, tenant, h.results, after)
		if err != nil {
			return err
		}
		st.Groups += n
		if last == 0 {
			break
		}
		after = last
	}
	var oldest *time.Time
	// A batch kept for its pending bindings is not overdue: it is kept
	// on purpose until they resolve (up to the defer TTL).
	if err := p.db.QueryRow(ctx, `SELECT min(finished_at) FROM batches b WHERE tenant_id = $1 AND finished_at IS NOT NULL
		AND NOT EXISTS (SELECT 1 FROM pending_bindings p WHERE p.tenant_id = $1 AND p.batch_id = b.batch_id)`,
		tenant).Scan(&oldest); err != nil {
		return fmt.Errorf("oldest finished batch: %w", err)
	}
	if oldest != nil && oldest.Before(h.results) {
		st.Overdue = max(st.Overdue, h.results.Sub(*oldest))
	}
	return nil
}

// releaseKeys frees up to Rows idempotency keys of batches accepted before
// horizon. A PENDING batch's key is kept: its request is still being
// answered (and it is aborted, freeing the key, after the pending timeout).
func (p *Pruner) releaseKeys(ctx context.Context, tenant int64, horizon time.Time) (int64, error) {
	tag, err := p.db.Exec(ctx, `
		UPDATE batches SET idempotency_key = NULL
		WHERE tenant_id = $1 AND batch_id IN (
			SELECT batch_id FROM batches
			WHERE tenant_id = $1 AND idempotency_key IS NOT NULL AND accepted_at < $2 AND status <> 'PENDING'
			ORDER BY accepted_at LIMIT $3 FOR UPDATE SKIP LOCKED)
		  AND idempotency_key IS NOT NULL`, tenant, horizon, p.cfg.Rows)
	if err != nil {
		return 0, fmt.Errorf("release idempotency keys: %w", err)
	}
	return tag.RowsAffected(), nil
}

// pruneBatches deletes, in one transaction, the oldest expired batches of
// the tenant (aborted ones, or the others) whose records add up to at most
// Rows (at least one batch), with their ledger rows. more reports whether
// more may be left.
func (p *Pruner) pruneBatches(ctx context.Context, tenant int64, aborted bool, h horizons) (batches, records int64, more bool, err error) {
	horizon := h.results
	if aborted {
		horizon = h.aborted
	}
	err = pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		// The sink locks only PROCESSING batches; SKIP LOCKED skips the
		// rows other pruners hold, and any ingest holds for a moment
		// (its lazy release of an expired idempotency key).
		rows, err := tx.Query(ctx, `
			SELECT batch_id, total FROM batches b
			WHERE tenant_id = $1 AND finished_at < $2 AND aborted = $3
			  AND status IN ('SUCCESS', 'PARTIAL_SUCCESS', 'FAILED')
			  AND NOT EXISTS (SELECT 1 FROM batch_events_outbox o WHERE o.tenant_id = $1 AND o.batch_id = b.batch_id)
			  AND NOT EXISTS (SELECT 1 FROM batch_updates_outbox o WHERE o.tenant_id = $1 AND o.batch_id = b.batch_id)
			  AND NOT EXISTS (SELECT 1 FROM pending_bindings p WHERE p.tenant_id = $1 AND p.batch_id = b.batch_id)
			ORDER BY finished_at LIMIT $4 FOR UPDATE SKIP LOCKED`, tenant, horizon, aborted, p.cfg.Rows)
		if err != nil {
			return fmt.Errorf("find expired batches: %w", err)
		}
		var ids []int64
		sum, found := 0, 0
		for rows.Next() {
			var id int64
			var total int
			if err := rows.Scan(&id, &total); err != nil {
				rows.Close()
				return fmt.Errorf("find expired batches: %w", err)
			}
			found++
			if len(ids) > 0 && sum+total > p.cfg.Rows {
				continue // left for the next transaction
			}
			ids, sum = append(ids, id), sum+total
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("find expired batches: %w", err)
		}
		more = found == p.cfg.Rows || found > len(ids)
		if len(ids) == 0 {
			return nil
		}
		tag, err := tx.Exec(ctx, `DELETE FROM batch_records WHERE tenant_id = $1 AND batch_id = ANY($2)`, tenant, ids)
		if err != nil {
			return fmt.Errorf("delete ledger rows: %w", err)
		}
		records = tag.RowsAffected()
		tag, err = tx.Exec(ctx, `DELETE FROM batches WHERE tenant_id = $1 AND batch_id = ANY($2)`, tenant, ids)
		if err != nil {
			return fmt.Errorf("delete batches: %w", err)
		}
		batches = tag.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, 0, false, err
	}
	return batches, records, more, nil
}

// tombstoneFloor returns the smallest id of the tenant's batches that may
// still apply a record or finished after horizon (PENDING, PROCESSING, or
// finished at or after horizon) or have a pending binding (whose late
// match applies at the binding's position), or 0 when there is none. A
// binding is stored only by a PROCESSING batch, which bounds the floor
// already, so none can appear below a floor once read.
func (p *Pruner) tombstoneFloor(ctx context.Context, tenant int64, horizon time.Time) (int64, error) {
	var floor *int64
	err := p.db.QueryRow(ctx, `
		SELECT least(
			(SELECT batch_id FROM batches
			 WHERE tenant_id = $1 AND (status IN ('PENDING', 'PROCESSING') OR finished_at >= $2)
			 ORDER BY batch_id LIMIT 1),
			(SELECT batch_id FROM pending_bindings WHERE tenant_id = $1 ORDER BY batch_id LIMIT 1))`, tenant, horizon).Scan(&floor)
	if err != nil {
		return 0, fmt.Errorf("tombstone floor: %w", err)
	}
	if floor == nil {
		return 0, nil
	}
	return *floor, nil
}

// expireBindings expires, in one transaction, up to Rows of the tenant's
// pending bindings whose expires_at is not after now: deletes them and
// their pending_identities rows and marks their ledger rows EXPIRED. The
// bindings are locked first (SKIP LOCKED: one a late match is claiming is
// left to it), so a late match and an expiry never both take a binding.
func (p *Pruner) expireBindings(ctx context.Context, tenant int64, now time.Time) (int64, error) {
	var n int64
	err := pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT batch_id, rec_index FROM pending_bindings
			WHERE tenant_id = $1 AND expires_at <= $2
			ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED`, tenant, now, p.cfg.Rows)
		if err != nil {
			return fmt.Errorf("find expired bindings: %w", err)
		}
		keys, err := collectKeys(rows)
		if err != nil {
			return fmt.Errorf("find expired bindings: %w", err)
		}
		if len(keys) == 0 {
			return nil
		}
		batchIDs, indexes := make([]int64, 0, len(keys)), make([]int32, 0, len(keys))
		for k := range keys {
			batchIDs, indexes = append(batchIDs, k.batch), append(indexes, int32(k.index))
		}
		if _, err := tx.Exec(ctx, `
			UPDATE batch_records r SET deferral = 'EXPIRED'
			FROM unnest($2::bigint[], $3::int[]) AS u(b, i)
			WHERE r.tenant_id = $1 AND r.batch_id = u.b AND r.rec_index = u.i AND r.deferral = 'PENDING'`,
			tenant, batchIDs, indexes); err != nil {
			return fmt.Errorf("expire ledger rows: %w", err)
		}
		if err := deleteIdentities(ctx, tx, tenant, keys); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `
			DELETE FROM pending_bindings p USING unnest($2::bigint[], $3::int[]) AS u(b, i)
			WHERE p.tenant_id = $1 AND p.batch_id = u.b AND p.rec_index = u.i`, tenant, batchIDs, indexes)
		if err != nil {
			return fmt.Errorf("delete expired bindings: %w", err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}

// pruneTombstones deletes up to Rows delete tombstones of the tenant set by
// batches below floor (any batch when floor is 0). The DELETE repeats the
// condition, so a membership a sink transaction makes present again, or
// moves to a newer position, meanwhile is kept.
func (p *Pruner) pruneTombstones(ctx context.Context, tenant, floor int64) (int64, error) {
	if floor == 0 {
		floor = 1 << 62
	}
	tag, err := p.db.Exec(ctx, `
		DELETE FROM memberships m
		WHERE m.tenant_id = $1 AND (m.group_id, m.customer_id) IN (
			SELECT group_id, customer_id FROM memberships
			WHERE tenant_id = $1 AND NOT present AND batch_id < $2
			ORDER BY batch_id LIMIT $3 FOR UPDATE SKIP LOCKED)
		  AND NOT m.present AND m.batch_id < $2`, tenant, floor, p.cfg.Rows)
	if err != nil {
		return 0, fmt.Errorf("delete tombstones: %w", err)
	}
	return tag.RowsAffected(), nil
}

// pruneGroups deletes invisible groups of the tenant created before horizon
// that hold no membership, looking at up to Rows groups with ids above
// after; last is the highest id looked at (0: none left). The groups are
// locked first, skipping those a sink transaction holds (its group upsert
// locks every group it names until it commits), and their memberships are
// then read by a later statement, which sees every committed tombstone.
func (p *Pruner) pruneGroups(ctx context.Context, tenant int64, horizon time.Time, after int64) (n, last int64, err error) {
	err = pgx.BeginFunc(ctx, p.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			SELECT group_id FROM groups
			WHERE tenant_id = $1 AND NOT visible AND created_at < $2 AND group_id > $3
			ORDER BY group_id LIMIT $4 FOR UPDATE SKIP LOCKED`, tenant, horizon, after, p.cfg.Rows)
		if err != nil {
			return fmt.Errorf("find invisible groups: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return fmt.Errorf("find invisible groups: %w", err)
		}
		if len(ids) == 0 {
			return nil
		}
		last = ids[len(ids)-1]
		tag, err := tx.Exec(ctx, `
			DELETE FROM groups g WHERE tenant_id = $1 AND group_id = ANY($2) AND NOT visible
			  AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.tenant_id = $1 AND m.group_id = g.group_id)`, tenant, ids)
		if err != nil {
			return fmt.Errorf("delete invisible groups: %w", err)
		}
		n = tag.RowsAffected()
		return nil
	})
	if err != nil {
		return 0, 0, err
	}
	return n, last, nil
}

// PruneMetrics are the Pruner's Prometheus metrics.
type PruneMetrics struct {
	Rows        *prometheus.CounterVec // by table
	Duration    prometheus.Histogram
	LastSuccess prometheus.Gauge
	Overdue     prometheus.Gauge
	// PendingExpired counts the pending bindings expired (SPEC §13);
	// Pending is how many there are, estimated once a pass.
	PendingExpired prometheus.Counter
	Pending        prometheus.Gauge
}

// NewPruneMetrics registers the Pruner's metrics on reg, labelled
// stage="sink".
func NewPruneMetrics(reg prometheus.Registerer) *PruneMetrics {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": "sink"}, reg)
	m := &PruneMetrics{
		Rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_prune_rows_total",
			Help: "Rows pruned, by table (idempotency_keys: keys released).",
		}, []string{"table"}),
		Duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_prune_duration_seconds",
			Help:    "Time of one successful pruning pass over every tenant.",
			Buckets: prometheus.ExponentialBuckets(0.01, 4, 10),
		}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "groupmatch_prune_last_success_timestamp_seconds",
			Help: "When the last pruning pass succeeded (Unix time).",
		}),
		Overdue: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "groupmatch_prune_overdue_seconds",
			Help: "After the last pass, how far past the retention horizon the oldest finished batch still kept is (0: none).",
		}),
		PendingExpired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_pending_bindings_expired_total",
			Help: "Pending bindings (deferred NOT_FOUND records) that expired after --defer-ttl without a late match.",
		}),
		Pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "groupmatch_pending_bindings",
			Help: "Pending bindings waiting for their customer, as PostgreSQL's statistics estimate them after the last pruning pass.",
		}),
	}
	for _, t := range []string{"batches", "batch_records", "idempotency_keys", "memberships", "groups", "pending_bindings"} {
		m.Rows.WithLabelValues(t)
	}
	reg.MustRegister(m.Rows, m.Duration, m.LastSuccess, m.Overdue, m.PendingExpired, m.Pending)
	return m
}
