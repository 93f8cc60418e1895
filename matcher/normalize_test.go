package matcher

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Params of the three modes, as ingest hands them over after validation.
var (
	exactParams   = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	fuzzyParams   = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyUnionIDFirst, OptType: pipeline.OptAdd}
	fuzzy2Params  = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyThirdIDFirst, OptType: pipeline.OptAdd}
	noMatchParams = pipeline.Params{IsMatching: false, OptType: pipeline.OptAdd}
)

func TestNormalizeGroups(t *testing.T) {
	cjk64 := strings.Repeat("客", 64)
	cjk65 := strings.Repeat("客", 65)
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf("g%d", i%25)
	}
	manyWant := make([]string, 25)
	for i := range manyWant {
		manyWant[i] = fmt.Sprintf("g%d", i)
	}
	const (
		ok      = pipeline.ReasonNone
		tooLong = pipeline.ReasonGroupNameTooLong
		invalid = pipeline.ReasonGroupNameInvalid
		tooMany = pipeline.ReasonTooManyGroups
	)
	names := func(n int, sep string) (string, []string) {
		l := make([]string, n)
		for i := range l {
			l[i] = fmt.Sprintf("组%d", i)
		}
		return strings.Join(l, sep), l
	}
	list100, want100 := names(100, ",")
	list101, want101 := names(101, "，")
	list500, want500 := names(500, ",")
	tests := []struct {
		name string
		in   string
		want []string
		why  pipeline.Reason
	}{
		{"empty", "", nil, ok},
		{"one", "vip", []string{"vip"}, ok},
		{"comma", "vip,new", []string{"vip", "new"}, ok},
		{"full-width comma", "vip，新客户", []string{"vip", "新客户"}, ok},
		{"mixed commas", "a，b,c，d", []string{"a", "b", "c", "d"}, ok},
		{"trimmed", "  vip , new\t", []string{"vip", "new"}, ok},
		{"ideographic space trimmed", "\u3000会员\u3000，新客", []string{"会员", "新客"}, ok},
		{"blank names dropped", ",vip,, ,new,", []string{"vip", "new"}, ok},
		{"only blanks", " , ，, ", nil, ok},
		{"duplicates keep first order", "b,a,b,c,a", []string{"b", "a", "c"}, ok},
		{"duplicates after trimming", "vip, vip ,vip，vip", []string{"vip"}, ok},
		{"case-sensitive", "VIP,vip", []string{"VIP", "vip"}, ok},
		{"inner spaces kept", "gold member", []string{"gold member"}, ok},
		{"64 cjk runes ok", cjk64, []string{cjk64}, ok},
		{"65 cjk runes too long", "vip," + cjk65, []string{"vip", cjk65}, tooLong},
		{"65 ascii too long", strings.Repeat("a", 65), []string{strings.Repeat("a", 65)}, tooLong},
		{"64 ascii plus spaces ok", "  " + strings.Repeat("a", 64) + "  ", []string{strings.Repeat("a", 64)}, ok},
		{"many names dedup via set", strings.Join(many, ","), manyWant, ok},
		{"invalid UTF-8 in a name", "a\xefb", []string{"a\xefb"}, invalid},
		{"null is a name", "null", []string{"null"}, ok},
		{"100 names ok", list100, want100, ok},
		{"100 names and duplicates ok", list100 + "," + list100, want100, ok},
		{"101 names too many", list101, want101, tooMany},
		{"500 names: stops at 101", list500, want500[:101], tooMany},
		{"too many beats invalid", "\u200b," + list100, append([]string{"\u200b"}, want100...), tooMany},
		{"invalid beats too long", "a\u202eb," + strings.Repeat("a", 65), []string{"a\u202eb", strings.Repeat("a", 65)}, invalid},
		{"NUL", "a\x00b", []string{"a\x00b"}, invalid},
		{"tab inside", "a\tb", []string{"a\tb"}, invalid},
		{"DEL", "a\x7fb", []string{"a\x7fb"}, invalid},
		{"NEL inside (Cc)", "a\u0085b", []string{"a\u0085b"}, invalid},
		{"NEL at the end is trimmed", "ab\u0085", []string{"ab"}, ok},
		{"bidi override RLO", "vip\u202Egpj.exe", []string{"vip\u202Egpj.exe"}, invalid},
		{"bidi isolate", "\u2066vip\u2069", []string{"\u2066vip\u2069"}, invalid},
		{"LRM", "vip\u200E", []string{"vip\u200E"}, invalid},
		{"zero-width space", "v\u200bip", []string{"v\u200bip"}, invalid},
		{"zero-width space alone", "\u200b", []string{"\u200b"}, invalid},
		{"zero-width joiner", "a\u200db", []string{"a\u200db"}, invalid},
		{"zero-width non-joiner", "a\u200cb", []string{"a\u200cb"}, invalid},
		{"word joiner", "a\u2060b", []string{"a\u2060b"}, invalid},
		{"BOM", "\ufeffvip", []string{"\ufeffvip"}, invalid},
		{"soft hyphen", "vi\u00adp", []string{"vi\u00adp"}, invalid},
		{"line separator inside", "a\u2028b", []string{"a\u2028b"}, invalid},
		{"paragraph separator inside", "a\u2029b", []string{"a\u2029b"}, invalid},
		{"line separator at the ends is trimmed", "\u2028ab\u2029", []string{"ab"}, ok},
		{"replacement character itself is fine", "a\ufffdb", []string{"a\ufffdb"}, ok},
		{"emoji and variation selector fine", "会员\u2764\ufe0f", []string{"会员\u2764\ufe0f"}, ok},
		{"64 runes with a control", strings.Repeat("a", 63) + "\x01", []string{strings.Repeat("a", 63) + "\x01"}, invalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := NormalizeGroups(tt.in)
			if !slices.Equal(got, tt.want) || why != tt.why {
				t.Errorf("NormalizeGroups(%q) = %q, %q; want %q, %q", tt.in, got, why, tt.want, tt.why)
			}
		})
	}
}

