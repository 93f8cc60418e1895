package pipeline

// MaxRecords is the largest number of records one batchAdd request may carry.
const MaxRecords = 500

// Per-record limits (SPEC §10). Lengths count Unicode code points (runes)
// of valid UTF-8 text; a record beyond one is INVALID, never truncated.
const (
	// MaxGroupNameLen is the longest group name, after trimming.
	MaxGroupNameLen = 64
	// MaxGroupsPerRecord is the most distinct group names one record may
	// name (ReasonTooManyGroups beyond).
	MaxGroupsPerRecord = 100
	// MaxIdentityLen is the longest thirdId, openid or unionid, after
	// trimming (ReasonValueTooLong beyond).
	MaxIdentityLen = 128
	// MaxPhoneLen is the longest phone as sent, before trimming and before
	// separators are removed (ReasonValueTooLong beyond).
	MaxPhoneLen = 32
	// MaxEmailLen is the longest email, after trimming
	// (ReasonValueTooLong beyond).
	MaxEmailLen = 254
	// MaxAppIDLen is the longest publicParams.accurateMatchValue as sent
	// (before trimming); a longer one rejects the request.
	MaxAppIDLen = 128
)

// MaxBatchID is the largest batch id, and the largest customer id: 2^53-1, so
// JavaScript clients read ids exactly.
const MaxBatchID = 1<<53 - 1

// OptType says whether a batch adds customers to groups or removes them.
type OptType string

// The two operations of batchAdd.
const (
	OptAdd    OptType = "add"
	OptDelete OptType = "delete"
)

// Matching types of publicParams.matchingType.
const (
	MatchingExact = 1
	MatchingFuzzy = 2
)

// Identify ways of publicParams.identifyWay (fuzzy matching only).
const (
	// IdentifyUnionIDFirst walks unionid > openid > phone > customer id.
	IdentifyUnionIDFirst = 1
	// IdentifyThirdIDFirst walks customer id > phone > openid > unionid.
	IdentifyThirdIDFirst = 2
)

// AppTypes lists the application types accurateMatchType may name.
var AppTypes = []string{"gzh", "workwechat", "YOUZAN", "EZR", "contentminiapp", "contenthome"}

// Params is a batch's publicParams after validation: OptType is lower case,
// MatchingType/IdentifyWay are zero when they do not apply.
type Params struct {
	IsMatching   bool    `json:"isMatching"`
	MatchingType int     `json:"matchingType,omitempty"`
	IdentifyWay  int     `json:"identifyWay,omitempty"`
	AppType      string  `json:"accurateMatchType,omitempty"`
	AppID        string  `json:"accurateMatchValue,omitempty"`
	OptType      OptType `json:"optType"`
	// DeferUnmatched keeps a NOT_FOUND record as a pending binding (SPEC
	// §13): publicParams.deferUnmatched, or the tenant's default.
	DeferUnmatched bool `json:"deferUnmatched,omitempty"`
}

// RawRecord is one element of a request's data, as the caller sent it (JSON
// null reads as ""). Normalisation happens in the matcher.
type RawRecord struct {
	IdentityType string `json:"identityType,omitempty"`
	ThirdID      string `json:"thirdId,omitempty"`
	OpenID       string `json:"openid,omitempty"`
	UnionID      string `json:"unionid,omitempty"`
	Phone        string `json:"phone,omitempty"`
	Email        string `json:"email,omitempty"`
	Groups       string `json:"groups,omitempty"`
}

// NumRecordMembers is the number of string members of a record.
const NumRecordMembers = 7

// RecordMember is one member of a record's JSON object and the RawRecord
// field that holds it.
type RecordMember struct {
	Name  string  // the JSON member name, as the platform spells it
	Value *string // the field of the RawRecord Members was called on
}

// Member returns the value of r's member named name ("" for none). It is
// a switch, not a search of Members, because the matcher reads every
// identity of every record through it; TestMembersMatchTags holds the two
// together.
func (r *RawRecord) Member(name string) string {
	switch name {
	case "identityType":
		return r.IdentityType
	case "thirdId":
		return r.ThirdID
	case "openid":
		return r.OpenID
	case "unionid":
		return r.UnionID
	case "phone":
		return r.Phone
	case "email":
		return r.Email
	case "groups":
		return r.Groups
	}
	return ""
}

// MemberIndex returns the index in Members of the member named name, or -1
// (the names compare exactly). A switch, for decoders reading member
// names; TestMembersMatchTags holds it to Members.
func MemberIndex(name []byte) int {
	switch string(name) {
	case "identityType":
		return 0
	case "thirdId":
		return 1
	case "openid":
		return 2
	case "unionid":
		return 3
	case "phone":
		return 4
	case "email":
		return 5
	case "groups":
		return 6
	}
	return -1
}

// Members lists r's members in the order the records message writes them
// (json.Marshal's order, the struct's), each pointing into r. The codecs
// of records and of batchAdd requests read and write records through it,
// so a new member is added here and in the struct, nowhere else.
func (r *RawRecord) Members() [NumRecordMembers]RecordMember {
	return [NumRecordMembers]RecordMember{
		{"identityType", &r.IdentityType},
		{"thirdId", &r.ThirdID},
		{"openid", &r.OpenID},
		{"unionid", &r.UnionID},
		{"phone", &r.Phone},
		{"email", &r.Email},
		{"groups", &r.Groups},
	}
}
