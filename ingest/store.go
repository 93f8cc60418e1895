package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/batches"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// ErrNotFound means the batch or group does not exist for the caller's
// tenant. Another tenant's objects are reported the same way.
var ErrNotFound = errors.New("ingest: not found")

// errNotAccepted means a PENDING batch was aborted before ingest could
// accept it (the janitor judged it stale). Nothing was accepted, so a retry
// is safe: it is transient.
var errNotAccepted = fmt.Errorf("ingest: batch was aborted before acceptance: %w", retry.ErrTransient)

// Store is ingest's PostgreSQL state: batches and the reads of §4.
type Store struct {
	db *pgxpool.Pool
	// afterAccept, when set (by tests), runs after Accept's UPDATE
	// succeeded and its error is Accept's: an acceptance that committed
	// but reported a failure, as a connection lost after COMMIT does.
	afterAccept func(batchID int64) error
}

// NewStore returns a store on db.
func NewStore(db *pgxpool.Pool) *Store { return &Store{db: db} }

// Ping checks that PostgreSQL answers.
func (s *Store) Ping(ctx context.Context) error { return s.db.Ping(ctx) }

// IdempotencyWindow is how long an Idempotency-Key names its batch.
const IdempotencyWindow = 24 * time.Hour

// errKeyTaken means another request created a batch with the same
// idempotency key first.
var errKeyTaken = errors.New("ingest: idempotency key taken")

// CreateBatch allocates the next batch id (acceptance order) and records
// the batch as PENDING: its records are not to be applied until Accept. A
// non-empty key must be free for the tenant (see FindByKey), else
// errKeyTaken. The id comes from a statement of its own, which names no
// table: on Citus it runs on the coordinator, the only node with the
// sequence.
func (s *Store) CreateBatch(ctx context.Context, tenantID int64, appID string, p pipeline.Params, total int, key string, hash []byte) (int64, error) {
	params, err := json.Marshal(p)
	if err != nil {
		return 0, fmt.Errorf("ingest: encode params: %w", err)
	}
	var id int64
	if err := s.db.QueryRow(ctx, `SELECT nextval('batch_id_seq')`).Scan(&id); err != nil {
		return 0, fmt.Errorf("ingest: allocate batch id: %w", err)
	}
	// A taken key returns no row (ON CONFLICT DO NOTHING): no constraint
	// name or SQLSTATE is inspected, which a distributed engine reports
	// differently.
	err = s.db.QueryRow(ctx, `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, idempotency_key, request_hash, accepted_at)
		VALUES ($1, $2, $3, $4, $5, 'PENDING', $6, nullif($7, ''), $8, $9)
		ON CONFLICT (tenant_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
		RETURNING batch_id`,
		id, tenantID, appID, string(p.OptType), params, total, key, hash, time.Now()).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, errKeyTaken
	}
	if err != nil {
		return 0, fmt.Errorf("ingest: create batch: %w", err)
	}
	return id, nil
}

// DeferDefault returns the tenant's default for publicParams.deferUnmatched
// (tenants.defer_unmatched; false for a tenant without a row).
func (s *Store) DeferDefault(ctx context.Context, tenantID int64) (bool, error) {
	var def bool
	err := s.db.QueryRow(ctx, `SELECT defer_unmatched FROM tenants WHERE tenant_id = $1`, tenantID).Scan(&def)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ingest: read the tenant's deferUnmatched default: %w", err)
	}
	return def, nil
}

// keyedBatch is the batch an idempotency key names.
type keyedBatch struct {
	id      int64
	hash    []byte
	pending bool
}

