package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/supervise"
)

// BaselineConfig configures RunBaseline. Zero values take the defaults.
type BaselineConfig struct {
	// Schema holds the baseline's tables; default "bench_baseline". It is
	// dropped and created again by RunBaseline.
	Schema string
	// Workers is how many chunks are applied at once, each in its own
	// transaction on its own connection; default 2.
	Workers int
	// ChunkRecords is about how many records one transaction applies,
	// rounded to whole batches; default 20,000.
	ChunkRecords int
	// TenantID is the tenant whose directory (public.customers,
	// customer_phones, customer_openids) is matched against.
	TenantID int64
	// BatchIDs, if set, is the position (batch id) each batch index is
	// recorded under, so that add/delete races resolve as in the
	// pipeline's run; default index + 1.
	BatchIDs []int64
	// Progress, if set, is called after each chunk commits, never
	// concurrently, with the records applied so far.
	Progress func(records int)
}

// BaselineResult is what RunBaseline measured.
type BaselineResult struct {
	Records       int      `json:"records"`
	Seconds       float64  `json:"seconds"`
	RecordsPerSec float64  `json:"recordsPerSec"`
	Workers       int      `json:"workers"`
	ChunkRecords  int      `json:"chunkRecords"`
	Outcomes      Outcomes `json:"outcomes"`
	// PostgresCPUSeconds is the CPU time of the workers' backends, when
	// PostgreSQL runs on this machine (else 0); PostgresCPUPer1000 the same
	// per 1,000 records.
	PostgresCPUSeconds float64 `json:"postgresCpuSeconds,omitempty"`
	PostgresCPUPer1000 float64 `json:"postgresCpuSecondsPer1000Records,omitempty"`
}

// The baseline's tables are the pipeline's own definitions (LIKE … INCLUDING
// ALL: columns, defaults, constraints, indexes), in a schema of their own.
var baselineTables = []string{"batches", "batch_records", "groups", "memberships"}

// The staging tables are temporary, emptied at each commit: like the
// pipeline's Kafka topics they are transport, not results. Values arrive
// normalised (only the identityType's field for exact matching), so the
// SQL does no normalisation.
const baselineStaging = `
CREATE TEMP TABLE stage (
	batch_id bigint NOT NULL, rec_index int NOT NULL, way smallint NOT NULL, opt_add bool NOT NULL,
	app_type text NOT NULL, app_id text NOT NULL,
	third_id text, phone text, openid text, unionid text, groups text[] NOT NULL
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE resolved (
	batch_id bigint NOT NULL, rec_index int NOT NULL, opt_add bool NOT NULL, groups text[] NOT NULL,
	outcome text NOT NULL, matched_by text, customer_id bigint
) ON COMMIT DELETE ROWS`

var stageColumns = []string{"batch_id", "rec_index", "way", "opt_add", "app_type", "app_id", "third_id", "phone", "openid", "unionid", "groups"}

