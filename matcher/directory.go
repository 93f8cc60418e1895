package matcher

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
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
	// absent from the map. Implementations answer a whole chunk with one
	// query per identity kind.
	Lookup(ctx context.Context, keys []Key) (map[Key][]Binding, error)
	// FindOrCreate returns, for each request in order, the customer with
	// that thirdId, creating it if the tenant has none. Concurrent calls
	// naming the same (tenant, thirdId) create one customer.
	FindOrCreate(ctx context.Context, reqs []CreateRequest) ([]CreateResult, error)
}

// PGDirectory is the PostgreSQL Directory.
type PGDirectory struct{ db *pgxpool.Pool }

var _ Directory = (*PGDirectory)(nil)

// NewPGDirectory returns a directory on db.
func NewPGDirectory(db *pgxpool.Pool) *PGDirectory { return &PGDirectory{db: db} }

// lookupSQL answers one identity kind for arrays of (tenant, value).
var lookupSQL = map[pipeline.IdentityKind]string{
	pipeline.KindPhone: `SELECT p.tenant_id, p.phone, p.customer_id, p.app_type, p.app_id
		FROM unnest($1::bigint[], $2::text[]) AS k(t, v)
		JOIN customer_phones p ON p.tenant_id = k.t AND p.phone = k.v`,
	pipeline.KindOpenID: `SELECT o.tenant_id, o.openid, o.customer_id, o.app_type, o.app_id
		FROM unnest($1::bigint[], $2::text[]) AS k(t, v)
		JOIN customer_openids o ON o.tenant_id = k.t AND o.openid = k.v`,
	pipeline.KindUnionID: `SELECT c.tenant_id, c.unionid, c.customer_id, c.unionid_app_type, c.unionid_app_id
		FROM unnest($1::bigint[], $2::text[]) AS k(t, v)
		JOIN customers c ON c.tenant_id = k.t AND c.unionid = k.v`,
	pipeline.KindThirdID: `SELECT c.tenant_id, c.third_id, c.customer_id, '', ''
		FROM unnest($1::bigint[], $2::text[]) AS k(t, v)
		JOIN customers c ON c.tenant_id = k.t AND c.third_id = k.v`,
}

// Lookup sends one query per identity kind present, all in one round trip.
func (d *PGDirectory) Lookup(ctx context.Context, keys []Key) (map[Key][]Binding, error) {
	type cols struct {
		tenants []int64
		values  []string
	}
	byKind := make(map[pipeline.IdentityKind]*cols, 4)
	seen := make(map[Key]bool, len(keys))
	for _, k := range keys {
		if seen[k] {
			continue
		}
		seen[k] = true
		c := byKind[k.Kind]
		if c == nil {
			c = &cols{}
			byKind[k.Kind] = c
		}
		c.tenants = append(c.tenants, k.TenantID)
		c.values = append(c.values, k.Value)
	}
	out := make(map[Key][]Binding, len(keys))
	if len(byKind) == 0 {
		return out, nil
	}
	batch := &pgx.Batch{}
	for _, kind := range pipeline.IdentityKinds {
		c := byKind[kind]
		if c == nil {
			continue
		}
		batch.Queue(lookupSQL[kind], c.tenants, c.values).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				k := Key{Kind: kind}
				var b Binding
				if err := rows.Scan(&k.TenantID, &k.Value, &b.CustomerID, &b.AppType, &b.AppID); err != nil {
					return err
				}
				out[k] = append(out[k], b)
			}
			return rows.Err()
		})
	}
	if err := d.db.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("matcher: directory lookup: %w", err)
	}
	return out, nil
}

type thirdKey struct {
	tenant int64
	third  string
}