// FindByKey returns the batch the tenant's idempotency key names, if any.
// A key older than IdempotencyWindow is released first, so it names
// nothing; so is the key of an aborted batch (see Abort).
func (s *Store) FindByKey(ctx context.Context, tenantID int64, key string) (keyedBatch, bool, error) {
	var b keyedBatch
	_, err := s.db.Exec(ctx, `UPDATE batches SET idempotency_key = NULL
		WHERE tenant_id = $1 AND idempotency_key = $2 AND accepted_at < $3`,
		tenantID, key, time.Now().Add(-IdempotencyWindow))
	if err != nil {
		return b, false, fmt.Errorf("ingest: release expired key: %w", err)
	}
	err = s.db.QueryRow(ctx, `SELECT batch_id, request_hash, status = 'PENDING' FROM batches
		WHERE tenant_id = $1 AND idempotency_key = $2`, tenantID, key).Scan(&b.id, &b.hash, &b.pending)
	if errors.Is(err, pgx.ErrNoRows) {
		return b, false, nil
	}
	if err != nil {
		return b, false, fmt.Errorf("ingest: find idempotency key: %w", err)
	}
	return b, true, nil
}

// Accept moves a tenant's batch from PENDING to PROCESSING once all its
// records are in Kafka. It fails with errNotAccepted if the batch was
// aborted meanwhile.
func (s *Store) Accept(ctx context.Context, tenantID, batchID int64) error {
	tag, err := s.db.Exec(ctx, `UPDATE batches SET status = 'PROCESSING' WHERE tenant_id = $1 AND batch_id = $2 AND status = 'PENDING'`,
		tenantID, batchID)
	if err != nil {
		return fmt.Errorf("ingest: accept batch: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return errNotAccepted
	}
	if s.afterAccept != nil {
		return s.afterAccept(batchID)
	}
	return nil
}

// Settle decides a batch whose acceptance failed ambiguously (Accept's
// UPDATE may or may not have committed): a batch still PENDING is aborted
// now, as Abort does, and reported not accepted; a batch that is no longer
// PENDING was accepted unless it was aborted. The UPDATE waits for any
// in-flight acceptance of the row, so the answer is final.
func (s *Store) Settle(ctx context.Context, tenantID, batchID int64) (accepted bool, err error) {
	tag, err := s.db.Exec(ctx, `UPDATE batches SET status = 'FAILED', aborted = true, finished_at = $3, idempotency_key = NULL
		WHERE tenant_id = $1 AND batch_id = $2 AND status = 'PENDING'`, tenantID, batchID, time.Now())
	if err != nil {
		return false, fmt.Errorf("ingest: settle batch: %w", err)
	}
	if tag.RowsAffected() > 0 {
		return false, nil
	}
	var aborted bool
	err = s.db.QueryRow(ctx, `SELECT aborted FROM batches WHERE tenant_id = $1 AND batch_id = $2`, tenantID, batchID).Scan(&aborted)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil // pruned: it was aborted long ago
	}
	if err != nil {
		return false, fmt.Errorf("ingest: settle batch: %w", err)
	}
	return !aborted, nil
}

// Abort marks a PENDING batch FAILED and aborted: its records, should any
// have reached Kafka, are never applied. The caller was told 503, so its
// idempotency key is released for the retry.
func (s *Store) Abort(ctx context.Context, tenantID, batchID int64) error {
	_, err := s.db.Exec(ctx, `UPDATE batches SET status = 'FAILED', aborted = true, finished_at = $3, idempotency_key = NULL
		WHERE tenant_id = $1 AND batch_id = $2 AND status = 'PENDING'`, tenantID, batchID, time.Now())
	if err != nil {
		return fmt.Errorf("ingest: abort batch: %w", err)
	}
	return nil
}

// AbortStale aborts batches left PENDING for longer than age (their ingest
// died between allocating and accepting them) and returns how many. It
// finds them across tenants without locks, then aborts each tenant's in a
// statement of its own (one tenant per transaction), with the compare-and-set
// Accept races against.
func (s *Store) AbortStale(ctx context.Context, age time.Duration) (int64, error) {
	rows, err := s.db.Query(ctx, `SELECT /* all tenants */ tenant_id, batch_id FROM batches
		WHERE status = 'PENDING' AND accepted_at < $1`, time.Now().Add(-age))
	if err != nil {
		return 0, fmt.Errorf("ingest: find stale batches: %w", err)
	}
	stale := make(map[int64][]int64)
	for rows.Next() {
		var t, id int64
		if err := rows.Scan(&t, &id); err != nil {
			return 0, fmt.Errorf("ingest: find stale batches: %w", err)
		}
		stale[t] = append(stale[t], id)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("ingest: find stale batches: %w", err)
	}
	var n int64
	for t, ids := range stale {
		tag, err := s.db.Exec(ctx, `UPDATE batches SET status = 'FAILED', aborted = true, finished_at = $3, idempotency_key = NULL
			WHERE tenant_id = $1 AND batch_id = ANY($2) AND status = 'PENDING'`, t, ids, time.Now())
		if err != nil {
			return n, fmt.Errorf("ingest: abort stale batches: %w", err)
		}
		n += tag.RowsAffected()
	}
	return n, nil
}

