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
// lines), and its phones and openids. An openid bound through several
// applications is listed once.
func (c *loadChunk) identities() []Identity {
	out := make([]Identity, 0, 2*len(c.customers)+len(c.phones)+len(c.openids))
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
	add(pipeline.KindPhone, c.phones)
	add(pipeline.KindOpenID, c.openids)
	return out
}