// FindOrCreate runs in one transaction that takes a transaction-scoped
// advisory lock per (tenant, thirdId), in a fixed order, before looking;
// a concurrent creator of the same thirdId waits and then finds the row.
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
	tenants := make([]int64, len(keys))
	thirds := make([]string, len(keys))
	for i, k := range keys {
		tenants[i], thirds[i] = k.tenant, k.third
	}
	found := make(map[thirdKey][]int64, len(keys))
	created := make(map[thirdKey]bool)
	err := pgx.BeginFunc(ctx, d.db, func(tx pgx.Tx) error {
		// Volatile functions in the target list run after the sort, so the
		// locks are taken in hash order.
		if _, err := tx.Exec(ctx, `
			SELECT pg_advisory_xact_lock(h) FROM (
				SELECT DISTINCT hashtextextended(t::text || '/' || v, 0) AS h
				FROM unnest($1::bigint[], $2::text[]) AS k(t, v)) s
			ORDER BY h`, tenants, thirds); err != nil {
			return fmt.Errorf("lock thirdIds: %w", err)
		}
		rows, err := tx.Query(ctx, `
			SELECT c.tenant_id, c.third_id, c.customer_id
			FROM unnest($1::bigint[], $2::text[]) AS k(t, v)
			JOIN customers c ON c.tenant_id = k.t AND c.third_id = k.v`, tenants, thirds)
		if err != nil {
			return fmt.Errorf("find thirdIds: %w", err)
		}
		for rows.Next() {
			var k thirdKey
			var id int64
			if err := rows.Scan(&k.tenant, &k.third, &id); err != nil {
				return fmt.Errorf("find thirdIds: %w", err)
			}
			found[k] = append(found[k], id)
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("find thirdIds: %w", err)
		}
		var missing []CreateRequest
		for _, k := range keys {
			if len(found[k]) == 0 {
				missing = append(missing, reqs[first[k]])
			}
		}
		if len(missing) == 0 {
			return nil
		}
		ids, err := createCustomers(ctx, tx, missing)
		if err != nil {
			return err
		}
		for i, r := range missing {
			k := thirdKey{r.TenantID, r.ThirdID}
			found[k] = []int64{ids[i]}
			created[k] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("matcher: find or create: %w", err)
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

// createCustomers inserts customers with fresh ids from the created-id
// range and their identities, returning the ids in request order.
func createCustomers(ctx context.Context, tx pgx.Tx, reqs []CreateRequest) ([]int64, error) {
	var ids []int64
	rows, err := tx.Query(ctx, `SELECT nextval('customer_created_id_seq') FROM generate_series(1, $1)`, len(reqs))
	if err != nil {
		return nil, fmt.Errorf("allocate customer ids: %w", err)
	}
	if ids, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil {
		return nil, fmt.Errorf("allocate customer ids: %w", err)
	}
	n := len(reqs)
	tenants, thirds, unionids, uTypes, uApps := make([]int64, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	var pT, pC []int64
	var pV, pType, pApp []string
	var oT, oC []int64
	var oV, oType, oApp []string
	for i, r := range reqs {
		tenants[i], thirds[i], unionids[i] = r.TenantID, r.ThirdID, r.UnionID
		if r.UnionID != "" {
			uTypes[i], uApps[i] = r.AppType, r.AppID
		}
		if r.Phone != "" {
			pT, pC, pV, pType, pApp = append(pT, r.TenantID), append(pC, ids[i]), append(pV, r.Phone), append(pType, r.AppType), append(pApp, r.AppID)
		}
		if r.OpenID != "" {
			oT, oC, oV, oType, oApp = append(oT, r.TenantID), append(oC, ids[i]), append(oV, r.OpenID), append(oType, r.AppType), append(oApp, r.AppID)
		}
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO customers (tenant_id, customer_id, third_id, unionid, unionid_app_type, unionid_app_id)
		SELECT t, c, th, nullif(u, ''), ut, ua FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(t, c, th, u, ut, ua)`,
		tenants, ids, thirds, unionids, uTypes, uApps)
	if len(pT) > 0 {
		b.Queue(`INSERT INTO customer_phones (tenant_id, customer_id, phone, app_type, app_id)
			SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING`, pT, pC, pV, pType, pApp)
	}
	if len(oT) > 0 {
		b.Queue(`INSERT INTO customer_openids (tenant_id, customer_id, openid, app_type, app_id)
			SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::text[]) ON CONFLICT DO NOTHING`, oT, oC, oV, oType, oApp)
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("create customers: %w", err)
	}
	return ids, nil
}
