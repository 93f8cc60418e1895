package matcher

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Index of each kind in Normalized.values. The order is identifyWay 1's.
const (
	idxUnionID = iota
	idxOpenID
	idxPhone
	idxThirdID
	numKinds
)

// kindIndex returns k's index in Normalized.values, or -1 for an unknown kind.
func kindIndex(k pipeline.IdentityKind) int {
	switch k {
	case pipeline.KindUnionID:
		return idxUnionID
	case pipeline.KindOpenID:
		return idxOpenID
	case pipeline.KindPhone:
		return idxPhone
	case pipeline.KindThirdID:
		return idxThirdID
	}
	return -1
}

// kindsByIndex is the inverse of kindIndex. Read-only.
var kindsByIndex = [numKinds]pipeline.IdentityKind{
	pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID,
}

// IsBlocked reports whether s, once trimmed of white space, counts as an
// absent value: "", "null", "undefined", "-1", or a run of zeros ("0",
// "000", ...). Letters are compared case-insensitively ("NULL", "Undefined").
//
// The block list applies to identity values and identityType only; group
// names are the enterprise's own labels and are never blocked.
func IsBlocked(s string) bool {
	return isBlockedTrimmed(strings.TrimSpace(s))
}

func isBlockedTrimmed(s string) bool {
	switch len(s) {
	case 0:
		return true
	case 2:
		if s == "-1" {
			return true
		}
	case 4:
		if strings.EqualFold(s, "null") {
			return true
		}
	case 9:
		if strings.EqualFold(s, "undefined") {
			return true
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

// maxPhoneDigits is the most digits a phone may carry before its prefix is
// removed: "00" followed by a 15-digit E.164 number.
const maxPhoneDigits = 17

// NormalizePhone returns the canonical form of the phone s, or ok=false when s
// is malformed. It does not apply the block list: callers test IsBlocked first
// (NormalizePhone("0") is simply malformed).
//
// The rules (SPEC §5), in order:
//
//  1. Leading and trailing white space is trimmed.
//  2. Separators are removed wherever they stand: white space (including the
//     ideographic and no-break spaces), dashes ("-", "－", U+2010–U+2015,
//     U+2212) and round brackets, ASCII or full-width ("(", ")", "（", "）").
//     Full-width digits "０"–"９" and plus "＋" read as their ASCII forms.
//     Any other character (letters, dots, slashes, "ext") makes s malformed,
//     as does a "+" anywhere but before the first digit.
//  3. An international prefix, "+" or "00", introduces an international
//     number. When it is followed by "86" and a Chinese mobile, the result is
//     that mobile; otherwise the digits after the prefix must be an E.164
//     number: 8 to 15 digits, the first not "0" (no country code starts with
//     0). Its canonical form is "+" and those digits, so "0044…" and "+44…"
//     are the same phone.
//  4. Without an international prefix, the digits must be a Chinese mobile,
//     optionally preceded by "86" (13 digits in all). A bare foreign number
//     without "+" or "00" is malformed: it cannot be told from a typo.
//
// A Chinese mobile matches ^1[3-9]\d{9}$ and its canonical form is those 11
// digits, whichever prefix it came with. The "86" prefix is removed only when
// what remains is a Chinese mobile (the brief says "11 digits"; this is
// stricter), so an E.164 landline such as "+86 755 1234 5678" stays
// "+8675512345678" instead of being cut into a malformed 11-digit number.
//
// NormalizePhone is idempotent: a canonical form normalises to itself.
func NormalizePhone(s string) (string, bool) {
	s = strings.TrimSpace(s)
	// buf[0] is reserved for the '+' of an E.164 result; digits start at 1.
	var buf [1 + maxPhoneDigits]byte
	n := 1
	plus := false
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
		case r >= '０' && r <= '９':
			r = r - '０' + '0'
		case r == '+' || r == '＋':
			if plus || n > 1 {
				return "", false
			}
			plus = true
			continue
		case isPhoneSeparator(r):
			continue
		default:
			return "", false
		}
		if n == len(buf) {
			return "", false
		}
		buf[n] = byte(r)
		n++
	}
	d := buf[1:n]
	var c []byte
	switch {
	case plus:
		c = international(buf[0:n])
	case len(d) > 2 && d[0] == '0' && d[1] == '0':
		c = international(buf[2:n])
	case isCNMobile(d):
		c = d
	case len(d) == 13 && d[0] == '8' && d[1] == '6' && isCNMobile(d[2:]):
		c = d[2:]
	}
	if c == nil {
		return "", false
	}
	// Most phones arrive canonical or with only a prefix in front: reuse s.
	if len(s) >= len(c) && s[len(s)-len(c):] == string(c) {
		return s[len(s)-len(c):], true
	}
	return string(c), true
}

// international returns the canonical form of the digits b[1:], which
// followed an international prefix: a Chinese mobile's 11 digits after "86",
// or b itself with b[0] overwritten by '+' when the digits are an E.164
// number. It returns nil when they are neither.
func international(b []byte) []byte {
	d := b[1:]
	if len(d) == 13 && d[0] == '8' && d[1] == '6' && isCNMobile(d[2:]) {
		return d[2:]
	}
	if len(d) < 8 || len(d) > 15 || d[0] == '0' {
		return nil
	}
	b[0] = '+'
	return b
}

// isCNMobile reports whether the ASCII digits d match ^1[3-9]\d{9}$.
func isCNMobile(d []byte) bool {
	return len(d) == 11 && d[0] == '1' && d[1] >= '3' && d[1] <= '9'
}

func isPhoneSeparator(r rune) bool {
	switch r {
	case '-', '(', ')', '（', '）', '－', '\u2212':
		return true
	}
	return (r >= '\u2010' && r <= '\u2015') || unicode.IsSpace(r)
}

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

// ParseIdentityType maps a record's identityType to the kind it names:
// "phone", "id", "openid", "unionid", and the platform's historical "thirdId"
// for "id". Letter case and surrounding white space are ignored. ok is false,
// and the kind "", for anything else, including "" (callers tell a missing
// identityType from an unknown one with IsBlocked first).
func ParseIdentityType(s string) (pipeline.IdentityKind, bool) {
	s = strings.TrimSpace(s)
	switch {
	case strings.EqualFold(s, "phone"):
		return pipeline.KindPhone, true
	case strings.EqualFold(s, "id"), strings.EqualFold(s, "thirdId"):
		return pipeline.KindThirdID, true
	case strings.EqualFold(s, "openid"):
		return pipeline.KindOpenID, true
	case strings.EqualFold(s, "unionid"):
		return pipeline.KindUnionID, true
	}
	return "", false
}

// maskStars replaces the hidden middle of a masked value. It has a fixed
// width, so a masked value does not reveal the length of what it hides.
const maskStars = "****"

// maxMaskLen bounds the bytes of one masked value: at most 7 kept runes of at
// most 4 bytes each, and the stars.
const maxMaskLen = 7*utf8.UTFMax + len(maskStars)

// MaskPhone hides most of a phone for a result page: a value of 11 runes or
// more keeps its first 3 and last 4 ("13800000000" → "138****0000",
// "+14155552671" → "+14****2671"); 8–10 runes keep 2 and 2; 5–7 keep 1 and
// 1; up to 4 runes give "****". "" stays "". The hidden part is always
// "****", whatever its length, and a value longer than 4 runes is never
// returned whole. Safe on any string, canonical or not.
func MaskPhone(s string) string {
	var buf [maxMaskLen]byte
	return string(appendMask(buf[:0], s, true))
}

// MaskID hides most of an openid, unionid or other identifier for a result
// page: a value of 12 runes or more keeps its first 4 and last 3
// ("oA_xY1234567Q9Zk" → "oA_x****9Zk"); 8–11 runes keep 2 and 2; 5–7 keep 1
// and 1; up to 4 runes give "****". "" stays "". Like MaskPhone, the hidden
// part is always "****" and a value longer than 4 runes is never returned
// whole.
func MaskID(s string) string {
	var buf [maxMaskLen]byte
	return string(appendMask(buf[:0], s, false))
}

// appendMask appends the masked form of s to dst (see MaskPhone, MaskID).
func appendMask(dst []byte, s string, phone bool) []byte {
	n := utf8.RuneCountInString(s)
	var keepHead, keepTail int
	switch {
	case n == 0:
		return dst
	case n <= 4:
	case n <= 7:
		keepHead, keepTail = 1, 1
	case phone && n <= 10, !phone && n <= 11:
		keepHead, keepTail = 2, 2
	case phone:
		keepHead, keepTail = 3, 4
	default:
		keepHead, keepTail = 4, 3
	}
	i, r := 0, 0
	for ; r < keepHead; r++ {
		_, w := utf8.DecodeRuneInString(s[i:])
		i += w
	}
	dst = append(dst, s[:i]...)
	dst = append(dst, maskStars...)
	j := len(s)
	for r = 0; r < keepTail; r++ {
		_, w := utf8.DecodeLastRuneInString(s[:j])
		j -= w
	}
	return append(dst, s[j:]...)
}

// Normalized is a record after normalisation under its batch's Params. It is
// a value: it holds no pointer into shared state and is safe to copy. Groups
// and the strings it holds are substrings of the RawRecord (or small new
// strings) and must be treated as read-only.
type Normalized struct {
	// values holds the usable value of each kind, by kindIndex; "" when the
	// record lacks it (absent, blocked or malformed).
	values [numKinds]string

	// IdentityType is the kind the record's identityType names; "" when it
	// is missing, blocked or unknown. Only exact matching reads it.
	IdentityType pipeline.IdentityKind
	// Groups are the normalised group names (NormalizeGroups).
	Groups []string
	// Invalid is why the record cannot be matched, or pipeline.ReasonNone
	// when it can go on to look-up and Resolve. See Normalize for the
	// precedence of reasons.
	Invalid pipeline.Reason
	// PhoneMalformed is true when the record carried a phone that is not
	// blocked but failed NormalizePhone; Value(KindPhone) is then "".
	PhoneMalformed bool
	// Ref is what a result page may show of the record: ThirdID as sent
	// (trimmed, even when blocked; left out when over MaxIdentityLen), and
	// the masked phone (its canonical form when valid, the trimmed value as
	// sent when malformed), openid and unionid; a blocked phone, openid or
	// unionid is left out.
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

// isFuzzy reports whether p asks for fuzzy matching. Ingest validates params,
// so MatchingType is 1 or 2 when IsMatching; anything but MatchingFuzzy is
// treated as exact, the stricter mode. Normalize, Lookups and Resolve agree
// through this one function.
func isFuzzy(p pipeline.Params) bool {
	return p.IsMatching && p.MatchingType == pipeline.MatchingFuzzy
}

// Normalize normalises one record and judges whether it can be matched under
// the batch's params p. It never fails: a record's problems end in Invalid.
//
// Identity values are trimmed and blocked values (IsBlocked) dropped; the
// phone is put in canonical form (NormalizePhone) or dropped with
// PhoneMalformed set; openid, unionid and thirdId are otherwise kept as sent
// (case-sensitive). identityType is read by ParseIdentityType. A value
// holding a NUL byte, which PostgreSQL text cannot hold, is malformed: it
// counts as absent (a phone as malformed) and is never shown in Ref. Ingest
// refuses NUL, so only a message written around ingest has one.
//
// Invalid holds the first problem found, limits first, then identity
// problems, then group problems (a record nobody can be identified by is
// MISSING_IDENTITY whatever its groups):
//
//  0. Limits (SPEC §10): thirdId, openid or unionid over
//     pipeline.MaxIdentityLen code points after trimming, or phone over
//     pipeline.MaxPhoneLen code points as sent (before trimming and before
//     separators are removed) → VALUE_TOO_LONG. This holds in every mode and
//     for every field, read by the mode or not, blocked or not: an over-long
//     value is never silently skipped (fuzzy), looked up, or given to a
//     created customer (isMatching=false). Such a thirdId is left out of
//     Ref. A byte that is not valid UTF-8 counts as one code point (ingest
//     rejects such text, so only a message written around ingest has any).
//  1. Identity, by mode:
//     - isMatching=false: no usable thirdId → MISSING_IDENTITY. Other
//     identifiers are optional: a malformed phone is dropped (the customer
//     is created without it), not an error; PhoneMalformed tells.
//     - exact: identityType missing or blocked → MISSING_IDENTITY; not one
//     of the known names → INVALID_IDENTITY_TYPE; the field it names lacks
//     a usable value → MISSING_IDENTITY, except a malformed phone under
//     identityType=phone → INVALID_PHONE. Other fields are not judged.
//     - fuzzy: identityType is ignored (even an unknown one); no usable
//     identifier of any kind → INVALID_PHONE when a malformed phone was the
//     only identifier sent, else MISSING_IDENTITY.
//  2. Groups: no name left → NO_GROUPS; otherwise NormalizeGroups' problem:
//     TOO_MANY_GROUPS, then GROUP_NAME_INVALID, then GROUP_NAME_TOO_LONG.
//
// Cost: no allocation for the values when the phone is canonical or only
// prefixed, one for the group list and one shared by the masked Ref fields.
func Normalize(p pipeline.Params, r pipeline.RawRecord) Normalized {
	var n Normalized

	third := strings.TrimSpace(r.ThirdID)
	openid, unionid := strings.TrimSpace(r.OpenID), strings.TrimSpace(r.UnionID)
	thirdLong := longerThan(third, pipeline.MaxIdentityLen)
	tooLong := thirdLong || longerThan(openid, pipeline.MaxIdentityLen) ||
		longerThan(unionid, pipeline.MaxIdentityLen) || longerThan(r.Phone, pipeline.MaxPhoneLen)
	third, openid, unionid = storable(third), storable(openid), storable(unionid)
	if !thirdLong {
		n.Ref.ThirdID = third
	}
	n.values[idxThirdID] = usable(third)
	n.values[idxOpenID] = usable(openid)
	n.values[idxUnionID] = usable(unionid)
	phoneSent := usable(strings.TrimSpace(r.Phone))
	if phoneSent != "" {
		if c, ok := NormalizePhone(phoneSent); ok {
			n.values[idxPhone] = c
		} else {
			n.PhoneMalformed = true
			phoneSent = storable(phoneSent) // shown masked in Ref, unless it holds NUL
		}
	}

	it := storable(strings.TrimSpace(r.IdentityType))
	itMissing := isBlockedTrimmed(it)
	itKnown := false
	if !itMissing {
		n.IdentityType, itKnown = ParseIdentityType(it)
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

	phoneShown := n.values[idxPhone]
	if phoneShown == "" {
		phoneShown = phoneSent
	}
	n.setMaskedRef(phoneShown, n.values[idxOpenID], n.values[idxUnionID])
	return n
}

// longerThan reports whether s has more than max code points; each byte that
// is not valid UTF-8 counts as one. Strings of at most max bytes are judged
// without counting.
func longerThan(s string, max int) bool {
	return len(s) > max && utf8.RuneCountInString(s) > max
}

// storable returns s, or "" when it holds a NUL byte: PostgreSQL text
// cannot hold one, so such a value could be neither looked up nor stored.
func storable(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		return ""
	}
	return s
}

// usable returns the trimmed s, or "" when it is blocked.
func usable(s string) string {
	if isBlockedTrimmed(s) {
		return ""
	}
	return s
}

// identityProblem returns the identity reason of Normalize's rule 1.
func (n *Normalized) identityProblem(p pipeline.Params, itMissing, itKnown bool) pipeline.Reason {
	switch {
	case !p.IsMatching:
		if n.values[idxThirdID] == "" {
			return pipeline.ReasonMissingIdentity
		}
	case !isFuzzy(p):
		switch {
		case itMissing:
			return pipeline.ReasonMissingIdentity
		case !itKnown:
			return pipeline.ReasonInvalidIdentityType
		case n.Value(n.IdentityType) != "":
		case n.IdentityType == pipeline.KindPhone && n.PhoneMalformed:
			return pipeline.ReasonInvalidPhone
		default:
			return pipeline.ReasonMissingIdentity
		}
	default:
		if n.values == [numKinds]string{} {
			if n.PhoneMalformed {
				return pipeline.ReasonInvalidPhone
			}
			return pipeline.ReasonMissingIdentity
		}
	}
	return pipeline.ReasonNone
}

// setMaskedRef fills Ref's masked fields with one allocation shared by the
// three strings.
func (n *Normalized) setMaskedRef(phone, openid, unionid string) {
	if phone == "" && openid == "" && unionid == "" {
		return
	}
	var buf [3 * maxMaskLen]byte
	b := appendMask(buf[:0], phone, true)
	p := len(b)
	b = appendMask(b, openid, false)
	o := len(b)
	b = appendMask(b, unionid, false)
	all := string(b)
	n.Ref.Phone, n.Ref.OpenID, n.Ref.UnionID = all[:p], all[p:o], all[o:]
}

// Lookups lists the kinds whose values (Value) the directory must be asked
// about before Resolve can judge the record under p, in identifyWay 1 order:
// none when Invalid is set; for isMatching=false only KindThirdID; for exact
// matching only the identityType's kind; for fuzzy matching every kind the
// record has a value of. The slice is new and owned by the caller.
func (n *Normalized) Lookups(p pipeline.Params) []pipeline.IdentityKind {
	if n.Invalid != pipeline.ReasonNone {
		return nil
	}
	switch {
	case !p.IsMatching:
		return []pipeline.IdentityKind{pipeline.KindThirdID}
	case !isFuzzy(p):
		return []pipeline.IdentityKind{n.IdentityType}
	}
	ks := make([]pipeline.IdentityKind, 0, numKinds)
	for i, v := range n.values {
		if v != "" {
			ks = append(ks, kindsByIndex[i])
		}
	}
	return ks
}
