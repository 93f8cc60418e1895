package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Observer reads the progress and results of a run's batches from the
// system's PostgreSQL: the batches of one tenant whose ids exceed the
// largest id that existed before the run.
type Observer struct {
	db       *pgxpool.Pool
	tenantID int64
	after    int64
}

// NewObserver returns an observer of the tenant's batches made from now on.
func NewObserver(ctx context.Context, db *pgxpool.Pool, tenantID int64) (*Observer, error) {
	o := &Observer{db: db, tenantID: tenantID}
	if err := db.QueryRow(ctx, `SELECT /* all tenants */ coalesce(max(batch_id), 0) FROM batches`).Scan(&o.after); err != nil {
		return nil, fmt.Errorf("bench: read batches: %w", err)
	}
	return o, nil
}

// Progress is how far a run's batches got.
type Progress struct {
	Batches   int   // batches recorded (PENDING included)
	Accepted  int   // batches past PENDING
	Finished  int   // batches with a final status
	Aborted   int   // batches whose acceptance failed
	Records   int64 // records of the accepted batches
	Processed int64 // records with an outcome
}

// Progress reads the run's progress.
func (o *Observer) Progress(ctx context.Context) (Progress, error) {
	var p Progress
	err := o.db.QueryRow(ctx, `
		SELECT count(*), count(*) FILTER (WHERE status <> 'PENDING' AND NOT aborted),
			count(finished_at) FILTER (WHERE NOT aborted), count(*) FILTER (WHERE aborted),
			coalesce(sum(total) FILTER (WHERE status <> 'PENDING' AND NOT aborted), 0),
			coalesce(sum(processed), 0)
		FROM batches WHERE tenant_id = $1 AND batch_id > $2`, o.tenantID, o.after).Scan(
		&p.Batches, &p.Accepted, &p.Finished, &p.Aborted, &p.Records, &p.Processed)
	if err != nil {
		return p, fmt.Errorf("bench: read progress: %w", err)
	}
	return p, nil
}

// Outcomes are the records of a run by outcome, over all its batches.
type Outcomes struct {
	Success   int64            `json:"success"`
	Unmatched int64            `json:"unmatched"`
	Ambiguous int64            `json:"ambiguous"`
	Invalid   int64            `json:"invalid"`
	Failed    int64            `json:"failed"`
	MatchedBy map[string]int64 `json:"matchedBy"`
}

// Result is what the database says of a finished run.
type Result struct {
	Batches int
	// FirstAccepted is the earliest accepted_at, LastFinished the latest
	// finished_at, both on the database's clock.
	FirstAccepted, LastFinished time.Time
	// Latency is accepted_at → finished_at over the batches.
	Latency  Latency
	Outcomes Outcomes
}

// Result reads the finished run.
func (o *Observer) Result(ctx context.Context) (Result, error) {
	var r Result
	r.Outcomes.MatchedBy = map[string]int64{}
	rows, err := o.db.Query(ctx, `
		SELECT accepted_at, finished_at, success, unmatched, ambiguous, invalid, failed,
			matched_by
		FROM batches WHERE tenant_id = $1 AND batch_id > $2 AND NOT aborted AND finished_at IS NOT NULL`, o.tenantID, o.after)
	if err != nil {
		return r, fmt.Errorf("bench: read results: %w", err)
	}
	var lat []time.Duration
	for rows.Next() {
		var acc, fin time.Time
		var c [5]int64
		var matched []int64
		if err := rows.Scan(&acc, &fin, &c[0], &c[1], &c[2], &c[3], &c[4], &matched); err != nil {
			return r, fmt.Errorf("bench: read results: %w", err)
		}
		if r.FirstAccepted.IsZero() || acc.Before(r.FirstAccepted) {
			r.FirstAccepted = acc
		}
		if fin.After(r.LastFinished) {
			r.LastFinished = fin
		}
		lat = append(lat, fin.Sub(acc))
		oc := &r.Outcomes
		oc.Success += c[0]
		oc.Unmatched += c[1]
		oc.Ambiguous += c[2]
		oc.Invalid += c[3]
		oc.Failed += c[4]
		for o, n := range matched {
			if o < pipeline.NumKinds {
				oc.MatchedBy[string(pipeline.IdentityKinds[o])] += n
			}
		}
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("bench: read results: %w", err)
	}
	r.Batches = len(lat)
	r.Latency = latencyOf(lat)
	return r, nil
}

// BatchIDs maps batch indexes to the ids of the run's batches whose
// idempotency key is keyPrefix + index (the Kafka driver's).
func (o *Observer) BatchIDs(ctx context.Context, keyPrefix string, n int) ([]int64, error) {
	rows, err := o.db.Query(ctx, `SELECT batch_id, idempotency_key FROM batches
		WHERE tenant_id = $1 AND batch_id > $2 AND NOT aborted AND starts_with(idempotency_key, $3)`, o.tenantID, o.after, keyPrefix)
	if err != nil {
		return nil, fmt.Errorf("bench: read batch ids: %w", err)
	}
	ids := make([]int64, n)
	var id int64
	var key string
	_, err = pgx.ForEachRow(rows, []any{&id, &key}, func() error {
		b, err := strconv.Atoi(strings.TrimPrefix(key, keyPrefix))
		if err == nil && b >= 0 && b < n {
			ids[b] = id
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("bench: read batch ids: %w", err)
	}
	return ids, nil
}

// Live writes a progress line: rewritten in place on a terminal, else
// one line each time it is called.
type Live struct {
	w   io.Writer
	tty bool
	n   int // length of the line on screen
}

// NewLive returns a progress line on w.
func NewLive(w io.Writer) *Live {
	l := &Live{w: w}
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			l.tty = true
		}
	}
	return l
}

// Update shows s as the progress line.
func (l *Live) Update(s string) {
	if !l.tty {
		fmt.Fprintln(l.w, s)
		return
	}
	pad := ""
	if len(s) < l.n {
		pad = strings.Repeat(" ", l.n-len(s))
	}
	fmt.Fprint(l.w, "\r"+s+pad)
	l.n = len(s)
}

// Done ends the progress line, so that what follows starts on a line of
// its own.
func (l *Live) Done() {
	if l.tty && l.n > 0 {
		fmt.Fprintln(l.w)
	}
	l.n = 0
}
