package matcher

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// Key names one normalised identity value of a tenant.
type Key struct {
	TenantID int64
	Kind     pipeline.IdentityKind
	Value    string
}

// CreateRequest asks for the customer with a thirdId, to be created with
// the given identities if the tenant has none (isMatching=false). Phone is
// normalised; AppType/AppID, when set, name the application the new
// identities are bound through.
type CreateRequest struct {
	TenantID               int64
	ThirdID                string
	Phone, OpenID, UnionID string
	AppType, AppID         string
}

// CreateResult answers one CreateRequest.
type CreateResult struct {
	CustomerID int64 // 0 when Ambiguous
	Created    bool
	Ambiguous  bool // several customers already have the thirdId
}

// Directory is what the matcher needs of the customer directory.
type Directory interface {
	// Lookup returns every binding of the given keys; keys with none are
	// absent from the map, and a key given several times is answered once.
	// Implementations answer a whole chunk in one round trip, with one
	// query per identity kind and tenant, never one per key. The map and
	// its slices belong to the caller, who must not append to the slices.
	Lookup(ctx context.Context, keys []Key) (map[Key][]identity.Binding, error)
	// FindOrCreate returns, for each request in order, the customer with
	// that thirdId, creating it if the tenant has none. Concurrent calls
	// naming the same (tenant, thirdId) create one customer.
	FindOrCreate(ctx context.Context, reqs []CreateRequest) ([]CreateResult, error)
	// BatchStates says, for each given batch, by batch id, whether
	// records of it may change the directory, in one query. A batch
	// absent from the map is closed (a batch of another tenant is
	// absent). It fails with ErrBatchPending (transient) when a batch is
	// still being accepted by ingest.
	BatchStates(ctx context.Context, batches []BatchRef) (map[int64]BatchState, error)
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

// PGDirectory is the PostgreSQL Directory.
type PGDirectory struct {
	db *pgxpool.Pool
	// PendingTimeout is how long a PENDING batch may wait for its ingest
	// to accept it before BatchStates aborts it (as the sink and ingest's
	// janitor do); default 60 s. It must exceed ingest's longest request.
	PendingTimeout time.Duration
	// ObserveQuery, when set before use, is told the distinct values of
	// every look-up query sent (Metrics.ObserveLookup fits).
	ObserveQuery func(kind pipeline.IdentityKind, values int)
}

var _ Directory = (*PGDirectory)(nil)

// NewPGDirectory returns a directory on db.
func NewPGDirectory(db *pgxpool.Pool) *PGDirectory {
	return &PGDirectory{db: db, PendingTimeout: pipeline.DefaultPendingTimeout}
}

// BatchStates reads the batches with one query per tenant, all in one
// round trip (each query names one tenant, so on Citus it runs on one
// shard). A batch PENDING for longer than PendingTimeout is aborted with
// the compare-and-set ingest uses, so exactly one of accepting and
// aborting it wins (one statement per tenant).
func (d *PGDirectory) BatchStates(ctx context.Context, batches []BatchRef) (map[int64]BatchState, error) {
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

// lookupSQL answers one identity kind for one tenant ($1) and an array of
// values ($2): each row is a value found, a customer holding it and, but for
// thirdIds, the application it was bound through. The "= ANY" index scans
// descend each index once per distinct value, in index order; the explicit
// IS NOT NULL lets a generic plan use the partial indexes.
var lookupSQL = map[pipeline.IdentityKind]string{
	pipeline.KindPhone: `SELECT phone, customer_id, app_type, app_id FROM customer_phones
		WHERE tenant_id = $1 AND phone = ANY($2::text[])`,
	pipeline.KindOpenID: `SELECT openid, customer_id, app_type, app_id FROM customer_openids
		WHERE tenant_id = $1 AND openid = ANY($2::text[])`,
	pipeline.KindUnionID: `SELECT unionid, customer_id, unionid_app_type, unionid_app_id FROM customers
		WHERE tenant_id = $1 AND unionid = ANY($2::text[]) AND unionid IS NOT NULL`,
	pipeline.KindThirdID: `SELECT third_id, customer_id FROM customers
		WHERE tenant_id = $1 AND third_id = ANY($2::text[]) AND third_id IS NOT NULL`,
}

// lookupGroup is the distinct values of one kind of one tenant that a
// Lookup asks about.
type lookupGroup struct {
	tenant int64
	kind   pipeline.IdentityKind
	values []string
	index  map[string]int32 // value -> its position in values
}

// Lookup sends one query per identity kind and tenant present, all in one
// round trip, and decodes the rows without allocating a string per row.
// The slices of the map share one backing array per query; the caller must
// not append to them.
func (d *PGDirectory) Lookup(ctx context.Context, keys []Key) (map[Key][]identity.Binding, error) {
	type groupKey struct {
		tenant int64
		kind   pipeline.IdentityKind
	}
	groups := make(map[groupKey]*lookupGroup, 4)
	var order []*lookupGroup
	var last *lookupGroup // keys of one group tend to come together
	for _, k := range keys {
		g := last
		if g == nil || g.tenant != k.TenantID || g.kind != k.Kind {
			gk := groupKey{k.TenantID, k.Kind}
			g = groups[gk]
			if g == nil {
				if _, ok := lookupSQL[k.Kind]; !ok {
					return nil, fmt.Errorf("matcher: directory lookup: unknown identity kind %q", k.Kind)
				}
				g = &lookupGroup{tenant: k.TenantID, kind: k.Kind, index: make(map[string]int32, len(keys)/numKinds+1)}
				groups[gk] = g
				order = append(order, g)
			}
			last = g
		}
		if _, dup := g.index[k.Value]; !dup {
			g.index[k.Value] = int32(len(g.values))
			g.values = append(g.values, k.Value)
		}
	}
	out := make(map[Key][]identity.Binding, len(keys))
	if len(order) == 0 {
		return out, nil
	}
	intern := make(map[string]string, 8)
	batch := &pgx.Batch{}
	for _, g := range order {
		if d.ObserveQuery != nil {
			d.ObserveQuery(g.kind, len(g.values))
		}
		batch.Queue(lookupSQL[g.kind], g.tenant, g.values).Query(func(rows pgx.Rows) error {
			return g.collect(rows, out, intern)
		})
	}
	if err := d.db.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("matcher: directory lookup: %w", err)
	}
	return out, nil
}

// collect reads the rows of g's query into out. intern holds the
// application names seen so far, so that each is allocated once.
func (g *lookupGroup) collect(rows pgx.Rows, out map[Key][]identity.Binding, intern map[string]string) error {
	// A query that failed (the connection died, say) has no result to
	// describe: FieldDescriptions would dereference nil.
	if err := rows.Err(); err != nil {
		return err
	}
	fields := rows.FieldDescriptions()
	// Most values asked about are found once.
	at := make([]int32, 0, len(g.values)) // at[j] is the value of bs[j]
	bs := make([]identity.Binding, 0, len(g.values))
	var started []bool // started[i]: a run of rows of value i began
	scattered := false
	for rows.Next() {
		raw := rows.RawValues()
		i, ok := g.index[string(raw[0])]
		if !ok {
			return errors.New("directory returned a value it was not asked about")
		}
		id, err := decodeInt8(raw[1], fields[1].Format)
		if err != nil {
			return err
		}
		b := identity.Binding{CustomerID: id}
		if len(raw) == 4 {
			b.AppType, b.AppID = internBytes(intern, raw[2]), internBytes(intern, raw[3])
		}
		if n := len(at); n == 0 || at[n-1] != i {
			if started == nil {
				started = make([]bool, len(g.values))
			}
			scattered = scattered || started[i]
			started[i] = true
		}
		at, bs = append(at, i), append(bs, b)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if scattered {
		// An index scan returns the rows of one value together; another
		// plan may scatter them.
		perm := make([]int, len(at))
		for j := range perm {
			perm[j] = j
		}
		slices.SortStableFunc(perm, func(a, b int) int { return cmp.Compare(at[a], at[b]) })
		at2, bs2 := make([]int32, len(at)), make([]identity.Binding, len(bs))
		for j, p := range perm {
			at2[j], bs2[j] = at[p], bs[p]
		}
		at, bs = at2, bs2
	}
	for j := 0; j < len(at); {
		e := j + 1
		for e < len(at) && at[e] == at[j] {
			e++
		}
		out[Key{TenantID: g.tenant, Kind: g.kind, Value: g.values[at[j]]}] = bs[j:e:e]
		j = e
	}
	return nil
}

// decodeInt8 decodes a bigint column in either wire format.
func decodeInt8(b []byte, format int16) (int64, error) {
	if format == pgx.BinaryFormatCode {
		if len(b) != 8 {
			return 0, errors.New("bad bigint in directory row")
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, errors.New("bad bigint in directory row")
	}
	return n, nil
}

func internBytes(intern map[string]string, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := intern[string(b)]; ok {
		return s
	}
	s := string(b)
	intern[s] = s
	return s
}

type thirdKey struct {
	tenant int64
	third  string
}

// FindOrCreate handles each tenant in a transaction of its own (on Citus it
// stays in the tenant's shard). The transaction takes a transaction-scoped
// advisory lock per thirdId, in hash order, before looking; a concurrent
// creator of the same thirdId waits and then finds the row. The lock
// statement names no table, so on Citus it runs on the coordinator, where
// every groupmatch connection goes: the locks serialise all creators (a
// worker's advisory locks would not, as they are node-local), and they are
// released when the coordinator commits, after the tenant's shard has. When
// a later tenant fails, the earlier ones stay created; the retry finds them
// (and reports them found, Created false).
func (d *PGDirectory) FindOrCreate(ctx context.Context, reqs []CreateRequest) ([]CreateResult, error) {
	first := make(map[thirdKey]int, len(reqs)) // key -> index of first request
	var keys []thirdKey
	for i, r := range reqs {
		k := thirdKey{r.TenantID, r.ThirdID}
		if _, ok := first[k]; !ok {
			first[k] = i
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b thirdKey) int {
		return cmp.Or(cmp.Compare(a.tenant, b.tenant), cmp.Compare(a.third, b.third))
	})
	found := make(map[thirdKey][]int64, len(keys))
	created := make(map[thirdKey]bool)
	for len(keys) > 0 {
		n := 1
		for n < len(keys) && keys[n].tenant == keys[0].tenant {
			n++
		}
		tenant := keys[0].tenant
		thirds := make([]string, n)
		for i, k := range keys[:n] {
			thirds[i] = k.third
		}
		keys = keys[n:]
		err := pgx.BeginFunc(ctx, d.db, func(tx pgx.Tx) error {
			// Volatile functions in the target list run after the sort, so
			// the locks are taken in hash order.
			if _, err := tx.Exec(ctx, `
				SELECT pg_advisory_xact_lock(h) FROM (
					SELECT DISTINCT hashtextextended($1::bigint::text || '/' || v, 0) AS h
					FROM unnest($2::text[]) AS v) s
				ORDER BY h`, tenant, thirds); err != nil {
				return fmt.Errorf("lock thirdIds: %w", err)
			}
			// The thirdId look-up (one probe per value of the tenant).
			rows, err := tx.Query(ctx, lookupSQL[pipeline.KindThirdID], tenant, thirds)
			if err != nil {
				return fmt.Errorf("find thirdIds: %w", err)
			}
			got := make(map[string][]int64, len(thirds))
			for rows.Next() {
				var third string
				var id int64
				if err := rows.Scan(&third, &id); err != nil {
					return fmt.Errorf("find thirdIds: %w", err)
				}
				got[third] = append(got[third], id)
			}
			if err := rows.Err(); err != nil {
				return fmt.Errorf("find thirdIds: %w", err)
			}
			var missing []CreateRequest
			for _, t := range thirds {
				k := thirdKey{tenant, t}
				found[k] = got[t]
				if len(got[t]) == 0 {
					missing = append(missing, reqs[first[k]])
				}
			}
			if len(missing) == 0 {
				return nil
			}
			ids, err := createCustomers(ctx, tx, tenant, missing)
			if err != nil {
				return err
			}
			for i, r := range missing {
				k := thirdKey{tenant, r.ThirdID}
				found[k] = []int64{ids[i]}
				created[k] = true
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("matcher: find or create: %w", err)
		}
	}
	out := make([]CreateResult, len(reqs))
	for i, r := range reqs {
		k := thirdKey{r.TenantID, r.ThirdID}
		ids := found[k]
		switch {
		case len(ids) > 1:
			out[i] = CreateResult{Ambiguous: true}
		default:
			// Only the first request of a key created it; later ones found it.
			out[i] = CreateResult{CustomerID: ids[0], Created: created[k] && first[k] == i}
		}
	}
	return out, nil
}

// createCustomers inserts one tenant's customers with fresh ids from the
// created-id range and their identities, returning the ids in request
// order. The ids come from a statement that names no table, so on Citus
// nextval runs on the coordinator, the only node with the sequence.
func createCustomers(ctx context.Context, tx pgx.Tx, tenantID int64, reqs []CreateRequest) ([]int64, error) {
	var ids []int64
	rows, err := tx.Query(ctx, `SELECT nextval('customer_created_id_seq') FROM generate_series(1, $1)`, len(reqs))
	if err != nil {
		return nil, fmt.Errorf("allocate customer ids: %w", err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("allocate customer ids: %w", err)
	}
	n := len(reqs)
	thirds, unionids, uTypes, uApps := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	var pC []int64
	var pV, pType, pApp []string
	var oC []int64
	var oV, oType, oApp []string
	for i, r := range reqs {
		thirds[i], unionids[i] = r.ThirdID, r.UnionID
		if r.UnionID != "" {
			uTypes[i], uApps[i] = r.AppType, r.AppID
		}
		if r.Phone != "" {
			pC, pV, pType, pApp = append(pC, ids[i]), append(pV, r.Phone), append(pType, r.AppType), append(pApp, r.AppID)
		}
		if r.OpenID != "" {
			oC, oV, oType, oApp = append(oC, ids[i]), append(oV, r.OpenID), append(oType, r.AppType), append(oApp, r.AppID)
		}
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO customers (tenant_id, customer_id, third_id, unionid, unionid_app_type, unionid_app_id)
		SELECT $1, c, th, nullif(u, ''), ut, ua FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(c, th, u, ut, ua)`,
		tenantID, ids, thirds, unionids, uTypes, uApps)
	if len(pC) > 0 {
		b.Queue(`INSERT INTO customer_phones (tenant_id, customer_id, phone, app_type, app_id)
			SELECT $1, c, p, t, a FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS x(c, p, t, a) ON CONFLICT DO NOTHING`,
			tenantID, pC, pV, pType, pApp)
	}
	if len(oC) > 0 {
		b.Queue(`INSERT INTO customer_openids (tenant_id, customer_id, openid, app_type, app_id)
			SELECT $1, c, o, t, a FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS x(c, o, t, a) ON CONFLICT DO NOTHING`,
			tenantID, oC, oV, oType, oApp)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("create customers: %w", err)
	}
	return ids, nil
}