// Failure is one record of a batch that was not applied.
type Failure struct {
	Index int `json:"index"`
	// RecordRef is what the page may show of the record: its thirdId and
	// its other identifiers masked (identity.Kinds).
	pipeline.RecordRef
	Reason string `json:"reason"`
	// Deferral is the record's deferred-matching state (SPEC §13):
	// PENDING, LATE_MATCHED or EXPIRED; "" for a final record.
	Deferral string `json:"deferral,omitempty"`
}

// BatchResult is the data of batchResult (SPEC §4): the batch's summary and
// one page of the records that were not applied.
type BatchResult struct {
	BatchID int64 `json:"batchId"`
	pipeline.BatchSummary
	Failures     []Failure `json:"failures"`
	PageNo       int       `json:"pageNo"`
	PageSize     int       `json:"pageSize"`
	FailureTotal int       `json:"failureTotal"`
}

// BatchResult reads a batch of the tenant with one page of its failures. A
// batch whose acceptance never completed (the caller got 503) reads as
// FAILED with nothing processed; one still being accepted reads PROCESSING.
func (s *Store) BatchResult(ctx context.Context, tenantID, batchID int64, pageNo, pageSize int) (BatchResult, error) {
	r := BatchResult{BatchID: batchID, PageNo: pageNo, PageSize: pageSize, Failures: []Failure{}}
	sums, err := batches.Read(ctx, s.db, tenantID, []int64{batchID})
	if err != nil {
		return r, fmt.Errorf("ingest: read batch: %w", err)
	}
	if len(sums) == 0 {
		return r, ErrNotFound
	}
	r.BatchSummary = sums[0].BatchSummary
	for _, n := range r.ErrorCounts {
		r.FailureTotal += n
	}
	rows, err := s.db.Query(ctx, `SELECT rec_index, reason, coalesce(ref, '{}'), coalesce(deferral, '') FROM batch_records
		WHERE tenant_id = $1 AND batch_id = $2 AND reason IS NOT NULL ORDER BY rec_index LIMIT $3 OFFSET $4`,
		tenantID, batchID, pageSize, (pageNo-1)*pageSize)
	if err != nil {
		return r, fmt.Errorf("ingest: read failures: %w", err)
	}
	for rows.Next() {
		var f Failure
		if err := rows.Scan(&f.Index, &f.Reason, &f.RecordRef, &f.Deferral); err != nil {
			return r, fmt.Errorf("ingest: read failures: %w", err)
		}
		r.Failures = append(r.Failures, f)
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("ingest: read failures: %w", err)
	}
	return r, nil
}

// Group is one entry of group/list.
type Group struct {
	GroupID     int64  `json:"groupId"`
	GroupName   string `json:"groupName"`
	Category    string `json:"category"`
	MemberCount int64  `json:"memberCount"`
}

// GroupsPage is the data of group/list: one page of the tenant's groups.
type GroupsPage struct {
	Groups   []Group `json:"groups"`
	PageNo   int     `json:"pageNo"`
	PageSize int     `json:"pageSize"`
	Total    int64   `json:"total"` // visible groups of the tenant, on every page
}