// baselineResolve matches every staged record by SPEC §5's priority with
// one probe of an index per identifier the record has (n: distinct
// customers the identifier names, c: the one when n = 1). Exact records
// carry one identifier, so identifyWay 1's walk decides them too. An app
// scope (app_type, app_id) restricts phone, openid and unionid bindings.
const baselineResolve = `
INSERT INTO resolved (batch_id, rec_index, opt_add, groups, outcome, matched_by, customer_id)
SELECT batch_id, rec_index, opt_add, groups,
	CASE WHEN k IS NOT NULL THEN 'MATCHED' WHEN greatest(un, opn, phn, thn) > 1 THEN 'AMBIGUOUS' ELSE 'NOT_FOUND' END,
	k, CASE k WHEN 'unionid' THEN uc WHEN 'openid' THEN oc WHEN 'phone' THEN pc WHEN 'id' THEN tc END
FROM (
	SELECT s.batch_id, s.rec_index, s.opt_add, s.groups,
		u.n AS un, u.c AS uc, o.n AS opn, o.c AS oc, p.n AS phn, p.c AS pc, t.n AS thn, t.c AS tc,
		CASE WHEN s.way = 2 THEN
			CASE WHEN t.n = 1 THEN 'id' WHEN p.n = 1 THEN 'phone' WHEN o.n = 1 THEN 'openid' WHEN u.n = 1 THEN 'unionid' END
		ELSE
			CASE WHEN u.n = 1 THEN 'unionid' WHEN o.n = 1 THEN 'openid' WHEN p.n = 1 THEN 'phone' WHEN t.n = 1 THEN 'id' END
		END AS k
	FROM stage s
	CROSS JOIN LATERAL (SELECT count(DISTINCT x.customer_id) AS n, min(x.customer_id) AS c FROM public.customers x
		WHERE s.unionid IS NOT NULL AND x.tenant_id = $1 AND x.unionid = s.unionid AND x.unionid IS NOT NULL
		AND (s.app_type = '' OR (x.unionid_app_type = s.app_type AND x.unionid_app_id = s.app_id))) u
	CROSS JOIN LATERAL (SELECT count(DISTINCT x.customer_id) AS n, min(x.customer_id) AS c FROM public.customer_openids x
		WHERE s.openid IS NOT NULL AND x.tenant_id = $1 AND x.openid = s.openid
		AND (s.app_type = '' OR (x.app_type = s.app_type AND x.app_id = s.app_id))) o
	CROSS JOIN LATERAL (SELECT count(DISTINCT x.customer_id) AS n, min(x.customer_id) AS c FROM public.customer_phones x
		WHERE s.phone IS NOT NULL AND x.tenant_id = $1 AND x.phone = s.phone
		AND (s.app_type = '' OR (x.app_type = s.app_type AND x.app_id = s.app_id))) p
	CROSS JOIN LATERAL (SELECT count(DISTINCT x.customer_id) AS n, min(x.customer_id) AS c FROM public.customers x
		WHERE s.third_id IS NOT NULL AND x.tenant_id = $1 AND x.third_id = s.third_id AND x.third_id IS NOT NULL) t
) m`

// matchedByArray counts a batch's resolved records by matchedBy kind, as
// the batches.matched_by array holds them (by kind ordinal).
var matchedByArray = func() string {
	parts := make([]string, 0, pipeline.NumKinds)
	for _, k := range pipeline.IdentityKinds {
		parts = append(parts, "count(*) FILTER (WHERE matched_by = '"+string(k)+"')")
	}
	return "ARRAY[" + strings.Join(parts, ", ") + "]"
}()

