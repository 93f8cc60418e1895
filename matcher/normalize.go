package matcher

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
)

// numKinds is the length of kind-indexed storage: Normalized.values is
// indexed by a kind's ordinal (pipeline.KindOrdinal, identity.Kinds).
const numKinds = pipeline.NumKinds

// kindIndex returns k's index in Normalized.values, or -1 for an unknown kind.
func kindIndex(k pipeline.IdentityKind) int { return pipeline.KindOrdinal(k) }

// kindsByIndex is the inverse of kindIndex.
var kindsByIndex = pipeline.IdentityKinds

// smallGroupList is how many names NormalizeGroups de-duplicates by linear
// search before it switches to a set, so a hostile list stays linear.
const smallGroupList = 16

// NormalizeGroups splits s on "," and the full-width "，", trims each name of
// white space (including the ideographic space), drops empty names and keeps
// the first occurrence of each name, in order. Names are compared exactly
// ("VIP" and "vip" are two groups). names is nil when none is left. The
// names are substrings of s.
//
// problem is the first of these that holds, else pipeline.ReasonNone:
//
//   - pipeline.ReasonTooManyGroups: more than pipeline.MaxGroupsPerRecord
//     distinct names. Splitting stops at the first name beyond the limit, so
//     names then holds only MaxGroupsPerRecord+1 of them and a hostile list
//     costs no more than a list at the limit.
//   - pipeline.ReasonGroupNameInvalid: a kept name holds a character of
//     Unicode category Cc (controls, NUL, U+0085) or Cf (format: bidi
//     embeddings, overrides and isolates, zero-width space, joiners and
//     non-joiner, soft hyphen, BOM U+FEFF, ...), a line or paragraph
//     separator (U+2028, U+2029; categories Zl, Zp), or a byte that is not
//     valid UTF-8. White space at either end is trimmed first, so only such
//     characters inside a name count.
//   - pipeline.ReasonGroupNameTooLong: a kept name has more than
//     pipeline.MaxGroupNameLen characters, counted in code points after
//     trimming (a CJK character counts as one).
//
// Each name is read once, without allocating, whatever the problem.
func NormalizeGroups(s string) (names []string, problem pipeline.Reason) {
	if s == "" {
		return nil, pipeline.ReasonNone
	}
	var seen map[string]struct{}
	names = make([]string, 0, min(strings.Count(s, ",")+strings.Count(s, "，")+1, pipeline.MaxGroupsPerRecord+1))
	var badName, longName bool
	for rest := s; rest != ""; {
		var name string
		if i, w := indexGroupSep(rest); i < 0 {
			name, rest = rest, ""
		} else {
			name, rest = rest[:i], rest[i+w:]
		}
		name = strings.TrimSpace(name)
		if name == "" {
			continue
		}
		if seen != nil {
			if _, dup := seen[name]; dup {
				continue
			}
			seen[name] = struct{}{}
		} else {
			if containsString(names, name) {
				continue
			}
			if len(names) == smallGroupList {
				seen = make(map[string]struct{}, 2*smallGroupList)
				for _, n := range names {
					seen[n] = struct{}{}
				}
				seen[name] = struct{}{}
			}
		}
		names = append(names, name)
		if len(names) > pipeline.MaxGroupsPerRecord {
			return names, pipeline.ReasonTooManyGroups
		}
		n, ok := checkGroupName(name)
		badName = badName || !ok
		longName = longName || n > pipeline.MaxGroupNameLen
	}
	switch {
	case len(names) == 0:
		return nil, pipeline.ReasonNone
	case badName:
		return names, pipeline.ReasonGroupNameInvalid
	case longName:
		return names, pipeline.ReasonGroupNameTooLong
	}
	return names, pipeline.ReasonNone
}

