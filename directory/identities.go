package directory

import (
	"context"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Identity is one normalised identity the directory holds for a customer,
// as the matcher looks it up: a phone in canonical form, an openid without
// its application (resolution checks the application against the
// directory), a unionid or a thirdId.
type Identity struct {
	Kind       pipeline.IdentityKind
	Value      string
	CustomerID int64
}

// CommitHook is told, after a chunk of a Load committed, the identities of
// the chunk's customers as the chunk wrote them, each (kind, value,
// customer) once. An error fails the Load; the chunk stays committed, and
// loading the same input again (which changes no row) calls the hook for
// it again. The slice belongs to the hook for the call only.
type CommitHook func(ctx context.Context, tenantID int64, ids []Identity) error

// identities lists the chunk's identities for the commit hook: each
// customer's thirdId and unionid as the chunk has them (after merging its
// lines), and its identities of the kinds kept in tables of their own
// (phones, openids, ...). A value bound through several applications is
// listed once.
func (c *loadChunk) identities() []Identity {
	n := 2 * len(c.customers)
	for _, rows := range c.bound {
		n += len(rows)
	}
	out := make([]Identity, 0, n)
	for _, s := range c.customers {
		if s.thirdID != "" {
			out = append(out, Identity{pipeline.KindThirdID, s.thirdID, s.id})
		}
		if s.unionid != "" {
			out = append(out, Identity{pipeline.KindUnionID, s.unionid, s.id})
		}
	}
	// A value bound through several applications has several rows.
	add := func(kind pipeline.IdentityKind, rows []stagedIdentity) {
		seen := make(map[Identity]struct{})
		for _, s := range rows {
			id := Identity{kind, s.value, s.id}
			if _, dup := seen[id]; dup {
				continue
			}
			seen[id] = struct{}{}
			out = append(out, id)
		}
	}
	for o, rows := range c.bound {
		add(pipeline.IdentityKinds[o], rows)
	}
	return out
}
