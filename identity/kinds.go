package identity

import (
	"strings"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Kind is everything groupmatch knows about one identity kind. Every stage
// reads kinds from Kinds instead of spelling them out: ingest (the records
// key), the matcher (normalisation, the priority chain, look-ups, creation),
// the directory (tables, line fields), the sink and batch results (the
// matched_by counters, by ordinal). Adding a kind is an entry here, its
// normaliser and mask, its directory table, and its schemas.
type Kind struct {
	// Name is the identityType value naming the kind and its matchedBy
	// label; pipeline.IdentityKinds[ordinal].
	Name pipeline.IdentityKind
	// Alias is another identityType value naming the kind (the
	// platform's historical "thirdId" for "id"), or "". Names and aliases
	// are compared case-insensitively.
	Alias string
	// Field is the member carrying the kind in a record (the request's
	// data, pipeline.RawRecord.Member) and in a result's record reference
	// (pipeline.RecordRef.Set).
	Field string
	// Noun names the kind in messages ("phone number"); never a value.
	Noun string
	// MaxLen is the longest value in code points (SPEC §10), counted after
	// trimming, or as sent when LimitAsSent; longer is VALUE_TOO_LONG in
	// every mode.
	MaxLen      int
	LimitAsSent bool
	// Normalize maps a usable value (trimmed, not blocked) to its canonical
	// form. value "" with problem ReasonNone means the value cannot be
	// stored (it holds NUL) and counts as absent; value "" with a problem
	// means it is malformed: exact matching by this kind answers INVALID
	// with that problem, fuzzy matching treats it as lacking.
	Normalize func(s string) (value string, problem pipeline.Reason)
	// Invalid is the problem Normalize answers for a malformed value;
	// ReasonNone when it refuses none.
	Invalid pipeline.Reason

	// AppScoped: an application filter (accurateMatchType/Value) restricts
	// the bindings that count. False for the enterprise's own thirdId.
	AppScoped bool
	// Mask is how a result's record reference shows the kind: masked
	// (the canonical value, or the trimmed value as sent when malformed),
	// or with ShowAsSent the trimmed value as sent, even when blocked,
	// unless over MaxLen.
	Mask MaskRule

	// Exact: identityType may name the kind (matchingType=1).
	Exact bool
	// FuzzyRank is the kind's 1-based position in the fuzzy order of
	// identifyWay 1 and 2 (FuzzyRank[0], FuzzyRank[1]); 0 when the kind is
	// not in that order, and then a record's value of it is ignored by
	// fuzzy matching.
	FuzzyRank [2]int
	// Create: an isMatching=false import gives a created customer the
	// record's value of this kind. The thirdId is always given.
	Create bool

	// Directory is where the directory keeps the kind.
	Directory Store
}

// Store says where the directory keeps one kind.
type Store struct {
	// Table and Column hold the values. A table other than "customers"
	// has a row per (value, customer, application), columns tenant_id,
	// Column, customer_id, app_type and app_id, and is distributed by
	// tenant_id, colocated with customers.
	Table, Column string
	// AppType and AppID are the columns of the application a value was
	// bound through; "" when the kind has none.
	AppType, AppID string
	// LineField is the member of a `directory load` line carrying the kind.
	LineField string
}

// MaskRule is how a result page shows a kind (Kind.Mask).
type MaskRule uint8

// The mask rules.
const (
	ShowAsSent  MaskRule = iota // the enterprise's own thirdId: shown, never masked
	MaskAsID                    // MaskID
	MaskAsPhone                 // MaskPhone
	MaskAsEmail                 // MaskEmail
)

// Append appends s as the rule shows it to dst.
func (m MaskRule) Append(dst []byte, s string) []byte {
	switch m {
	case MaskAsID:
		return AppendMaskedID(dst, s)
	case MaskAsPhone:
		return AppendMaskedPhone(dst, s)
	case MaskAsEmail:
		return AppendMaskedEmail(dst, s)
	}
	return append(dst, s...)
}

// AppScoped reports whether an application filter applies to kind k
// (Kind.AppScoped); false for an unknown kind.
func AppScoped(k pipeline.IdentityKind) bool {
	o := pipeline.KindOrdinal(k)
	return o >= 0 && kinds[o].AppScoped
}

// Multi reports whether the directory keeps any number of values of the
// kind per customer, in a table of its own.
func (s Store) Multi() bool { return s.Table != "customers" }

// Kinds returns the table of identity kinds, by ordinal (the order of
// pipeline.IdentityKinds). The table is shared, for the matcher's hot path
// (a copy per record cost a tenth of Normalize): it is read-only, and no
// caller may modify it. Its functions are pure.
func Kinds() *[pipeline.NumKinds]Kind { return &kinds }

// At returns the entry of the kind of ordinal o (0 <= o < NumKinds).
func At(o int) Kind { return kinds[o] }

// kinds is the table of identity kinds. Nothing modifies it.
var kinds = [pipeline.NumKinds]Kind{
	{
		Name: pipeline.KindUnionID, Field: "unionid", Noun: "unionid",
		MaxLen: pipeline.MaxIdentityLen, Normalize: asSent,
		AppScoped: true,
		Mask:      MaskAsID,
		Exact:     true, FuzzyRank: [2]int{1, 4}, Create: true,
		Directory: Store{Table: "customers", Column: "unionid", AppType: "unionid_app_type", AppID: "unionid_app_id", LineField: "unionid"},
	},
	{
		Name: pipeline.KindOpenID, Field: "openid", Noun: "openid",
		MaxLen: pipeline.MaxIdentityLen, Normalize: asSent,
		AppScoped: true,
		Mask:      MaskAsID,
		Exact:     true, FuzzyRank: [2]int{2, 3}, Create: true,
		Directory: Store{Table: "customer_openids", Column: "openid", AppType: "app_type", AppID: "app_id", LineField: "openids"},
	},
	{
		Name: pipeline.KindPhone, Field: "phone", Noun: "phone number",
		MaxLen: pipeline.MaxPhoneLen, LimitAsSent: true, Normalize: normalizePhone, Invalid: pipeline.ReasonInvalidPhone,
		AppScoped: true,
		Mask:      MaskAsPhone,
		Exact:     true, FuzzyRank: [2]int{3, 2}, Create: true,
		Directory: Store{Table: "customer_phones", Column: "phone", AppType: "app_type", AppID: "app_id", LineField: "phones"},
	},
	{
		Name: pipeline.KindThirdID, Alias: "thirdId", Field: "thirdId", Noun: "thirdId",
		MaxLen: pipeline.MaxIdentityLen, Normalize: asSent,
		Mask:  ShowAsSent,
		Exact: true, FuzzyRank: [2]int{4, 1}, Create: true,
		Directory: Store{Table: "customers", Column: "third_id", LineField: "thirdId"},
	},
	{
		// Not in either fuzzy order: the platform documents exactly those
		// two, and adding email would change whom existing callers match.
		Name: pipeline.KindEmail, Field: "email", Noun: "email address",
		MaxLen: pipeline.MaxEmailLen, Normalize: normalizeEmail, Invalid: pipeline.ReasonInvalidEmail,
		AppScoped: true,
		Mask:      MaskAsEmail,
		Exact:     true, Create: true,
		Directory: Store{Table: "customer_emails", Column: "email", AppType: "app_type", AppID: "app_id", LineField: "emails"},
	},
}

// Of returns the entry of kind k; ok is false for an unknown kind.
func Of(k pipeline.IdentityKind) (Kind, bool) {
	o := pipeline.KindOrdinal(k)
	if o < 0 {
		return Kind{}, false
	}
	return kinds[o], true
}

// FuzzyOrder returns the ordinals of the kinds fuzzy matching walks under
// identifyWay, highest priority first, in order[:n]: identifyWay 2
// (pipeline.IdentifyThirdIDFirst) walks its documented order, any other
// value identifyWay 1's. The orders are the FuzzyRank of Kinds, nowhere
// else.
func FuzzyOrder(identifyWay int) (order [pipeline.NumKinds]int, n int) {
	way := 0
	if identifyWay == pipeline.IdentifyThirdIDFirst {
		way = 1
	}
	for o := range kinds {
		if r := kinds[o].FuzzyRank[way]; r > 0 {
			order[r-1] = o
			n = max(n, r)
		}
	}
	return order, n
}

// InFuzzyOrder reports whether fuzzy matching under identifyWay reads the
// kind of ordinal o.
func InFuzzyOrder(identifyWay, o int) bool {
	order, n := FuzzyOrder(identifyWay)
	for _, x := range order[:n] {
		if x == o {
			return true
		}
	}
	return false
}

// asSent is the normaliser of kinds compared exactly as sent: a usable
// value is canonical, unless PostgreSQL text cannot hold it.
func asSent(s string) (string, pipeline.Reason) {
	return Storable(s), pipeline.ReasonNone
}

func normalizePhone(s string) (string, pipeline.Reason) {
	if c, ok := NormalizePhone(s); ok {
		return c, pipeline.ReasonNone
	}
	return "", pipeline.ReasonInvalidPhone
}

// ParseIdentityType maps a record's identityType to the kind it names (a
// Kinds entry's Name or one of its Aliases, such as the platform's
// historical "thirdId" for "id"). Letter case and surrounding white space
// are ignored. ok is false, and the kind "", for anything else, including
// "" (callers tell a missing identityType from an unknown one with
// IsBlocked first).
func ParseIdentityType(s string) (pipeline.IdentityKind, bool) {
	s = strings.TrimSpace(s)
	for o := range kinds {
		k := &kinds[o]
		if strings.EqualFold(s, string(k.Name)) || k.Alias != "" && strings.EqualFold(s, k.Alias) {
			return k.Name, true
		}
	}
	return "", false
}
