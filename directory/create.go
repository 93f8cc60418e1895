package directory

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
)

// CreateRequest asks for the customer with a thirdId, to be created with
// the given identities if the tenant has none (isMatching=false). Values
// holds the normalised identities by ordinal (identity.Kinds; "" for none);
// only the kinds marked Create are given to the customer, and Values of
// KindThirdID is ignored for ThirdID. AppType/AppID, when set, name the
// application the new identities are bound through.
type CreateRequest struct {
	TenantID       int64
	ThirdID        string
	Values         [pipeline.NumKinds]string
	AppType, AppID string
}

// CreateResult answers one CreateRequest.
type CreateResult struct {
	CustomerID int64 // 0 when Ambiguous
	Created    bool
	Ambiguous  bool // several customers already have the thirdId
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
			return nil, fmt.Errorf("directory: find or create: %w", err)
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
	union := pipeline.KindOrdinal(pipeline.KindUnionID)
	thirds, unionids, uTypes, uApps := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	// The identities of each kind kept in a table of its own, by ordinal.
	type kindRows struct {
		customers           []int64
		values, types, apps []string
	}
	var bound [pipeline.NumKinds]kindRows
	kinds := identity.Kinds()
	for i, r := range reqs {
		thirds[i], unionids[i] = r.ThirdID, r.Values[union]
		if unionids[i] != "" {
			uTypes[i], uApps[i] = r.AppType, r.AppID
		}
		for o := range kinds {
			if v := r.Values[o]; v != "" && kinds[o].Create && kinds[o].Directory.Multi() {
				b := &bound[o]
				b.customers, b.values = append(b.customers, ids[i]), append(b.values, v)
				b.types, b.apps = append(b.types, r.AppType), append(b.apps, r.AppID)
			}
		}
	}
	b := &pgx.Batch{}
	b.Queue(`INSERT INTO customers (tenant_id, customer_id, third_id, unionid, unionid_app_type, unionid_app_id)
		SELECT $1, c, th, nullif(u, ''), ut, ua FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS x(c, th, u, ut, ua)`,
		tenantID, ids, thirds, unionids, uTypes, uApps)
	for o := range kinds {
		if r := &bound[o]; len(r.customers) > 0 {
			d := kinds[o].Directory
			b.Queue(`INSERT INTO `+d.Table+` (tenant_id, customer_id, `+d.Column+`, `+d.AppType+`, `+d.AppID+`)
			SELECT $1, c, v, t, a FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[]) AS x(c, v, t, a) ON CONFLICT DO NOTHING`,
				tenantID, r.customers, r.values, r.types, r.apps)
		}
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("create customers: %w", err)
	}
	return ids, nil
}
