package directory

import "github.com/groupmatch/groupmatch/identity"

// Len returns the number of values with at least one binding. Len and
// Map read a Hits whole, for the tests; the stages read Bindings only.
func (h *Hits) Len() int {
	if h == nil {
		return 0
	}
	n := 0
	for _, g := range h.groups {
		for _, f := range g.found {
			if len(f) > 0 {
				n++
			}
		}
	}
	return n
}

// Map returns the bindings of every value that has any, by key: a copy.
func (h *Hits) Map() map[Key][]identity.Binding {
	out := make(map[Key][]identity.Binding, h.Len())
	if h == nil {
		return out
	}
	for _, g := range h.groups {
		for i, f := range g.found {
			if len(f) > 0 {
				out[Key{TenantID: g.tenant, Kind: g.kind, Value: g.values[i]}] = f
			}
		}
	}
	return out
}
