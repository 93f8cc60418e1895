package matcher

import (
	"strings"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
)

// Hits answers, within the record's tenant, the bindings of one normalised
// value of a kind, in any order and possibly naming one customer several
// times (a phone bound through two applications). Implementations are
// read-only maps filled by one batched directory look-up per chunk, built
// from the records' Lookups; Bindings must be safe for concurrent use when
// Resolve is called concurrently, and the caller must not modify the slice
// it returns.
type Hits interface {
	Bindings(kind pipeline.IdentityKind, value string) []identity.Binding
}

// Verdict is the matcher's decision on one record.
type Verdict struct {
	// Outcome is MATCHED, NOT_FOUND, AMBIGUOUS or INVALID.
	Outcome pipeline.Outcome
	// Reason is ReasonNone when MATCHED, else ReasonNotFound,
	// ReasonAmbiguous or the record's Invalid reason.
	Reason pipeline.Reason
	// MatchedBy is the kind of the resolver that found the customer; set
	// only when MATCHED. It is a bounded metric label.
	MatchedBy pipeline.IdentityKind
	// CustomerID is the customer found; set only when MATCHED.
	CustomerID int64
	// Conflict is a warning on a fuzzy MATCHED verdict: the record's
	// identifiers disagree (see Resolve). The record still applies.
	Conflict bool
}

// Resolver is one link of the priority chain: it reads one kind of a
// record's identity and finds the customers that value names, honouring an
// application scope. A chain is plain data, an ordered []Resolver built by
// Chain; Kind is the matchedBy label of a win.
//
// The scope (AppType and AppID) restricts the bindings that count to those
// made through that application: for an openid it makes the pair (openid,
// app); for a phone or unionid it drops bindings made through another
// application or none. AppType is compared case-insensitively, AppID
// exactly. A scope is ignored for a kind that is not identity.Kind.AppScoped
// (KindThirdID, which belongs to the enterprise, not to an application). The zero scope counts every binding.
//
// A Resolver is an immutable value, safe for concurrent use.
type Resolver struct {
	Kind    pipeline.IdentityKind
	AppType string
	AppID   string
}

// Candidates returns the distinct ids of the customers that n's value of
// r.Kind names under h within r's scope, in increasing order; nil when n has
// no value of that kind or nothing counts. Bindings with a non-positive
// customer id are ignored.
func (r Resolver) Candidates(n *Normalized, h Hits) []int64 {
	return r.appendCandidates(nil, n, h)
}

// appendCandidates is Candidates appending to dst[:0], so that Resolve can
// use a buffer on its stack.
func (r Resolver) appendCandidates(dst []int64, n *Normalized, h Hits) []int64 {
	return r.appendCandidatesOf(dst, n.Value(r.Kind), h)
}

// appendCandidatesOf is appendCandidates of the value v of r.Kind.
func (r Resolver) appendCandidatesOf(dst []int64, v string, h Hits) []int64 {
	dst = dst[:0]
	if v == "" {
		return dst
	}
	scoped := (r.AppType != "" || r.AppID != "") && appScoped(r.Kind)
	for _, b := range h.Bindings(r.Kind, v) {
		if b.CustomerID <= 0 {
			continue
		}
		if scoped && (b.AppID != r.AppID || !strings.EqualFold(b.AppType, r.AppType)) {
			continue
		}
		dst = insertSortedUnique(dst, b.CustomerID)
	}
	return dst
}

// insertSortedUnique inserts id into the increasing s unless present.
func insertSortedUnique(s []int64, id int64) []int64 {
	i := len(s)
	for i > 0 && s[i-1] > id {
		i--
	}
	if i > 0 && s[i-1] == id {
		return s
	}
	s = append(s, 0)
	copy(s[i+1:], s[i:])
	s[i] = id
	return s
}

// appScoped reports whether an application scope applies to kind k.
func appScoped(k pipeline.IdentityKind) bool { return identity.AppScoped(k) }

// Chain returns the ordered resolvers that judge a record under p, whose
// identityType names the kind identityType (read only by exact matching):
//
//   - exact: the single resolver of identityType, scoped by p.AppType and
//     p.AppID when given and the kind is identity.Kind.AppScoped (not
//     KindThirdID); none when identityType is "".
//   - fuzzy: the kinds of identity.FuzzyOrder(p.IdentifyWay): identifyWay 2
//     (IdentifyThirdIDFirst) walks id, phone, openid, unionid; any other
//     identifyWay walks identifyWay 1's order: unionid, openid, phone, id.
//     Fuzzy resolvers are never scoped: a record's openid is looked up
//     across all of the tenant's applications.
//   - isMatching=false: the single resolver of KindThirdID.
//
// The slice is new and owned by the caller.
func Chain(p pipeline.Params, identityType pipeline.IdentityKind) []Resolver {
	return appendChain(make([]Resolver, 0, numKinds), p, identityType)
}

