package pipeline

// IdentityKind names one kind of identifier a record can be matched by. The
// values are the platform's identityType names and are the only values of the
// matchedBy metric label.
type IdentityKind string

// The identity kinds. KindThirdID ("id") is the enterprise's own customer id.
const (
	KindUnionID IdentityKind = "unionid"
	KindOpenID  IdentityKind = "openid"
	KindPhone   IdentityKind = "phone"
	KindThirdID IdentityKind = "id"
	KindEmail   IdentityKind = "email"
)

// NumKinds is the number of identity kinds.
const NumKinds = 5

// IdentityKinds lists every kind by its ordinal, the index of kind-indexed
// storage ([NumKinds]T) and of the batches.matched_by counters. Ordinals
// are stored, so a new kind is appended, never inserted. What each kind
// means (its request field, normalisation, directory table, priority in
// the fuzzy orders) is the table of package identity, which follows this
// order.
var IdentityKinds = [NumKinds]IdentityKind{KindUnionID, KindOpenID, KindPhone, KindThirdID, KindEmail}

// KindOrdinal returns k's index in IdentityKinds, or -1 for an unknown kind.
// It is a switch, not a search of IdentityKinds, because the matcher asks
// it several times per record; TestKindOrdinal holds the two together.
func KindOrdinal(k IdentityKind) int {
	switch k {
	case KindUnionID:
		return 0
	case KindOpenID:
		return 1
	case KindPhone:
		return 2
	case KindThirdID:
		return 3
	case KindEmail:
		return 4
	}
	return -1
}

// Outcome is the final class of one record; each maps to one batch counter.
type Outcome string

// The outcomes. Only OutcomeMatched records are applied to groups.
const (
	OutcomeMatched   Outcome = "MATCHED"   // counted in success
	OutcomeNotFound  Outcome = "NOT_FOUND" // counted in unmatched
	OutcomeAmbiguous Outcome = "AMBIGUOUS" // counted in ambiguous
	OutcomeInvalid   Outcome = "INVALID"   // counted in invalid
	OutcomeFailed    Outcome = "FAILED"    // counted in failed (dead-lettered)
)

// Reason explains why a record was not applied; it is the key of a batch
// result's errorCounts. The set is closed so it can be a metric label.
type Reason string

// The reasons.
const (
	ReasonNone                Reason = ""
	ReasonNotFound            Reason = "NOT_FOUND"
	ReasonAmbiguous           Reason = "AMBIGUOUS"
	ReasonMissingIdentity     Reason = "MISSING_IDENTITY"
	ReasonInvalidPhone        Reason = "INVALID_PHONE"
	ReasonInvalidEmail        Reason = "INVALID_EMAIL" // identityType=email and the email is malformed
	ReasonInvalidIdentityType Reason = "INVALID_IDENTITY_TYPE"
	ReasonNoGroups            Reason = "NO_GROUPS"
	ReasonGroupNameTooLong    Reason = "GROUP_NAME_TOO_LONG"
	ReasonValueTooLong        Reason = "VALUE_TOO_LONG"     // an identity value over its limit (SPEC §10)
	ReasonTooManyGroups       Reason = "TOO_MANY_GROUPS"    // more than MaxGroupsPerRecord names
	ReasonGroupNameInvalid    Reason = "GROUP_NAME_INVALID" // a group name holds a Cc or Cf character
	ReasonGroupLimit          Reason = "GROUP_LIMIT"        // an add would exceed the tenant's group limit (sink)
	ReasonUndecodable         Reason = "UNDECODABLE"
	ReasonProcessingFailed    Reason = "PROCESSING_FAILED"
	// ReasonTimedOut: the record had no outcome when its batch reached
	// the batch deadline; the sink recorded it failed.
	ReasonTimedOut Reason = "TIMED_OUT"
	// ReasonBatchClosed marks, on the resolved topic only, a record the
	// matcher did not resolve because its batch was aborted, already
	// finished or unknown; the sink drops it (it never reaches a result).
	ReasonBatchClosed Reason = "BATCH_CLOSED"
)
