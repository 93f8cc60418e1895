package matcher

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
)

// PendingBinding is one record kept pending (SPEC §13): a row of
// pending_bindings, which the sink writes and deletes; the re-matcher only
// reads it.
type PendingBinding struct {
	TenantID int64
	BatchID  int64
	Index    int
	OptType  pipeline.OptType
	// Pending is the stored pipeline.Pending; Err is set instead when the
	// row's JSON did not decode (the binding then never resolves).
	Pending pipeline.Pending
	Err     error
}

// RematchStore is what the re-matcher reads of PostgreSQL: the pending
// bindings that wait for identities, and the directory's batched
// look-ups (the same Lookup as first resolution). Implementations are safe
// for concurrent use; PGStore is the PostgreSQL one.
type RematchStore interface {
	// PendingFor returns the pending bindings not yet expired that wait for
	// any of keys, each binding once, in one round trip (one query per
	// tenant, never one per key). A binding waits for an identity when
	// pending_identities lists it under that (tenant, kind, value).
	PendingFor(ctx context.Context, keys []directory.Key) ([]PendingBinding, error)
	Lookup(ctx context.Context, keys []directory.Key) (*directory.Hits, error)
}

var _ RematchStore = (*PGStore)(nil)

// pendingForSQL finds, for tenant $1 and the identities ($2 kinds, $3
// values, pairwise), the unexpired bindings waiting for any of them: the
// identities are probed through pending_identities' primary key, the
// bindings through pending_bindings'.
const pendingForSQL = `
	SELECT b.batch_id, b.rec_index, b.opt_type, b.pending::text
	FROM (SELECT DISTINCT i.batch_id, i.rec_index
		FROM unnest($2::text[], $3::text[]) AS k(kind, value)
		JOIN pending_identities i ON i.tenant_id = $1 AND i.kind = k.kind AND i.value = k.value) w
	JOIN pending_bindings b ON b.tenant_id = $1 AND b.batch_id = w.batch_id AND b.rec_index = w.rec_index
	WHERE b.expires_at > now()`

// PendingFor implements RematchStore. A binding whose stored JSON does
// not decode is returned with Err set (its error names no value).
func (d *PGStore) PendingFor(ctx context.Context, keys []directory.Key) ([]PendingBinding, error) {
	type group struct {
		kinds, values []string
		seen          map[directory.Key]bool
	}
	var tenants []int64
	groups := make(map[int64]*group)
	for _, k := range keys {
		g := groups[k.TenantID]
		if g == nil {
			g = &group{seen: make(map[directory.Key]bool)}
			groups[k.TenantID] = g
			tenants = append(tenants, k.TenantID)
		}
		if g.seen[k] {
			continue
		}
		g.seen[k] = true
		g.kinds, g.values = append(g.kinds, string(k.Kind)), append(g.values, k.Value)
	}
	var out []PendingBinding
	if len(tenants) == 0 {
		return out, nil
	}
	b := &pgx.Batch{}
	for _, tenant := range tenants {
		g := groups[tenant]
		b.Queue(pendingForSQL, tenant, g.kinds, g.values).Query(func(rows pgx.Rows) error {
			for rows.Next() {
				pb := PendingBinding{TenantID: tenant}
				var raw string
				if err := rows.Scan(&pb.BatchID, &pb.Index, &pb.OptType, &raw); err != nil {
					return err
				}
				if err := json.Unmarshal([]byte(raw), &pb.Pending); err != nil {
					pb.Err = fmt.Errorf("pending binding does not decode: %w", undecodableJSON(err))
				}
				out = append(out, pb)
			}
			return rows.Err()
		})
	}
	if err := d.db.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("matcher: pending bindings: %w", err)
	}
	return out, nil
}

// undecodableJSON names what was wrong with a JSON text without quoting it.
func undecodableJSON(err error) error {
	switch e := err.(type) {
	case *json.SyntaxError:
		return fmt.Errorf("malformed JSON at byte %d", e.Offset)
	case *json.UnmarshalTypeError:
		return fmt.Errorf("field %s has the wrong type", e.Field)
	}
	return fmt.Errorf("malformed JSON")
}

// NormalizePending rebuilds the Normalized of a record kept pending from
// its stored pipeline.Pending, so that Resolve judges it under pd.Params
// exactly as it judged the record first: the same values (already
// normalised), identityType and groups. A binding that could not have been
// kept (isMatching=false, no identity, no group, or an exact binding
// without its identityType's value) is INVALID, so it never resolves.
func NormalizePending(pd *pipeline.Pending) Normalized {
	var n Normalized
	for k, v := range pd.Identities {
		if i := kindIndex(k); i >= 0 {
			n.values[i] = v
		}
	}
	n.IdentityType = pd.IdentityType
	n.Groups = pd.Groups
	switch {
	case !pd.Params.IsMatching:
		n.Invalid = pipeline.ReasonMissingIdentity
	default:
		n.Invalid = n.identityProblem(pd.Params, pd.IdentityType == "", kindIndex(pd.IdentityType) >= 0)
	}
	if n.Invalid == pipeline.ReasonNone && len(n.Groups) == 0 {
		n.Invalid = pipeline.ReasonNoGroups
	}
	return n
}