// baselineApply writes the resolved chunk, schema %[1]s, tenant $1: the
// per-record results, the batches with their final counters (a chunk holds
// whole batches), the groups (visible once an add names them), and the
// memberships — one change per (group, customer), the latest position
// winning, guarded by position against a later one already stored, in key
// order so that concurrent chunks lock alike.
var baselineApply = []string{
	`INSERT INTO %[1]s.batch_records (tenant_id, batch_id, rec_index, outcome, reason, matched_by, customer_id)
	SELECT $1, batch_id, rec_index, outcome, nullif(outcome, 'MATCHED'), matched_by, customer_id FROM resolved ORDER BY batch_id, rec_index`,
	`INSERT INTO %[1]s.batches (batch_id, tenant_id, appid, opt_type, params, status, total, processed,
		success, unmatched, ambiguous, matched_by, finished_at)
	SELECT batch_id, $1, 'baseline', CASE WHEN bool_and(opt_add) THEN 'add' ELSE 'delete' END, '{}',
		CASE count(*) FILTER (WHERE outcome = 'MATCHED') WHEN count(*) THEN 'SUCCESS' WHEN 0 THEN 'FAILED' ELSE 'PARTIAL_SUCCESS' END,
		count(*), count(*), count(*) FILTER (WHERE outcome = 'MATCHED'), count(*) FILTER (WHERE outcome = 'NOT_FOUND'),
		count(*) FILTER (WHERE outcome = 'AMBIGUOUS'), ` + matchedByArray + `, clock_timestamp()
	FROM resolved GROUP BY batch_id ORDER BY batch_id`,
	`INSERT INTO %[1]s.groups (tenant_id, name, visible)
	SELECT $1, n, bool_or(opt_add) FROM resolved, unnest(groups) AS n WHERE outcome = 'MATCHED' GROUP BY n ORDER BY n
	ON CONFLICT (tenant_id, name) DO NOTHING`,
	`UPDATE %[1]s.groups SET visible = true WHERE tenant_id = $1 AND NOT visible
		AND name IN (SELECT n FROM resolved, unnest(groups) AS n WHERE outcome = 'MATCHED' AND opt_add)`,
	`INSERT INTO %[1]s.memberships AS t (tenant_id, group_id, customer_id, present, batch_id, rec_index)
	SELECT DISTINCT ON (g.group_id, r.customer_id) $1::bigint, g.group_id, r.customer_id, r.opt_add, r.batch_id, r.rec_index
	FROM resolved r CROSS JOIN LATERAL unnest(r.groups) AS n(name)
	JOIN %[1]s.groups g ON g.tenant_id = $1 AND g.name = n.name
	WHERE r.outcome = 'MATCHED'
	ORDER BY g.group_id, r.customer_id, r.batch_id DESC, r.rec_index DESC
	ON CONFLICT (tenant_id, group_id, customer_id) DO UPDATE
	SET present = excluded.present, batch_id = excluded.batch_id, rec_index = excluded.rec_index
	WHERE (t.batch_id, t.rec_index) < (excluded.batch_id, excluded.rec_index)`,
}

// PrepareBaseline creates the baseline's schema afresh, empty.
func PrepareBaseline(ctx context.Context, db *pgxpool.Pool, schema string) error {
	s := pgx.Identifier{schema}.Sanitize()
	stmts := []string{"DROP SCHEMA IF EXISTS " + s + " CASCADE", "CREATE SCHEMA " + s}
	for _, t := range baselineTables {
		stmts = append(stmts, fmt.Sprintf("CREATE TABLE %s.%s (LIKE public.%s INCLUDING ALL)", s, t, t))
	}
	for _, q := range stmts {
		if _, err := db.Exec(ctx, q); err != nil {
			return fmt.Errorf("bench: baseline schema: %w", err)
		}
	}
	return nil
}