func appendChain(dst []Resolver, p pipeline.Params, identityType pipeline.IdentityKind) []Resolver {
	switch {
	case !p.IsMatching:
		return append(dst, Resolver{Kind: pipeline.KindThirdID})
	case !isFuzzy(p):
		if identityType == "" {
			return dst
		}
		if !appScoped(identityType) {
			return append(dst, Resolver{Kind: identityType})
		}
		return append(dst, Resolver{Kind: identityType, AppType: p.AppType, AppID: p.AppID})
	}
	order, n := identity.FuzzyOrder(p.IdentifyWay)
	for _, o := range order[:n] {
		dst = append(dst, Resolver{Kind: pipeline.IdentityKinds[o]})
	}
	return dst
}

// Resolve decides one record, given n = Normalize(p, record) under the same
// params and h answering at least n.Lookups(p). It is pure: it reads h and
// writes nothing.
//
//   - n.Invalid set: INVALID with that reason; h is not read.
//   - Exact: the Chain's single resolver decides: one candidate → MATCHED
//     by identityType's kind; several → AMBIGUOUS; none → NOT_FOUND.
//   - isMatching=false: as exact matching by thirdId, which is the "find"
//     half of find-or-create: MATCHED by id when a customer holds the
//     thirdId, NOT_FOUND when the caller must create one (AMBIGUOUS if the
//     directory ever let two customers share it). Creating is the caller's
//     business.
//   - Fuzzy: the chain is walked in order, skipping kinds the record lacks;
//     the first kind with exactly one candidate wins (MatchedBy). A kind
//     with several candidates is skipped, never merged. When no kind has
//     exactly one candidate: AMBIGUOUS if some kind had several, else
//     NOT_FOUND.
//
// Conflict (fuzzy MATCHED verdicts only) is set when the identifiers
// disagree about the winner:
//   - a higher-priority kind was skipped because it named several customers
//     (SPEC §5: a skipped identifier "is counted as a conflict"), or
//   - a lower-priority kind names exactly one customer, and not the winner.
//
// A lower-priority kind naming several customers is no evidence either way
// (the winner may be among them) and does not set Conflict. Exact and
// isMatching=false verdicts never carry Conflict.
//
// Resolve does not allocate unless a kind has more than 8 candidates.
func Resolve(p pipeline.Params, n *Normalized, h Hits) Verdict {
	if n.Invalid != pipeline.ReasonNone {
		return Verdict{Outcome: pipeline.OutcomeInvalid, Reason: n.Invalid}
	}
	var links [numKinds]Resolver
	chain := appendChain(links[:0], p, n.IdentityType)
	if len(chain) == 0 {
		// Only when n was normalised under other params.
		return Verdict{Outcome: pipeline.OutcomeInvalid, Reason: pipeline.ReasonMissingIdentity}
	}
	var buf [8]int64

	if !isFuzzy(p) {
		c := chain[0].appendCandidates(buf[:], n, h)
		switch len(c) {
		case 0:
			return Verdict{Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound}
		case 1:
			return Verdict{Outcome: pipeline.OutcomeMatched, MatchedBy: chain[0].Kind, CustomerID: c[0]}
		}
		return Verdict{Outcome: pipeline.OutcomeAmbiguous, Reason: pipeline.ReasonAmbiguous}
	}

	var v Verdict
	several := false
	for _, r := range chain {
		value := n.Value(r.Kind)
		if value == "" {
			continue
		}
		c := r.appendCandidatesOf(buf[:], value, h)
		if v.CustomerID != 0 {
			// Looking for disagreement below the winner.
			if len(c) == 1 && c[0] != v.CustomerID {
				v.Conflict = true
				return v
			}
			continue
		}
		switch len(c) {
		case 0:
		case 1:
			v = Verdict{Outcome: pipeline.OutcomeMatched, MatchedBy: r.Kind, CustomerID: c[0], Conflict: several}
			if several {
				return v
			}
		default:
			several = true
		}
	}
	switch {
	case v.CustomerID != 0:
		return v
	case several:
		return Verdict{Outcome: pipeline.OutcomeAmbiguous, Reason: pipeline.ReasonAmbiguous}
	}
	return Verdict{Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound}
}