// checkGroupName returns the number of code points of name and whether all
// of them may stand in a group name (see NormalizeGroups). ASCII is judged
// without a table look-up; an invalid byte counts as one code point.
func checkGroupName(name string) (n int, ok bool) {
	ok = true
	for i := 0; i < len(name); n++ {
		if c := name[i]; c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				ok = false
			}
			i++
			continue
		}
		r, w := utf8.DecodeRuneInString(name[i:])
		i += w
		if r >= '\u2070' && r < '\ufeff' {
			continue // CJK, kana, Hangul, ...: no Cc, Cf, Zl or Zp in this range
		}
		if (r == utf8.RuneError && w == 1) || r == '\u2028' || r == '\u2029' ||
			unicode.In(r, unicode.Cf, unicode.Cc) {
			ok = false
		}
	}
	return n, ok
}

// indexGroupSep returns the byte index and width of the first "," or "，"
// (U+FF0C, EF BC 8C in UTF-8) in s, or -1.
func indexGroupSep(s string) (int, int) {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case ',':
			return i, 1
		case 0xEF:
			if i+2 < len(s) && s[i+1] == 0xBC && s[i+2] == 0x8C {
				return i, 3
			}
		}
	}
	return -1, 0
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// Normalized is a record after normalisation under its batch's Params. It is
// a value: it holds no pointer into shared state and is safe to copy. Groups
// and the strings it holds are substrings of the RawRecord (or small new
// strings) and must be treated as read-only.
type Normalized struct {
	// values holds the usable value of each kind, by kindIndex; "" when the
	// record lacks it (absent, blocked or malformed).
	values [numKinds]string
	// malformed has bit kindIndex(k) set when the record carried a value of
	// kind k that is not blocked but that k's normaliser refused
	// (identity.Kind.Normalize); Value(k) is then "".
	malformed uint32

	// IdentityType is the kind the record's identityType names; "" when it
	// is missing, blocked or unknown. Only exact matching reads it.
	IdentityType pipeline.IdentityKind
	// Groups are the normalised group names (NormalizeGroups).
	Groups []string
	// Invalid is why the record cannot be matched, or pipeline.ReasonNone
	// when it can go on to look-up and Resolve. See Normalize for the
	// precedence of reasons.
	Invalid pipeline.Reason
	// Ref is what a result page may show of the record, by each kind's
	// identity.Kind.Mask: ThirdID as sent (trimmed, even when
	// blocked; left out when over MaxIdentityLen), and the masked phone (its
	// canonical form when valid, the trimmed value as sent when malformed),
	// openid and unionid; a blocked masked value is left out.
	Ref pipeline.RecordRef
}

// Value returns the record's usable value of kind k: trimmed, and for a
// phone in canonical form. It is "" when the record lacks a usable value of
// that kind (absent, blocked or malformed) and for an unknown kind.
func (n *Normalized) Value(k pipeline.IdentityKind) string {
	if i := kindIndex(k); i >= 0 {
		return n.values[i]
	}
	return ""
}

// Malformed reports whether the record carried a value of kind k, not
// blocked, that k's normaliser refused (a phone that is not a phone).
func (n *Normalized) Malformed(k pipeline.IdentityKind) bool {
	i := kindIndex(k)
	return i >= 0 && n.malformed&(1<<i) != 0
}

// isFuzzy reports whether p asks for fuzzy matching. Ingest validates params,
// so MatchingType is 1 or 2 when IsMatching; anything but MatchingFuzzy is
// treated as exact, the stricter mode. Normalize, Lookups and Resolve agree
// through this one function.
func isFuzzy(p pipeline.Params) bool {
	return p.IsMatching && p.MatchingType == pipeline.MatchingFuzzy
}

