package matcher

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// Directory is what the matcher needs of the customer directory;
// directory.PGDirectory is the PostgreSQL one.
type Directory interface {
	// Lookup returns every binding of the given keys; a key given several
	// times is answered once. Implementations answer a whole chunk in one
	// round trip, with one query per identity kind and tenant, never one
	// per key. The Hits belong to the caller, who must not modify them.
	Lookup(ctx context.Context, keys []directory.Key) (*directory.Hits, error)
	// FindOrCreate returns, for each request in order, the customer with
	// that thirdId, creating it if the tenant has none. Concurrent calls
	// naming the same (tenant, thirdId) create one customer.
	FindOrCreate(ctx context.Context, reqs []directory.CreateRequest) ([]directory.CreateResult, error)
}

// Batches is what the matcher needs of the batches table.
type Batches interface {
	// BatchStates says, for each given batch, by batch id, whether
	// records of it may change the directory, in one query. A batch
	// absent from the map is closed (a batch of another tenant is
	// absent). It fails with ErrBatchPending (transient) when a batch is
	// still being accepted by ingest.
	BatchStates(ctx context.Context, batches []BatchRef) (map[int64]BatchState, error)
}

// Store is everything the stage reads and writes in PostgreSQL: the
// directory and the batches. Implementations are safe for concurrent use.
type Store interface {
	Directory
	Batches
}

// BatchRef names a batch: batch ids are unique, but every look-up of a
// tenant table names the tenant too (on Citus it routes the query).
type BatchRef struct{ TenantID, BatchID int64 }

// BatchState is what a batch lets its records do to the directory.
type BatchState struct {
	TenantID int64
	// Open: the batch is accepted and not finished, so its records get
	// outcomes and may create customers. A batch not open was aborted
	// (ingest answered 503) or already finished (its deadline passed, or
	// the record is a redelivery): its records must change nothing.
	Open bool
}

// ErrBatchPending means a record's batch is not accepted yet (ingest is
// still writing its records to Kafka): retry the chunk.
var ErrBatchPending = fmt.Errorf("matcher: batch not yet accepted: %w", retry.ErrTransient)

// PGStore is the PostgreSQL Store: the customer directory of package
// directory, and the batches table, which this file reads.
//
// BatchStates lives here, not in package directory, because it reads and
// aborts rows of the batches table, the pipeline's bookkeeping that ingest
// writes and the sink finishes; the directory holds customers only. The
// matcher is the one caller, and it asks in the same chunk loop as its
// look-ups.
type PGStore struct {
	*directory.PGDirectory
	db *pgxpool.Pool
	// PendingTimeout is how long a PENDING batch may wait for its ingest
	// to accept it before BatchStates aborts it (as the sink and ingest's
	// janitor do); default 60 s. It must exceed ingest's longest request.
	PendingTimeout time.Duration
}

var (
	_ Store     = (*PGStore)(nil)
	_ Directory = (*directory.PGDirectory)(nil)
)

// NewPGStore returns a store on db.
func NewPGStore(db *pgxpool.Pool) *PGStore {
	return &PGStore{
		PGDirectory:    directory.NewPGDirectory(db),
		db:             db,
		PendingTimeout: pipeline.DefaultPendingTimeout,
	}
}

// BatchStates reads the batches with one query per tenant, all in one
// round trip (each query names one tenant, so on Citus it runs on one
// shard). A batch PENDING for longer than PendingTimeout is aborted with
// the compare-and-set ingest uses, so exactly one of accepting and
// aborting it wins (one statement per tenant).
func (d *PGStore) BatchStates(ctx context.Context, batches []BatchRef) (map[int64]BatchState, error) {
	var tenants []int64
	byTenant := make(map[int64][]int64) // tenant -> its batch ids
	for _, b := range batches {
		if _, ok := byTenant[b.TenantID]; !ok {
			tenants = append(tenants, b.TenantID)
		}
		byTenant[b.TenantID] = append(byTenant[b.TenantID], b.BatchID)
	}
	out := make(map[int64]BatchState, len(batches))
	if len(tenants) == 0 {
		return out, nil
	}
	staleBefore := time.Now().Add(-d.PendingTimeout)
	qb := &pgx.Batch{}
	for _, tenant := range tenants {
		qb.Queue(`
			SELECT batch_id, status, aborted, accepted_at < $3
			FROM batches WHERE tenant_id = $1 AND batch_id = ANY($2)`, tenant, byTenant[tenant], staleBefore)
	}
	stale := make(map[int64][]int64) // tenant -> batches
	pending := false
	br := d.db.SendBatch(ctx, qb)
	for _, tenant := range tenants {
		rows, err := br.Query()
		if err != nil {
			br.Close()
			return nil, fmt.Errorf("matcher: read batches: %w", err)
		}
		for rows.Next() {
			var id int64
			st := BatchState{TenantID: tenant}
			var status string
			var aborted, old bool
			if err := rows.Scan(&id, &status, &aborted, &old); err != nil {
				rows.Close()
				br.Close()
				return nil, fmt.Errorf("matcher: read batches: %w", err)
			}
			switch {
			case status == "PENDING" && old:
				stale[tenant] = append(stale[tenant], id)
			case status == "PENDING":
				pending = true
			}
			st.Open = status == "PROCESSING" && !aborted
			out[id] = st
		}
		if err := rows.Err(); err != nil {
			br.Close()
			return nil, fmt.Errorf("matcher: read batches: %w", err)
		}
	}
	if err := br.Close(); err != nil {
		return nil, fmt.Errorf("matcher: read batches: %w", err)
	}
	for tenant, ids := range stale {
		tag, err := d.db.Exec(ctx, `
			UPDATE batches SET status = 'FAILED', aborted = true, finished_at = $3, idempotency_key = NULL
			WHERE tenant_id = $1 AND batch_id = ANY($2) AND status = 'PENDING'`, tenant, ids, time.Now())
		if err != nil {
			return nil, fmt.Errorf("matcher: abort stale batches: %w", err)
		}
		// A stale batch accepted meanwhile is read again on the retry.
		pending = pending || int(tag.RowsAffected()) < len(ids)
	}
	if pending {
		return nil, ErrBatchPending
	}
	return out, nil
}