// Groups reads page pageNo (from 1) of pageSize of the tenant's visible
// groups, ordered by name, with their member counts, and how many the
// tenant has in all. A page past the end is empty, not an error. Total and
// page come from one statement, so they agree. The member-count subquery
// names the tenant as $1, not as g.tenant_id: Citus routes a parameter to
// one shard but fans a column reference out to every shard (~100x slower).
func (s *Store) Groups(ctx context.Context, tenantID int64, pageNo, pageSize int) (GroupsPage, error) {
	page := GroupsPage{Groups: []Group{}, PageNo: pageNo, PageSize: pageSize}
	rows, err := s.db.Query(ctx, `
		SELECT t.total, p.group_id, p.name, p.category, p.members
		FROM (SELECT count(*) AS total FROM groups WHERE tenant_id = $1 AND visible) t
		LEFT JOIN LATERAL (
			SELECT g.group_id, g.name, g.category,
			       (SELECT count(*) FROM memberships m
			        WHERE m.tenant_id = $1 AND m.group_id = g.group_id AND m.present) AS members
			FROM groups g WHERE g.tenant_id = $1 AND g.visible
			ORDER BY g.name LIMIT $2 OFFSET $3) p ON true`,
		tenantID, pageSize, int64(pageNo-1)*int64(pageSize))
	if err != nil {
		return page, fmt.Errorf("ingest: list groups: %w", err)
	}
	for rows.Next() {
		var id, members *int64
		var name, category *string
		if err := rows.Scan(&page.Total, &id, &name, &category, &members); err != nil {
			return page, fmt.Errorf("ingest: list groups: %w", err)
		}
		if id != nil {
			page.Groups = append(page.Groups, Group{GroupID: *id, GroupName: *name, Category: *category, MemberCount: *members})
		}
	}
	if err := rows.Err(); err != nil {
		return page, fmt.Errorf("ingest: list groups: %w", err)
	}
	return page, nil
}

// Member is one entry of group/members.
type Member struct {
	CustomerID int64  `json:"customerId"`
	ThirdID    string `json:"thirdId,omitempty"`
}

// MembersPage is the data of group/members.
type MembersPage struct {
	GroupName   string   `json:"groupName"`
	MemberCount int64    `json:"memberCount"`
	Members     []Member `json:"members"`
	NextCursor  string   `json:"nextCursor"`
}

// Members reads one page of a group's members in customer id order. The
// cursor is opaque to callers: "" starts at the beginning, and the page's
// NextCursor ("" on the last page) continues.
func (s *Store) Members(ctx context.Context, tenantID int64, name, cursor string, pageSize int) (MembersPage, error) {
	page := MembersPage{GroupName: name, Members: []Member{}}
	var after int64
	if cursor != "" {
		var err error
		if after, err = strconv.ParseInt(cursor, 36, 64); err != nil || after < 0 {
			return page, errBadCursor
		}
	}
	var groupID int64
	err := s.db.QueryRow(ctx, `SELECT group_id, (SELECT count(*) FROM memberships m
			WHERE m.tenant_id = $1 AND m.group_id = g.group_id AND m.present)
		FROM groups g WHERE g.tenant_id = $1 AND g.name = $2 AND g.visible`, tenantID, name).Scan(&groupID, &page.MemberCount)
	if errors.Is(err, pgx.ErrNoRows) {
		return page, ErrNotFound
	}
	if err != nil {
		return page, fmt.Errorf("ingest: read group: %w", err)
	}
	rows, err := s.db.Query(ctx, `
		SELECT m.customer_id, coalesce(c.third_id, '') FROM memberships m
		LEFT JOIN customers c ON c.tenant_id = $1 AND c.customer_id = m.customer_id
		WHERE m.tenant_id = $1 AND m.group_id = $2 AND m.present AND m.customer_id > $3
		ORDER BY m.customer_id LIMIT $4`, tenantID, groupID, after, pageSize+1)
	if err != nil {
		return page, fmt.Errorf("ingest: read members: %w", err)
	}
	for rows.Next() {
		var m Member
		if err := rows.Scan(&m.CustomerID, &m.ThirdID); err != nil {
			return page, fmt.Errorf("ingest: read members: %w", err)
		}
		page.Members = append(page.Members, m)
	}
	if err := rows.Err(); err != nil {
		return page, fmt.Errorf("ingest: read members: %w", err)
	}
	if len(page.Members) > pageSize {
		page.Members = page.Members[:pageSize]
		page.NextCursor = strconv.FormatInt(page.Members[pageSize-1].CustomerID, 36)
	}
	return page, nil
}

var errBadCursor = errors.New("cursor is not one this API returned")