// Normalize normalises one record and judges whether it can be matched under
// the batch's params p. It never fails: a record's problems end in Invalid.
// Every kind is read through its entry of identity.Kinds.
//
// Identity values are trimmed and blocked values (identity.IsBlocked)
// dropped, then put in canonical form by their kind's normaliser: a phone by
// identity.NormalizePhone, or dropped as malformed (Malformed); openid,
// unionid and thirdId are kept as sent (case-sensitive). identityType is
// read by identity.ParseIdentityType. A value holding a NUL byte, which
// PostgreSQL text cannot hold, is malformed: it counts as absent (a phone as
// malformed) and is never shown in Ref. Ingest refuses NUL, so only a
// message written around ingest has one.
//
// Invalid holds the first problem found, limits first, then identity
// problems, then group problems (a record nobody can be identified by is
// MISSING_IDENTITY whatever its groups):
//
//  0. Limits (SPEC §10): a value over its kind's MaxLen code points (thirdId,
//     openid or unionid over pipeline.MaxIdentityLen after trimming, phone
//     over pipeline.MaxPhoneLen as sent, before trimming and before
//     separators are removed) → VALUE_TOO_LONG. This holds in every mode and
//     for every field, read by the mode or not, blocked or not: an over-long
//     value is never silently skipped (fuzzy), looked up, or given to a
//     created customer (isMatching=false). Such a thirdId is left out of
//     Ref. A byte that is not valid UTF-8 counts as one code point (ingest
//     rejects such text, so only a message written around ingest has any).
//  1. Identity, by mode:
//     - isMatching=false: no usable thirdId → MISSING_IDENTITY. Other
//     identifiers are optional: a malformed phone is dropped (the customer
//     is created without it), not an error; Malformed tells.
//     - exact: identityType missing or blocked → MISSING_IDENTITY; not one
//     of the known names → INVALID_IDENTITY_TYPE; the field it names lacks
//     a usable value → MISSING_IDENTITY, except a malformed value, which
//     is its kind's problem (INVALID_PHONE under identityType=phone). Other
//     fields are not judged.
//     - fuzzy: identityType is ignored (even an unknown one), and so are
//     the kinds outside the identifyWay order; no usable identifier of the
//     order's kinds → the problem of the first malformed one (INVALID_PHONE
//     when a malformed phone was the only identifier sent), else
//     MISSING_IDENTITY.
//  2. Groups: no name left → NO_GROUPS; otherwise NormalizeGroups' problem:
//     TOO_MANY_GROUPS, then GROUP_NAME_INVALID, then GROUP_NAME_TOO_LONG.
//
// Cost: no allocation for the values when the phone is canonical or only
// prefixed, one for the group list and one shared by the masked Ref fields.
func Normalize(p pipeline.Params, r pipeline.RawRecord) Normalized {
	var n Normalized
	var shown [numKinds]string // what Ref shows of each masked kind
	tooLong := false
	kinds := identity.Kinds()
	for o := range kinds {
		k := &kinds[o]
		raw := r.Member(k.Field)
		if raw == "" {
			continue
		}
		trimmed := strings.TrimSpace(raw)
		limited := trimmed
		if k.LimitAsSent {
			limited = raw
		}
		long := identity.LongerThan(limited, k.MaxLen)
		tooLong = tooLong || long
		if k.Mask == identity.ShowAsSent && !long {
			n.Ref.Set(k.Field, identity.Storable(trimmed))
		}
		usable := identity.Usable(trimmed)
		if usable == "" {
			continue
		}
		v, problem := k.Normalize(usable)
		n.values[o] = v
		shown[o] = v
		if v == "" && problem != pipeline.ReasonNone {
			n.malformed |= 1 << o
			shown[o] = identity.Storable(usable) // shown masked in Ref, unless it holds NUL
		}
	}

	it := identity.Storable(strings.TrimSpace(r.IdentityType))
	itMissing := identity.IsBlocked(it)
	itKnown := false
	if !itMissing {
		n.IdentityType, itKnown = identity.ParseIdentityType(it)
	}

	var groupProblem pipeline.Reason
	n.Groups, groupProblem = NormalizeGroups(r.Groups)

	if tooLong {
		n.Invalid = pipeline.ReasonValueTooLong
	} else {
		n.Invalid = n.identityProblem(p, itMissing, itKnown)
	}
	if n.Invalid == pipeline.ReasonNone {
		switch {
		case len(n.Groups) == 0:
			n.Invalid = pipeline.ReasonNoGroups
		default:
			n.Invalid = groupProblem
		}
	}

	n.setMaskedRef(kinds, &shown)
	return n
}