// RunBaseline applies w to the baseline schema (made by PrepareBaseline) the
// way a user would by hand with plain PostgreSQL: chunks of whole batches,
// each in one transaction that COPYs its records (normalised) into a
// staging table and applies them with set-based SQL — matching by the same
// priority, per-record results, batch counters, group and membership
// upserts guarded by position — with Workers chunks at once. Durability is
// the database's (fsync and synchronous_commit as configured). The
// measured time runs from the first COPY to the last commit.
func RunBaseline(ctx context.Context, db *pgxpool.Pool, w Workload, cfg BaselineConfig) (BaselineResult, error) {
	if cfg.Schema == "" {
		cfg.Schema = "bench_baseline"
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 2
	}
	if cfg.ChunkRecords <= 0 {
		cfg.ChunkRecords = 20000
	}
	per := max(1, cfg.ChunkRecords/w.BatchSize)
	res := BaselineResult{Records: w.Records, Workers: cfg.Workers, ChunkRecords: per * w.BatchSize}
	schema := pgx.Identifier{cfg.Schema}.Sanitize()
	apply := make([]string, len(baselineApply))
	for i, q := range baselineApply {
		apply[i] = fmt.Sprintf(q, schema)
	}
	nBatches := w.Batches()
	var next atomic.Int64
	var done atomic.Int64
	var pgCPU atomic.Int64 // nanoseconds
	progress := make(chan struct{}, 1)
	start := time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range cfg.Workers {
		g.Go(func() error {
			pc, err := db.Acquire(gctx)
			if err != nil {
				return fmt.Errorf("bench: baseline: %w", err)
			}
			// The temporary tables live with the connection; do not
			// hand it back to the pool with them.
			conn := pc.Hijack()
			defer conn.Close(context.WithoutCancel(gctx))
			if _, err := conn.Exec(gctx, baselineStaging); err != nil {
				return fmt.Errorf("bench: baseline staging: %w", err)
			}
			// The backend's CPU, read from /proc before the connection
			// closes and takes it with it.
			var backend int
			if err := conn.QueryRow(gctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
				return fmt.Errorf("bench: baseline: %w", err)
			}
			if s0, err := supervise.SampleProc(backend); err == nil {
				defer func() {
					if s1, err := supervise.SampleProc(backend); err == nil {
						pgCPU.Add(int64(s1.CPU - s0.CPU))
					}
				}()
			}
			for {
				first := int(next.Add(int64(per))) - per
				if first >= nBatches {
					return nil
				}
				last := min(first+per, nBatches)
				n, err := applyChunkRetrying(gctx, conn, w, cfg, apply, first, last)
				if err != nil {
					return err
				}
				done.Add(int64(n))
				select {
				case progress <- struct{}{}:
				default:
				}
			}
		})
	}
	stop := make(chan struct{})
	reported := make(chan struct{})
	go func() {
		defer close(reported)
		for {
			select {
			case <-stop:
				return
			case <-progress:
				if cfg.Progress != nil {
					cfg.Progress(int(done.Load()))
				}
			}
		}
	}()
	err := g.Wait()
	close(stop)
	<-reported
	if err != nil {
		return res, err
	}
	res.Seconds = time.Since(start).Seconds()
	res.RecordsPerSec = float64(res.Records) / res.Seconds
	res.PostgresCPUSeconds = round3(time.Duration(pgCPU.Load()).Seconds())
	res.PostgresCPUPer1000 = round3(res.PostgresCPUSeconds / float64(res.Records) * 1000)
	res.Outcomes, err = baselineOutcomes(ctx, db, schema)
	return res, err
}

// applyChunkRetrying applies batches [first, last), again after a deadlock
// or serialization failure.
func applyChunkRetrying(ctx context.Context, conn *pgx.Conn, w Workload, cfg BaselineConfig, apply []string, first, last int) (int, error) {
	for attempt := 1; ; attempt++ {
		n, err := applyChunk(ctx, conn, w, cfg, apply, first, last)
		var pgErr *pgconn.PgError
		if err != nil && attempt < 5 && errors.As(err, &pgErr) && (pgErr.Code == "40P01" || pgErr.Code == "40001") {
			continue
		}
		return n, err
	}
}

func applyChunk(ctx context.Context, conn *pgx.Conn, w Workload, cfg BaselineConfig, apply []string, first, last int) (int, error) {
	records := 0
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		src := &stageSource{w: w, ids: cfg.BatchIDs, b: first - 1, last: last, j: -1}
		n, err := tx.CopyFrom(ctx, pgx.Identifier{"stage"}, stageColumns, src)
		if err != nil {
			return fmt.Errorf("bench: baseline copy: %w", err)
		}
		records = int(n)
		b := &pgx.Batch{}
		b.Queue(baselineResolve, cfg.TenantID)
		for _, q := range apply {
			if strings.Contains(q, "$1") {
				b.Queue(q, cfg.TenantID)
			} else {
				b.Queue(q)
			}
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return fmt.Errorf("bench: baseline apply: %w", err)
		}
		return nil
	})
	return records, err
}

// stageSource generates the staged rows of batches (b, last) for COPY.
type stageSource struct {
	w       Workload
	ids     []int64
	b, last int
	j       int // record index within the current batch
	batch   Batch
	row     []any
	groups  []string
}