// raw builds a RawRecord with groups "vip" unless overridden by the caller.
func raw(r pipeline.RawRecord) pipeline.RawRecord {
	if r.Groups == "" {
		r.Groups = "vip"
	}
	return r
}

func TestNormalize(t *testing.T) {
	type values struct{ union, open, phone, third string }
	tests := []struct {
		name          string
		p             pipeline.Params
		r             pipeline.RawRecord
		wantInvalid   pipeline.Reason
		wantValues    values
		wantType      pipeline.IdentityKind
		wantMalformed bool
	}{
		// Normalisation of values.
		{"values trimmed, phone canonical", fuzzyParams,
			raw(pipeline.RawRecord{ThirdID: " crm-1 ", OpenID: " oA1 ", UnionID: "\tu1\n", Phone: " +86 138-0000-0000 "}),
			"", values{"u1", "oA1", "13800000000", "crm-1"}, "", false},
		{"blocked values absent", fuzzyParams,
			raw(pipeline.RawRecord{ThirdID: "NULL", OpenID: "undefined", UnionID: "0000", Phone: "-1"}),
			pipeline.ReasonMissingIdentity, values{}, "", false},
		{"blocked phone is not malformed", fuzzyParams,
			raw(pipeline.RawRecord{Phone: "00000000000", UnionID: "u1"}),
			"", values{union: "u1"}, "", false},
		{"openid kept case-sensitive", fuzzyParams,
			raw(pipeline.RawRecord{OpenID: "oA_XyZ"}),
			"", values{open: "oA_XyZ"}, "", false},

		// isMatching=false.
		{"no matching: thirdId", noMatchParams,
			raw(pipeline.RawRecord{ThirdID: "crm-1"}), "", values{third: "crm-1"}, "", false},
		{"no matching: thirdId missing", noMatchParams,
			raw(pipeline.RawRecord{Phone: "13800000000"}), pipeline.ReasonMissingIdentity, values{phone: "13800000000"}, "", false},
		{"no matching: thirdId blocked", noMatchParams,
			raw(pipeline.RawRecord{ThirdID: "undefined", UnionID: "u1"}), pipeline.ReasonMissingIdentity, values{union: "u1"}, "", false},
		{"no matching: malformed phone dropped, not invalid", noMatchParams,
			raw(pipeline.RawRecord{ThirdID: "crm-1", Phone: "12345"}), "", values{third: "crm-1"}, "", true},
		{"no matching: identityType ignored", noMatchParams,
			raw(pipeline.RawRecord{ThirdID: "crm-1", IdentityType: "mobile"}), "", values{third: "crm-1"}, "", false},

		// Exact.
		{"exact: phone", exactParams,
			raw(pipeline.RawRecord{IdentityType: "phone", Phone: "13800000000"}), "", values{phone: "13800000000"}, pipeline.KindPhone, false},
		{"exact: PHONE upper case", exactParams,
			raw(pipeline.RawRecord{IdentityType: "PHONE", Phone: "13800000000"}), "", values{phone: "13800000000"}, pipeline.KindPhone, false},
		{"exact: thirdId means id", exactParams,
			raw(pipeline.RawRecord{IdentityType: "thirdId", ThirdID: "crm-1"}), "", values{third: "crm-1"}, pipeline.KindThirdID, false},
		{"exact: identityType missing", exactParams,
			raw(pipeline.RawRecord{Phone: "13800000000"}), pipeline.ReasonMissingIdentity, values{phone: "13800000000"}, "", false},
		{"exact: identityType blocked", exactParams,
			raw(pipeline.RawRecord{IdentityType: "null", Phone: "13800000000"}), pipeline.ReasonMissingIdentity, values{phone: "13800000000"}, "", false},
		{"exact: identityType unknown", exactParams,
			raw(pipeline.RawRecord{IdentityType: "mobile", Phone: "13800000000"}), pipeline.ReasonInvalidIdentityType, values{phone: "13800000000"}, "", false},
		{"exact: named field empty", exactParams,
			raw(pipeline.RawRecord{IdentityType: "unionid", Phone: "13800000000"}), pipeline.ReasonMissingIdentity, values{phone: "13800000000"}, pipeline.KindUnionID, false},
		{"exact: named field blocked", exactParams,
			raw(pipeline.RawRecord{IdentityType: "openid", OpenID: "undefined"}), pipeline.ReasonMissingIdentity, values{}, pipeline.KindOpenID, false},
		{"exact: named phone blocked", exactParams,
			raw(pipeline.RawRecord{IdentityType: "phone", Phone: "0"}), pipeline.ReasonMissingIdentity, values{}, pipeline.KindPhone, false},
		{"exact: named phone malformed", exactParams,
			raw(pipeline.RawRecord{IdentityType: "phone", Phone: "1380000", UnionID: "u1"}), pipeline.ReasonInvalidPhone, values{union: "u1"}, pipeline.KindPhone, true},
		{"exact: malformed phone not named is not judged", exactParams,
			raw(pipeline.RawRecord{IdentityType: "unionid", Phone: "1380000", UnionID: "u1"}), "", values{union: "u1"}, pipeline.KindUnionID, true},

		// Fuzzy.
		{"fuzzy: identityType ignored even unknown", fuzzyParams,
			raw(pipeline.RawRecord{IdentityType: "mobile", UnionID: "u1"}), "", values{union: "u1"}, "", false},
		{"fuzzy: nothing", fuzzyParams,
			raw(pipeline.RawRecord{}), pipeline.ReasonMissingIdentity, values{}, "", false},
		{"fuzzy: malformed phone only", fuzzyParams,
			raw(pipeline.RawRecord{Phone: "138-0000-000", ThirdID: "null"}), pipeline.ReasonInvalidPhone, values{}, "", true},
		{"fuzzy: malformed phone plus good unionid", fuzzyParams,
			raw(pipeline.RawRecord{Phone: "138-0000-000", UnionID: "u1"}), "", values{union: "u1"}, "", true},
		{"fuzzy: e164 phone", fuzzy2Params,
			raw(pipeline.RawRecord{Phone: "+44 20 7946 0958"}), "", values{phone: "+442079460958"}, "", false},

		// Groups, and precedence after identity.
		{"no groups", fuzzyParams,
			pipeline.RawRecord{UnionID: "u1", Groups: " , ，"}, pipeline.ReasonNoGroups, values{union: "u1"}, "", false},
		{"group name too long", fuzzyParams,
			pipeline.RawRecord{UnionID: "u1", Groups: "vip," + strings.Repeat("组", 65)}, pipeline.ReasonGroupNameTooLong, values{union: "u1"}, "", false},
		{"identity before groups", fuzzyParams,
			pipeline.RawRecord{Phone: "null", Groups: ","}, pipeline.ReasonMissingIdentity, values{}, "", false},
		{"invalid phone before groups", exactParams,
			pipeline.RawRecord{IdentityType: "phone", Phone: "abc", Groups: strings.Repeat("组", 65)}, pipeline.ReasonInvalidPhone, values{}, pipeline.KindPhone, true},
		{"identity type before groups", exactParams,
			pipeline.RawRecord{IdentityType: "mobile", Groups: ""}, pipeline.ReasonInvalidIdentityType, values{}, "", false},
		{"no groups before too long", noMatchParams,
			pipeline.RawRecord{ThirdID: "crm-1", Groups: ""}, pipeline.ReasonNoGroups, values{third: "crm-1"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			got := values{n.Value(pipeline.KindUnionID), n.Value(pipeline.KindOpenID), n.Value(pipeline.KindPhone), n.Value(pipeline.KindThirdID)}
			if n.Invalid != tt.wantInvalid {
				t.Errorf("Invalid = %q, want %q", n.Invalid, tt.wantInvalid)
			}
			if got != tt.wantValues {
				t.Errorf("values = %+v, want %+v", got, tt.wantValues)
			}
			if n.IdentityType != tt.wantType {
				t.Errorf("IdentityType = %q, want %q", n.IdentityType, tt.wantType)
			}
			if n.Malformed(pipeline.KindPhone) != tt.wantMalformed {
				t.Errorf("Malformed(phone) = %v, want %v", n.Malformed(pipeline.KindPhone), tt.wantMalformed)
			}
		})
	}
}