// identityProblem returns the identity reason of Normalize's rule 1.
func (n *Normalized) identityProblem(p pipeline.Params, itMissing, itKnown bool) pipeline.Reason {
	switch {
	case !p.IsMatching:
		if n.Value(pipeline.KindThirdID) == "" {
			return pipeline.ReasonMissingIdentity
		}
	case !isFuzzy(p):
		k, _ := identity.Of(n.IdentityType)
		switch {
		case itMissing:
			return pipeline.ReasonMissingIdentity
		case !itKnown || !k.Exact:
			return pipeline.ReasonInvalidIdentityType
		case n.Value(n.IdentityType) != "":
		case n.Malformed(n.IdentityType) && k.Invalid != pipeline.ReasonNone:
			return k.Invalid
		default:
			return pipeline.ReasonMissingIdentity
		}
	default:
		order, m := identity.FuzzyOrder(p.IdentifyWay)
		problem := pipeline.ReasonMissingIdentity
		for _, o := range order[:m] {
			if n.values[o] != "" {
				return pipeline.ReasonNone
			}
			if k := &identity.Kinds()[o]; n.malformed&(1<<o) != 0 && problem == pipeline.ReasonMissingIdentity && k.Invalid != pipeline.ReasonNone {
				problem = k.Invalid
			}
		}
		return problem
	}
	return pipeline.ReasonNone
}

// setMaskedRef fills Ref's masked fields, shown by ordinal, with one
// allocation shared by their strings.
func (n *Normalized) setMaskedRef(kinds *[numKinds]identity.Kind, shown *[numKinds]string) {
	if *shown == [numKinds]string{} {
		return
	}
	var buf [numKinds * identity.MaxMaskLen]byte
	var ends [numKinds]int
	b := buf[:0]
	for o := range kinds {
		if shown[o] != "" && kinds[o].Mask != identity.ShowAsSent {
			b = kinds[o].Mask.Append(b, shown[o])
		}
		ends[o] = len(b)
	}
	all := string(b)
	start := 0
	for o := range kinds {
		if start < ends[o] {
			n.Ref.Set(kinds[o].Field, all[start:ends[o]])
		}
		start = ends[o]
	}
}

// Lookups lists the kinds whose values (Value) the directory must be asked
// about before Resolve can judge the record under p, by ordinal (identifyWay
// 1 order for the kinds it has): none when Invalid is set; for
// isMatching=false only KindThirdID; for exact matching only the
// identityType's kind; for fuzzy matching every kind of the identifyWay
// order the record has a value of. The slice is new and owned by the caller.
func (n *Normalized) Lookups(p pipeline.Params) []pipeline.IdentityKind {
	return n.appendLookups(nil, p)
}

// appendLookups is Lookups appending to dst, so that a chunk's records
// can share one buffer.
func (n *Normalized) appendLookups(dst []pipeline.IdentityKind, p pipeline.Params) []pipeline.IdentityKind {
	if n.Invalid != pipeline.ReasonNone {
		return dst
	}
	switch {
	case !p.IsMatching:
		return append(dst, pipeline.KindThirdID)
	case !isFuzzy(p):
		return append(dst, n.IdentityType)
	}
	var inOrder [numKinds]bool
	order, m := identity.FuzzyOrder(p.IdentifyWay)
	for _, o := range order[:m] {
		inOrder[o] = true
	}
	for i, v := range n.values {
		if v != "" && inOrder[i] {
			dst = append(dst, kindsByIndex[i])
		}
	}
	return dst
}
