package matcher

import (
	"slices"
	"strings"
	"testing"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
)

type hitKey struct {
	kind  pipeline.IdentityKind
	value string
}

// fakeHits is a directory's answer for one tenant, keyed by normalised value.
type fakeHits map[hitKey][]identity.Binding

func (h fakeHits) Bindings(kind pipeline.IdentityKind, value string) []identity.Binding {
	return h[hitKey{kind, value}]
}

// panicHits fails a test that reads the directory when it must not.
type panicHits struct{ t *testing.T }

func (h panicHits) Bindings(kind pipeline.IdentityKind, _ string) []identity.Binding {
	h.t.Helper()
	h.t.Fatalf("directory read for %s", kind)
	return nil
}

var (
	_ Hits = fakeHits(nil)
	_ Hits = panicHits{}
)

// Customer ids of the test directory.
const (
	custOpenWx1    = 1  // openid "oSame" through gzh/wx1
	custOpenWx2    = 2  // openid "oSame" through gzh/wx2
	custShared1    = 3  // phone 13800000000, shared
	custShared2    = 4  // phone 13800000000, shared
	custUnion      = 5  // unionid "uA"
	custPhone      = 6  // phone 13900000000
	custThird      = 7  // thirdId "crm-7"
	custAll        = 8  // unionid "uB", phone 13700000000, openid "oB" (gzh/wx1), thirdId "crm-8"
	custShop       = 9  // phone 13500000000 through YOUZAN/shop1
	custUnbound    = 10 // phone 13500000000 through no application
	custUnionWx1   = 11 // unionid "uScoped" through gzh/wx1
	custUnionWx2   = 12 // unionid "uScoped" through gzh/wx2
	custManyApps   = 13 // phone 13300000000 through wx1, shop1 and none
	custOpenUnique = 14 // openid "oC" through gzh/wx2
)

func testDirectory() fakeHits {
	h := fakeHits{
		{pipeline.KindOpenID, "oSame"}: {
			{CustomerID: custOpenWx2, AppType: "gzh", AppID: "wx2"},
			{CustomerID: custOpenWx1, AppType: "gzh", AppID: "wx1"},
		},
		{pipeline.KindPhone, "13800000000"}: {{CustomerID: custShared2}, {CustomerID: custShared1}},
		{pipeline.KindUnionID, "uA"}:        {{CustomerID: custUnion, AppType: "gzh", AppID: "wx1"}},
		{pipeline.KindPhone, "13900000000"}: {{CustomerID: custPhone}},
		{pipeline.KindThirdID, "crm-7"}:     {{CustomerID: custThird}},
		{pipeline.KindUnionID, "uB"}:        {{CustomerID: custAll}},
		{pipeline.KindPhone, "13700000000"}: {{CustomerID: custAll}},
		{pipeline.KindOpenID, "oB"}:         {{CustomerID: custAll, AppType: "gzh", AppID: "wx1"}},
		{pipeline.KindThirdID, "crm-8"}:     {{CustomerID: custAll}},
		{pipeline.KindPhone, "13500000000"}: {
			{CustomerID: custUnbound},
			{CustomerID: custShop, AppType: "YOUZAN", AppID: "shop1"},
		},
		{pipeline.KindUnionID, "uScoped"}: {
			{CustomerID: custUnionWx1, AppType: "gzh", AppID: "wx1"},
			{CustomerID: custUnionWx2, AppType: "gzh", AppID: "wx2"},
		},
		{pipeline.KindPhone, "13300000000"}: {
			{CustomerID: custManyApps, AppType: "gzh", AppID: "wx1"},
			{CustomerID: custManyApps, AppType: "YOUZAN", AppID: "shop1"},
			{CustomerID: custManyApps},
		},
		{pipeline.KindOpenID, "oC"}:           {{CustomerID: custOpenUnique, AppType: "gzh", AppID: "wx2"}},
		{pipeline.KindPhone, "+442079460958"}: {{CustomerID: 15}},
		{pipeline.KindThirdID, "bad-ids"}:     {{CustomerID: 0}, {CustomerID: -3}},
		// A thirdId the directory let two customers share.
		{pipeline.KindThirdID, "crm-twin"}: {{CustomerID: custShared1}, {CustomerID: custShared2}},
	}
	// Ten customers on one phone, in decreasing order: more than Resolve's
	// stack buffer.
	var ten []identity.Binding
	for id := int64(109); id >= 100; id-- {
		ten = append(ten, identity.Binding{CustomerID: id})
	}
	h[hitKey{pipeline.KindPhone, "13200000000"}] = ten
	return h
}