func TestNormalizeGroupsField(t *testing.T) {
	n := Normalize(fuzzyParams, pipeline.RawRecord{UnionID: "u1", Groups: " vip，新客户, vip ,,"})
	if want := []string{"vip", "新客户"}; !slices.Equal(n.Groups, want) {
		t.Errorf("Groups = %q, want %q", n.Groups, want)
	}
}

func TestNormalizeRef(t *testing.T) {
	tests := []struct {
		name string
		r    pipeline.RawRecord
		want pipeline.RecordRef
	}{
		{"all fields", pipeline.RawRecord{ThirdID: " crm-17 ", Phone: "+86 138-0000-0000", OpenID: "oA_xY1234567Q9Zk", UnionID: "o6_bmjrPTlm6_2sgVt7hMZOPfL2M"},
			pipeline.RecordRef{ThirdID: "crm-17", Phone: "138****0000", OpenID: "oA_x****9Zk", UnionID: "o6_b****L2M"}},
		{"malformed phone shown masked as sent", pipeline.RawRecord{Phone: " 138-0000-000 "},
			pipeline.RecordRef{Phone: "138****-000"}},
		{"blocked values left out, thirdId as sent", pipeline.RawRecord{ThirdID: "null", Phone: "0", OpenID: "undefined", UnionID: "-1"},
			pipeline.RecordRef{ThirdID: "null"}},
		{"nothing", pipeline.RawRecord{}, pipeline.RecordRef{}},
		{"e164", pipeline.RawRecord{Phone: "0044 20 7946 0958"}, pipeline.RecordRef{Phone: "+44****0958"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Normalize(fuzzyParams, raw(tt.r)).Ref; got != tt.want {
				t.Errorf("Ref = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestNormalizedValueUnknownKind(t *testing.T) {
	n := Normalize(fuzzyParams, raw(pipeline.RawRecord{UnionID: "u1", OpenID: "o1", Phone: "13800000000", ThirdID: "t1"}))
	if got := n.Value("mobile"); got != "" {
		t.Errorf(`Value("mobile") = %q, want ""`, got)
	}
	if got := n.Value(""); got != "" {
		t.Errorf(`Value("") = %q, want ""`, got)
	}
}

func TestNormalizedLookups(t *testing.T) {
	full := pipeline.RawRecord{UnionID: "u1", OpenID: "o1", Phone: "13800000000", ThirdID: "t1"}
	scoped := exactParams
	scoped.AppType, scoped.AppID = "gzh", "wx1"
	tests := []struct {
		name string
		p    pipeline.Params
		r    pipeline.RawRecord
		want []pipeline.IdentityKind
	}{
		{"invalid: none", fuzzyParams, raw(pipeline.RawRecord{}), nil},
		{"no matching: id only", noMatchParams, raw(full), []pipeline.IdentityKind{pipeline.KindThirdID}},
		{"exact: identityType only", exactParams, raw(withType(full, "openid")), []pipeline.IdentityKind{pipeline.KindOpenID}},
		{"exact scoped: identityType only", scoped, raw(withType(full, "phone")), []pipeline.IdentityKind{pipeline.KindPhone}},
		{"fuzzy: every kind present", fuzzyParams, raw(full),
			[]pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}},
		{"fuzzy way 2: same set", fuzzy2Params, raw(full),
			[]pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}},
		{"fuzzy: blocked and malformed left out", fuzzyParams,
			raw(pipeline.RawRecord{UnionID: "NULL", OpenID: "o1", Phone: "12", ThirdID: "t1"}),
			[]pipeline.IdentityKind{pipeline.KindOpenID, pipeline.KindThirdID}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			if got := n.Lookups(tt.p); !slices.Equal(got, tt.want) {
				t.Errorf("Lookups = %q, want %q", got, tt.want)
			}
		})
	}
}

func withType(r pipeline.RawRecord, identityType string) pipeline.RawRecord {
	r.IdentityType = identityType
	return r
}

func BenchmarkNormalize(b *testing.B) {
	r := pipeline.RawRecord{
		IdentityType: "phone",
		ThirdID:      "crm-000123",
		OpenID:       "oA_xY1234567Q9ZkAbCdEfGhIjKl",
		UnionID:      "o6_bmjrPTlm6_2sgVt7hMZOPfL2M",
		Phone:        "+86 138-0000-0000",
		Groups:       "vip，新客户,vip",
	}
	b.ReportAllocs()
	for b.Loop() {
		n := Normalize(fuzzyParams, r)
		if n.Invalid != pipeline.ReasonNone {
			b.Fatal(n.Invalid)
		}
	}
}

// TestNormalizeLimits checks each per-record limit of SPEC §10 at its
// boundary, in every matching mode: exactly at the limit passes, one more
// code point makes the record INVALID with the limit's reason.
func TestNormalizeLimits(t *testing.T) {
	at := func(s string, n int) string { return strings.Repeat(s, n) }
	const (
		idLen    = pipeline.MaxIdentityLen
		phoneLen = pipeline.MaxPhoneLen
		tooLong  = pipeline.ReasonValueTooLong
	)
	// A phone of exactly MaxPhoneLen characters as sent that is still valid:
	// padding and separators count until trimmed.
	phoneAt := "+86 138-0000-0000" + at(" ", phoneLen-len("+86 138-0000-0000"))
	modes := []struct {
		name string
		p    pipeline.Params
		base pipeline.RawRecord // a valid record under p
	}{
		{"no matching", noMatchParams, pipeline.RawRecord{ThirdID: "crm-1", Groups: "vip"}},
		{"exact", exactParams, pipeline.RawRecord{IdentityType: "id", ThirdID: "crm-1", Groups: "vip"}},
		{"fuzzy", fuzzyParams, pipeline.RawRecord{ThirdID: "crm-1", Groups: "vip"}},
	}
	tests := []struct {
		name string
		edit func(*pipeline.RawRecord)
		want pipeline.Reason
	}{
		{"thirdId at limit", func(r *pipeline.RawRecord) { r.ThirdID = at("t", idLen) }, ""},
		{"thirdId over", func(r *pipeline.RawRecord) { r.ThirdID = at("t", idLen+1) }, tooLong},
		{"thirdId 3000", func(r *pipeline.RawRecord) { r.ThirdID = at("t", 3000) }, tooLong},
		{"thirdId CJK at limit (384 bytes)", func(r *pipeline.RawRecord) { r.ThirdID = at("客", idLen) }, ""},
		{"thirdId CJK over", func(r *pipeline.RawRecord) { r.ThirdID = at("客", idLen+1) }, tooLong},
		{"thirdId measured after trimming", func(r *pipeline.RawRecord) { r.ThirdID = "  " + at("t", idLen) + "\t" }, ""},
		{"openid at limit", func(r *pipeline.RawRecord) { r.OpenID = at("o", idLen) }, ""},
		{"openid over", func(r *pipeline.RawRecord) { r.OpenID = at("o", idLen+1) }, tooLong},
		{"unionid at limit", func(r *pipeline.RawRecord) { r.UnionID = at("u", idLen) }, ""},
		{"unionid over", func(r *pipeline.RawRecord) { r.UnionID = at("u", idLen+1) }, tooLong},
		{"blocked but over-long", func(r *pipeline.RawRecord) { r.UnionID = at("0", idLen+1) }, tooLong},
		{"phone at limit as sent", func(r *pipeline.RawRecord) { r.Phone = phoneAt }, ""},
		{"phone over as sent (padding counts)", func(r *pipeline.RawRecord) { r.Phone = phoneAt + " " }, tooLong},
		{"phone 3000", func(r *pipeline.RawRecord) { r.Phone = at("1", 3000) }, tooLong},
		{"over-long value beats group problems", func(r *pipeline.RawRecord) {
			r.OpenID, r.Groups = at("o", idLen+1), "a\u202eb"
		}, tooLong},
		{"invalid byte counts as one", func(r *pipeline.RawRecord) { r.UnionID = at("\xff", idLen) }, ""},
		{"invalid bytes over", func(r *pipeline.RawRecord) { r.UnionID = at("\xff", idLen+1) }, tooLong},
		{"100 groups", func(r *pipeline.RawRecord) { r.Groups = groupList(100) }, ""},
		{"101 groups", func(r *pipeline.RawRecord) { r.Groups = groupList(101) }, pipeline.ReasonTooManyGroups},
		{"group name at limit", func(r *pipeline.RawRecord) { r.Groups = at("组", pipeline.MaxGroupNameLen) }, ""},
		{"group name over", func(r *pipeline.RawRecord) { r.Groups = at("组", pipeline.MaxGroupNameLen+1) }, pipeline.ReasonGroupNameTooLong},
		{"group name bidi override", func(r *pipeline.RawRecord) { r.Groups = "vip,\u202evip" }, pipeline.ReasonGroupNameInvalid},
		{"group name zero-width space", func(r *pipeline.RawRecord) { r.Groups = "v\u200bip" }, pipeline.ReasonGroupNameInvalid},
	}
	for _, m := range modes {
		for _, tt := range tests {
			t.Run(m.name+"/"+tt.name, func(t *testing.T) {
				r := m.base
				tt.edit(&r)
				n := Normalize(m.p, r)
				if n.Invalid != tt.want {
					t.Fatalf("Invalid = %q, want %q", n.Invalid, tt.want)
				}
				if tt.want != "" && n.Lookups(m.p) != nil {
					t.Errorf("Lookups = %v for an invalid record", n.Lookups(m.p))
				}
				if len(n.Ref.ThirdID) > pipeline.MaxIdentityLen*utf8.UTFMax {
					t.Errorf("Ref.ThirdID holds %d bytes", len(n.Ref.ThirdID))
				}
			})
		}
	}
}

// A value holding NUL (PostgreSQL text cannot hold one) is malformed: it
// counts as absent, is never looked up or stored, and never reaches Ref.
func TestNormalizeNUL(t *testing.T) {
	tests := []struct {
		name string
		p    pipeline.Params
		r    pipeline.RawRecord
		want pipeline.Reason
	}{
		{"thirdId, no matching", noMatchParams, pipeline.RawRecord{ThirdID: "crm\x00-1", Groups: "vip"}, pipeline.ReasonMissingIdentity},
		{"thirdId, exact", exactParams, pipeline.RawRecord{IdentityType: "id", ThirdID: "crm\x00-1", Groups: "vip"}, pipeline.ReasonMissingIdentity},
		{"identityType, exact", exactParams, pipeline.RawRecord{IdentityType: "id\x00", ThirdID: "crm-1", Groups: "vip"}, pipeline.ReasonMissingIdentity},
		{"phone, exact", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "138\x0000000000", Groups: "vip"}, pipeline.ReasonInvalidPhone},
		{"all, fuzzy", fuzzyParams, pipeline.RawRecord{ThirdID: "t\x00", OpenID: "o\x00", UnionID: "u\x00", Phone: "1\x00", Groups: "vip"}, pipeline.ReasonInvalidPhone},
		{"fuzzy skips it", fuzzyParams, pipeline.RawRecord{UnionID: "u\x00", ThirdID: "crm-1", Groups: "vip"}, ""},
		{"created customer drops it", noMatchParams, pipeline.RawRecord{ThirdID: "crm-1", OpenID: "o\x00", UnionID: "u\x00", Phone: "1\x00", Groups: "vip"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			if n.Invalid != tt.want {
				t.Fatalf("Invalid = %q, want %q", n.Invalid, tt.want)
			}
			for _, k := range kindsByIndex {
				if strings.IndexByte(n.Value(k), 0) >= 0 {
					t.Errorf("value of %s holds NUL", k)
				}
			}
			ref := n.Ref
			for _, v := range []string{ref.ThirdID, ref.Phone, ref.OpenID, ref.UnionID} {
				if strings.IndexByte(v, 0) >= 0 {
					t.Errorf("Ref holds NUL: %+v", ref)
				}
			}
		})
	}
}

// TestCheckGroupNameEveryRune compares checkGroupName, with its fast paths,
// with Go's Unicode tables on every code point.
func TestCheckGroupNameEveryRune(t *testing.T) {
	for r := rune(0); r <= unicode.MaxRune; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue // surrogates cannot be encoded
		}
		want := !unicode.In(r, unicode.Cc, unicode.Cf, unicode.Zl, unicode.Zp)
		if n, ok := checkGroupName(string(r)); n != 1 || ok != want {
			t.Errorf("checkGroupName(%U) = %d, %v; want 1, %v", r, n, ok, want)
		}
	}
	if n, ok := checkGroupName("a\xffb\xc3"); n != 4 || ok {
		t.Errorf("invalid UTF-8: %d, %v; want 4, false", n, ok)
	}
}

// groupList returns n distinct group names joined by ",".
func groupList(n int) string {
	l := make([]string, n)
	for i := range l {
		l[i] = fmt.Sprintf("g%03d", i)
	}
	return strings.Join(l, ",")
}

func BenchmarkNormalizeGroups(b *testing.B) {
	for _, bc := range []struct{ name, in string }{
		{"typical", "vip，新客户,vip"},
		{"100 ascii", groupList(100)},
		{"cjk 64", strings.Repeat("客", 64) + "," + strings.Repeat("户", 64)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, why := NormalizeGroups(bc.in); why != pipeline.ReasonNone {
					b.Fatal(why)
				}
			}
		})
	}
}

// BenchmarkNormalizeGroupsHostile: a record's whole 64 KiB of text as
// distinct group names costs no more than the first 101 of them.
func BenchmarkNormalizeGroupsHostile(b *testing.B) {
	in := groupList(12000)[:60000]
	b.ReportAllocs()
	for b.Loop() {
		if _, why := NormalizeGroups(in); why != pipeline.ReasonTooManyGroups {
			b.Fatal(why)
		}
	}
}