func (s *stageSource) Next() bool {
	s.j++
	for s.b < 0 || s.j >= len(s.batch.Records) {
		s.b++
		if s.b >= s.last {
			return false
		}
		s.w.Batch(s.b, &s.batch)
		s.j = 0
	}
	return true
}

func (s *stageSource) Values() ([]any, error) {
	r := &s.batch.Records[s.j]
	p := s.batch.Params
	id := int64(s.b) + 1
	if s.ids != nil {
		id = s.ids[s.b]
	}
	way := int16(0)
	if p.MatchingType == 2 {
		way = int16(p.IdentifyWay)
	}
	s.groups = s.groups[:0]
	for _, g := range r.Groups {
		s.groups = append(s.groups, s.w.GroupName(g))
	}
	s.row = append(s.row[:0], id, int32(s.j), way, p.OptType == "add", p.AppType, p.AppID,
		nullable(r.ThirdID), nullable(r.Phone), nullable(r.OpenID), nullable(r.UnionID), s.groups)
	return s.row, nil
}

func (s *stageSource) Err() error { return nil }

func nullable(v string) any {
	if v == "" {
		return nil
	}
	return v
}

func baselineOutcomes(ctx context.Context, db *pgxpool.Pool, schema string) (Outcomes, error) {
	o := Outcomes{MatchedBy: map[string]int64{}}
	err := db.QueryRow(ctx, fmt.Sprintf(`SELECT coalesce(sum(success), 0), coalesce(sum(unmatched), 0),
		coalesce(sum(ambiguous), 0), coalesce(sum(invalid), 0), coalesce(sum(failed), 0) FROM %s.batches`, schema)).Scan(
		&o.Success, &o.Unmatched, &o.Ambiguous, &o.Invalid, &o.Failed)
	if err != nil {
		return o, fmt.Errorf("bench: baseline outcomes: %w", err)
	}
	// matched_by is indexed by kind ordinal, 1-based.
	rows, err := db.Query(ctx, fmt.Sprintf(`SELECT o - 1, sum(n) FROM %s.batches, unnest(matched_by) WITH ORDINALITY AS m(n, o)
		GROUP BY o`, schema))
	if err != nil {
		return o, fmt.Errorf("bench: baseline outcomes: %w", err)
	}
	for rows.Next() {
		var k int
		var n int64
		if err := rows.Scan(&k, &n); err != nil {
			return o, fmt.Errorf("bench: baseline outcomes: %w", err)
		}
		if k < pipeline.NumKinds {
			o.MatchedBy[string(pipeline.IdentityKinds[k])] = n
		}
	}
	if err := rows.Err(); err != nil {
		return o, fmt.Errorf("bench: baseline outcomes: %w", err)
	}
	return o, nil
}

// Memberships counts, per group name of the tenant, the members present,
// in the pipeline's tables (schema "public") or the baseline's.
func Memberships(ctx context.Context, db *pgxpool.Pool, schema string, tenantID int64, prefix string) (map[string]int64, error) {
	rows, err := db.Query(ctx, fmt.Sprintf(`SELECT g.name, count(*) FILTER (WHERE m.present)
		FROM %[1]s.groups g JOIN %[1]s.memberships m ON m.tenant_id = g.tenant_id AND m.group_id = g.group_id
		WHERE g.tenant_id = $1 AND starts_with(g.name, $2) GROUP BY g.name`, pgx.Identifier{schema}.Sanitize()), tenantID, prefix)
	if err != nil {
		return nil, fmt.Errorf("bench: count memberships: %w", err)
	}
	out := map[string]int64{}
	var name string
	var n int64
	_, err = pgx.ForEachRow(rows, []any{&name, &n}, func() error {
		out[name] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bench: count memberships: %w", err)
	}
	return out, nil
}