func scopedExact(appType, appID string) pipeline.Params {
	p := exactParams
	p.AppType, p.AppID = appType, appID
	return p
}

func TestResolverCandidates(t *testing.T) {
	h := testDirectory()
	open := func(s string) pipeline.RawRecord { return pipeline.RawRecord{OpenID: s} }
	phone := func(s string) pipeline.RawRecord { return pipeline.RawRecord{Phone: s} }
	union := func(s string) pipeline.RawRecord { return pipeline.RawRecord{UnionID: s} }
	third := func(s string) pipeline.RawRecord { return pipeline.RawRecord{ThirdID: s} }
	tests := []struct {
		name string
		r    Resolver
		rec  pipeline.RawRecord
		want []int64
	}{
		// openid: the same string under two applications.
		{"openid unscoped sees both apps", Resolver{Kind: pipeline.KindOpenID}, open("oSame"), []int64{custOpenWx1, custOpenWx2}},
		{"openid scoped wx1", Resolver{Kind: pipeline.KindOpenID, AppType: "gzh", AppID: "wx1"}, open("oSame"), []int64{custOpenWx1}},
		{"openid scoped wx2", Resolver{Kind: pipeline.KindOpenID, AppType: "gzh", AppID: "wx2"}, open("oSame"), []int64{custOpenWx2}},
		{"openid scoped app type case-insensitive", Resolver{Kind: pipeline.KindOpenID, AppType: "GZH", AppID: "wx1"}, open("oSame"), []int64{custOpenWx1}},
		{"openid scoped app id exact", Resolver{Kind: pipeline.KindOpenID, AppType: "gzh", AppID: "WX1"}, open("oSame"), nil},
		{"openid scoped other app type same id", Resolver{Kind: pipeline.KindOpenID, AppType: "workwechat", AppID: "wx1"}, open("oSame"), nil},
		{"openid unknown", Resolver{Kind: pipeline.KindOpenID}, open("oNone"), nil},

		// phone.
		{"phone shared by two customers", Resolver{Kind: pipeline.KindPhone}, phone("13800000000"), []int64{custShared1, custShared2}},
		{"phone looked up canonical", Resolver{Kind: pipeline.KindPhone}, phone("+86 139-0000-0000"), []int64{custPhone}},
		{"phone e164", Resolver{Kind: pipeline.KindPhone}, phone("0044 20 7946 0958"), []int64{15}},
		{"phone unscoped counts unbound", Resolver{Kind: pipeline.KindPhone}, phone("13500000000"), []int64{custShop, custUnbound}},
		{"phone scoped drops unbound", Resolver{Kind: pipeline.KindPhone, AppType: "YOUZAN", AppID: "shop1"}, phone("13500000000"), []int64{custShop}},
		{"phone scoped other app", Resolver{Kind: pipeline.KindPhone, AppType: "gzh", AppID: "wx1"}, phone("13500000000"), nil},
		{"phone one customer through many apps", Resolver{Kind: pipeline.KindPhone}, phone("13300000000"), []int64{custManyApps}},
		{"phone ten customers sorted", Resolver{Kind: pipeline.KindPhone}, phone("13200000000"),
			[]int64{100, 101, 102, 103, 104, 105, 106, 107, 108, 109}},
		{"phone malformed", Resolver{Kind: pipeline.KindPhone}, phone("1390000000"), nil},

		// unionid.
		{"unionid unscoped", Resolver{Kind: pipeline.KindUnionID}, union("uScoped"), []int64{custUnionWx1, custUnionWx2}},
		{"unionid scoped", Resolver{Kind: pipeline.KindUnionID, AppType: "gzh", AppID: "wx2"}, union("uScoped"), []int64{custUnionWx2}},
		{"unionid scoped unbound does not count", Resolver{Kind: pipeline.KindUnionID, AppType: "gzh", AppID: "wx1"}, union("uB"), nil},
		{"unionid blocked", Resolver{Kind: pipeline.KindUnionID}, union("undefined"), nil},

		// id.
		{"id", Resolver{Kind: pipeline.KindThirdID}, third(" crm-7 "), []int64{custThird}},
		{"id ignores scope", Resolver{Kind: pipeline.KindThirdID, AppType: "gzh", AppID: "wx1"}, third("crm-7"), []int64{custThird}},
		{"id non-positive customer ids ignored", Resolver{Kind: pipeline.KindThirdID}, third("bad-ids"), nil},
		{"id record lacks it", Resolver{Kind: pipeline.KindThirdID}, union("uA"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(fuzzyParams, raw(tt.rec))
			if got := tt.r.Candidates(&n, h); !slices.Equal(got, tt.want) {
				t.Errorf("Candidates = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestResolverChain(t *testing.T) {
	r := func(k pipeline.IdentityKind) Resolver { return Resolver{Kind: k} }
	way1 := []Resolver{r(pipeline.KindUnionID), r(pipeline.KindOpenID), r(pipeline.KindPhone), r(pipeline.KindThirdID)}
	way2 := []Resolver{r(pipeline.KindThirdID), r(pipeline.KindPhone), r(pipeline.KindOpenID), r(pipeline.KindUnionID)}
	fuzzyWithApp := fuzzyParams
	fuzzyWithApp.AppType, fuzzyWithApp.AppID = "gzh", "wx1"
	fuzzyNoWay := fuzzyParams
	fuzzyNoWay.IdentifyWay = 0
	noMatchWithApp := noMatchParams
	noMatchWithApp.AppType, noMatchWithApp.AppID = "gzh", "wx1"
	tests := []struct {
		name         string
		p            pipeline.Params
		identityType pipeline.IdentityKind
		want         []Resolver
	}{
		{"exact phone", exactParams, pipeline.KindPhone, []Resolver{r(pipeline.KindPhone)}},
		{"exact openid scoped", scopedExact("gzh", "wx1"), pipeline.KindOpenID,
			[]Resolver{{Kind: pipeline.KindOpenID, AppType: "gzh", AppID: "wx1"}}},
		{"exact phone scoped", scopedExact("YOUZAN", "shop1"), pipeline.KindPhone,
			[]Resolver{{Kind: pipeline.KindPhone, AppType: "YOUZAN", AppID: "shop1"}}},
		{"exact unionid scoped", scopedExact("gzh", "wx1"), pipeline.KindUnionID,
			[]Resolver{{Kind: pipeline.KindUnionID, AppType: "gzh", AppID: "wx1"}}},
		{"exact id never scoped", scopedExact("gzh", "wx1"), pipeline.KindThirdID, []Resolver{r(pipeline.KindThirdID)}},
		{"exact without identityType", exactParams, "", []Resolver{}},
		{"fuzzy way 1", fuzzyParams, pipeline.KindPhone, way1},
		{"fuzzy way 2", fuzzy2Params, "", way2},
		{"fuzzy never scoped", fuzzyWithApp, "", way1},
		{"fuzzy without identifyWay walks way 1", fuzzyNoWay, "", way1},
		{"no matching: id", noMatchWithApp, pipeline.KindPhone, []Resolver{r(pipeline.KindThirdID)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Chain(tt.p, tt.identityType); !slices.Equal(got, tt.want) {
				t.Errorf("Chain = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func matched(by pipeline.IdentityKind, id int64) Verdict {
	return Verdict{Outcome: pipeline.OutcomeMatched, MatchedBy: by, CustomerID: id}
}

func conflicted(by pipeline.IdentityKind, id int64) Verdict {
	v := matched(by, id)
	v.Conflict = true
	return v
}

var (
	notFound  = Verdict{Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound}
	ambiguous = Verdict{Outcome: pipeline.OutcomeAmbiguous, Reason: pipeline.ReasonAmbiguous}
)

func invalid(r pipeline.Reason) Verdict {
	return Verdict{Outcome: pipeline.OutcomeInvalid, Reason: r}
}

func TestResolve(t *testing.T) {
	h := testDirectory()
	fuzzyWithApp := fuzzyParams
	fuzzyWithApp.AppType, fuzzyWithApp.AppID = "gzh", "wx1"
	tests := []struct {
		name string
		p    pipeline.Params
		r    pipeline.RawRecord
		want Verdict
	}{
		// Exact: one kind, one resolver.
		{"exact phone", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "139 0000 0000"}, matched(pipeline.KindPhone, custPhone)},
		{"exact PHONE with 0086", exactParams, pipeline.RawRecord{IdentityType: "PHONE", Phone: "0086-139-0000-0000"}, matched(pipeline.KindPhone, custPhone)},
		{"exact thirdId means id", exactParams, pipeline.RawRecord{IdentityType: "thirdId", ThirdID: "crm-7"}, matched(pipeline.KindThirdID, custThird)},
		{"exact unionid", exactParams, pipeline.RawRecord{IdentityType: "unionid", UnionID: "uA"}, matched(pipeline.KindUnionID, custUnion)},
		{"exact openid unique", exactParams, pipeline.RawRecord{IdentityType: "openid", OpenID: "oC"}, matched(pipeline.KindOpenID, custOpenUnique)},
		{"exact uses only identityType", exactParams, pipeline.RawRecord{IdentityType: "unionid", UnionID: "uNone", Phone: "13900000000"}, notFound},
		{"exact phone shared by two customers", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "13800000000"}, ambiguous},
		{"exact phone not found", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "13111111111"}, notFound},
		{"exact phone ten customers", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "13200000000"}, ambiguous},

		// Exact with accurateMatchType/Value.
		{"exact openid unscoped two apps", exactParams, pipeline.RawRecord{IdentityType: "openid", OpenID: "oSame"}, ambiguous},
		{"exact openid scoped wx1", scopedExact("gzh", "wx1"), pipeline.RawRecord{IdentityType: "openid", OpenID: "oSame"}, matched(pipeline.KindOpenID, custOpenWx1)},
		{"exact openid scoped wx2", scopedExact("gzh", "wx2"), pipeline.RawRecord{IdentityType: "openid", OpenID: "oSame"}, matched(pipeline.KindOpenID, custOpenWx2)},
		{"exact openid scoped other app", scopedExact("gzh", "wx3"), pipeline.RawRecord{IdentityType: "openid", OpenID: "oSame"}, notFound},
		{"exact phone scoped", scopedExact("YOUZAN", "shop1"), pipeline.RawRecord{IdentityType: "phone", Phone: "13500000000"}, matched(pipeline.KindPhone, custShop)},
		{"exact phone unscoped", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "13500000000"}, ambiguous},
		{"exact phone scoped unbound phone", scopedExact("YOUZAN", "shop1"), pipeline.RawRecord{IdentityType: "phone", Phone: "13900000000"}, notFound},
		{"exact unionid scoped", scopedExact("gzh", "wx1"), pipeline.RawRecord{IdentityType: "unionid", UnionID: "uScoped"}, matched(pipeline.KindUnionID, custUnionWx1)},
		{"exact id ignores scope", scopedExact("gzh", "wx1"), pipeline.RawRecord{IdentityType: "id", ThirdID: "crm-7"}, matched(pipeline.KindThirdID, custThird)},

		{"exact id shared by two customers", exactParams, pipeline.RawRecord{IdentityType: "id", ThirdID: "crm-twin"}, ambiguous},
		{"exact identityType trimmed and any case", exactParams, pipeline.RawRecord{IdentityType: " OpenID ", OpenID: "oC"}, matched(pipeline.KindOpenID, custOpenUnique)},
		{"exact unionid scoped to an app nobody used", scopedExact("contenthome", "home1"), pipeline.RawRecord{IdentityType: "unionid", UnionID: "uA"}, notFound},

		// Exact: invalid records.
		{"exact identityType blocked", exactParams, pipeline.RawRecord{IdentityType: "NULL", Phone: "13900000000"}, invalid(pipeline.ReasonMissingIdentity)},
		{"exact identityType missing", exactParams, pipeline.RawRecord{Phone: "13900000000"}, invalid(pipeline.ReasonMissingIdentity)},
		{"exact identityType unknown", exactParams, pipeline.RawRecord{IdentityType: "mobile", Phone: "13900000000"}, invalid(pipeline.ReasonInvalidIdentityType)},
		{"exact named field blocked", exactParams, pipeline.RawRecord{IdentityType: "unionid", UnionID: "NULL", Phone: "13900000000"}, invalid(pipeline.ReasonMissingIdentity)},
		{"exact named phone malformed", exactParams, pipeline.RawRecord{IdentityType: "phone", Phone: "139000"}, invalid(pipeline.ReasonInvalidPhone)},

		// Fuzzy, identifyWay 1: unionid > openid > phone > id.
		{"fuzzy unionid wins", fuzzyParams, pipeline.RawRecord{UnionID: "uB", Phone: "13700000000", ThirdID: "crm-8"}, matched(pipeline.KindUnionID, custAll)},
		{"fuzzy unionid and phone disagree", fuzzyParams, pipeline.RawRecord{UnionID: "uA", Phone: "13900000000"}, conflicted(pipeline.KindUnionID, custUnion)},
		{"fuzzy unionid and id disagree", fuzzyParams, pipeline.RawRecord{UnionID: "uA", ThirdID: "crm-7"}, conflicted(pipeline.KindUnionID, custUnion)},
		{"fuzzy unknown unionid skipped", fuzzyParams, pipeline.RawRecord{UnionID: "uNone", Phone: "13900000000"}, matched(pipeline.KindPhone, custPhone)},
		{"fuzzy openid across apps ambiguous", fuzzyParams, pipeline.RawRecord{OpenID: "oSame"}, ambiguous},
		{"fuzzy openid not scoped by params", fuzzyWithApp, pipeline.RawRecord{OpenID: "oC"}, matched(pipeline.KindOpenID, custOpenUnique)},
		{"fuzzy skipped ambiguous openid counts as conflict", fuzzyParams, pipeline.RawRecord{OpenID: "oSame", Phone: "13900000000"}, conflicted(pipeline.KindPhone, custPhone)},
		{"fuzzy lower shared phone is no conflict", fuzzyParams, pipeline.RawRecord{UnionID: "uA", Phone: "13800000000"}, matched(pipeline.KindUnionID, custUnion)},
		{"fuzzy lower unknown id is no conflict", fuzzyParams, pipeline.RawRecord{UnionID: "uA", ThirdID: "crm-none"}, matched(pipeline.KindUnionID, custUnion)},
		{"fuzzy shared phone only", fuzzyParams, pipeline.RawRecord{Phone: "13800000000"}, ambiguous},
		{"fuzzy shared phone and unknown rest", fuzzyParams, pipeline.RawRecord{UnionID: "uNone", Phone: "13800000000", ThirdID: "crm-none"}, ambiguous},
		{"fuzzy nothing known", fuzzyParams, pipeline.RawRecord{UnionID: "uNone", OpenID: "oNone", Phone: "13111111111", ThirdID: "crm-none"}, notFound},
		{"fuzzy malformed phone plus good unionid", fuzzyParams, pipeline.RawRecord{UnionID: "uA", Phone: "139-0000-000"}, matched(pipeline.KindUnionID, custUnion)},
		{"fuzzy blocked unionid skipped", fuzzyParams, pipeline.RawRecord{UnionID: "undefined", Phone: "+86 13900000000"}, matched(pipeline.KindPhone, custPhone)},
		{"fuzzy e164 phone", fuzzyParams, pipeline.RawRecord{Phone: "+44 20 7946 0958"}, matched(pipeline.KindPhone, 15)},
		{"fuzzy identityType ignored", fuzzyParams, pipeline.RawRecord{IdentityType: "mobile", UnionID: "uA"}, matched(pipeline.KindUnionID, custUnion)},

		// Fuzzy, identifyWay 2: id > phone > openid > unionid.
		{"fuzzy2 phone before unionid, conflict", fuzzy2Params, pipeline.RawRecord{UnionID: "uA", Phone: "13900000000"}, conflicted(pipeline.KindPhone, custPhone)},
		{"fuzzy2 id first", fuzzy2Params, pipeline.RawRecord{UnionID: "uB", Phone: "13700000000", ThirdID: "crm-8"}, matched(pipeline.KindThirdID, custAll)},
		{"fuzzy2 shared phone skipped for openid", fuzzy2Params, pipeline.RawRecord{Phone: "13800000000", OpenID: "oC"}, conflicted(pipeline.KindOpenID, custOpenUnique)},

		{"fuzzy2 shared id skipped, phone wins with conflict", fuzzy2Params, pipeline.RawRecord{ThirdID: "crm-twin", Phone: "13900000000"}, conflicted(pipeline.KindPhone, custPhone)},
		{"fuzzy2 lower unionid names another customer", fuzzy2Params, pipeline.RawRecord{Phone: "13700000000", OpenID: "oB", UnionID: "uA"}, conflicted(pipeline.KindPhone, custAll)},
		{"fuzzy2 lower identifiers agree", fuzzy2Params, pipeline.RawRecord{Phone: "13700000000", OpenID: "oB", UnionID: "uB"}, matched(pipeline.KindPhone, custAll)},
		{"fuzzy every identifier shared", fuzzy2Params, pipeline.RawRecord{ThirdID: "crm-twin", Phone: "13800000000", OpenID: "oSame"}, ambiguous},

		// Fuzzy: invalid records.
		{"fuzzy malformed phone only", fuzzyParams, pipeline.RawRecord{Phone: "139-0000-000"}, invalid(pipeline.ReasonInvalidPhone)},
		{"fuzzy blocked values only", fuzzyParams, pipeline.RawRecord{UnionID: "NULL", OpenID: "undefined", Phone: "0000", ThirdID: "-1"}, invalid(pipeline.ReasonMissingIdentity)},

		// isMatching=false: the find half of find-or-create.
		{"no matching found", noMatchParams, pipeline.RawRecord{ThirdID: "crm-7", UnionID: "uA"}, matched(pipeline.KindThirdID, custThird)},
		{"no matching to create", noMatchParams, pipeline.RawRecord{ThirdID: "crm-new", UnionID: "uA"}, notFound},
		{"no matching thirdId blocked", noMatchParams, pipeline.RawRecord{ThirdID: "0", UnionID: "uA"}, invalid(pipeline.ReasonMissingIdentity)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, raw(tt.r))
			if got := Resolve(tt.p, &n, h); got != tt.want {
				t.Errorf("Resolve = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestResolveInvalidReadsNoDirectory(t *testing.T) {
	tests := []struct {
		name string
		p    pipeline.Params
		r    pipeline.RawRecord
		want pipeline.Reason
	}{
		{"no groups", fuzzyParams, pipeline.RawRecord{UnionID: "uA", Groups: " ，"}, pipeline.ReasonNoGroups},
		{"group name too long", exactParams, pipeline.RawRecord{IdentityType: "unionid", UnionID: "uA", Groups: strings.Repeat("数", 65)}, pipeline.ReasonGroupNameTooLong},
		{"missing identity", noMatchParams, pipeline.RawRecord{Groups: "vip"}, pipeline.ReasonMissingIdentity},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			if got, want := Resolve(tt.p, &n, panicHits{t}), invalid(tt.want); got != want {
				t.Errorf("Resolve = %+v, want %+v", got, want)
			}
		})
	}
}

func TestResolveMismatchedParams(t *testing.T) {
	// Normalised for fuzzy matching (identityType unread), resolved as exact.
	n := Normalize(fuzzyParams, raw(pipeline.RawRecord{UnionID: "uA"}))
	if got, want := Resolve(exactParams, &n, panicHits{t}), invalid(pipeline.ReasonMissingIdentity); got != want {
		t.Errorf("Resolve = %+v, want %+v", got, want)
	}
}

func TestResolveDoesNotAllocate(t *testing.T) {
	h := testDirectory()
	n := Normalize(fuzzyParams, raw(pipeline.RawRecord{UnionID: "uA", OpenID: "oSame", Phone: "13900000000", ThirdID: "crm-7"}))
	if allocs := testing.AllocsPerRun(100, func() { Resolve(fuzzyParams, &n, h) }); allocs != 0 {
		t.Errorf("Resolve allocates %v times per call, want 0", allocs)
	}
}

func BenchmarkResolve(b *testing.B) {
	h := testDirectory()
	// Every kind present and agreeing: the walk reads all four for conflicts.
	n := Normalize(fuzzyParams, raw(pipeline.RawRecord{UnionID: "uB", OpenID: "oB", Phone: "13700000000", ThirdID: "crm-8"}))
	b.ReportAllocs()
	for b.Loop() {
		if v := Resolve(fuzzyParams, &n, h); v.CustomerID != custAll || v.Conflict {
			b.Fatal(v)
		}
	}
}

func BenchmarkNormalizeResolve(b *testing.B) {
	h := testDirectory()
	r := pipeline.RawRecord{UnionID: "uB", OpenID: "oB", Phone: "+86 137 0000 0000", ThirdID: "crm-8", Groups: "vip，新客户"}
	b.ReportAllocs()
	for b.Loop() {
		n := Normalize(fuzzyParams, r)
		if v := Resolve(fuzzyParams, &n, h); v.CustomerID != custAll {
			b.Fatal(v)
		}
	}
}
