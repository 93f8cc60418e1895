package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Version is the "v" field of every message this version of groupmatch
// writes. Decoders accept exactly this version.
const Version = 1

// ErrUndecodable wraps every decoding failure: the message can never be
// processed and belongs in the dead-letter topic.
var ErrUndecodable = errors.New("undecodable message")

// RecordMessage is the value of a groupmatch.records message: one record of an
// accepted batch, with the batch's parameters. Ingest writes it; the matcher
// reads it.
type RecordMessage struct {
	V        int       `json:"v"`
	TenantID int64     `json:"tenantId"`
	BatchID  int64     `json:"batchId"`
	Index    int       `json:"index"` // 0-based position in the request's data
	Params   Params    `json:"params"`
	Record   RawRecord `json:"record"`
}

// RecordRef is what a batch result may show of a record that was not
// applied: the enterprise's thirdId and masked forms of the other identifiers.
type RecordRef struct {
	ThirdID string `json:"thirdId,omitempty"`
	Phone   string `json:"phone,omitempty"`   // masked
	OpenID  string `json:"openid,omitempty"`  // masked
	UnionID string `json:"unionid,omitempty"` // masked
	Email   string `json:"email,omitempty"`   // masked
}

// NumRefMembers is the number of members of a RecordRef.
const NumRefMembers = 5

// Set sets r's member named name to v; a name r has no member of is
// ignored. A switch, like RawRecord.Member; TestMembersMatchTags holds it
// to Members.
func (r *RecordRef) Set(name, v string) {
	switch name {
	case "thirdId":
		r.ThirdID = v
	case "phone":
		r.Phone = v
	case "openid":
		r.OpenID = v
	case "unionid":
		r.UnionID = v
	case "email":
		r.Email = v
	}
}

// Members lists r's members in the order the resolved message writes them
// (json.Marshal's order, the struct's), each pointing into r.
func (r *RecordRef) Members() [NumRefMembers]RecordMember {
	return [NumRefMembers]RecordMember{
		{"thirdId", &r.ThirdID},
		{"phone", &r.Phone},
		{"openid", &r.OpenID},
		{"unionid", &r.UnionID},
		{"email", &r.Email},
	}
}

// ResolvedMessage is the value of a groupmatch.resolved message: the matcher's
// verdict on one record. The sink applies it.
type ResolvedMessage struct {
	V          int          `json:"v"`
	TenantID   int64        `json:"tenantId"`
	BatchID    int64        `json:"batchId"`
	Index      int          `json:"index"`
	OptType    OptType      `json:"optType"`
	Outcome    Outcome      `json:"outcome"`
	Reason     Reason       `json:"reason,omitempty"`
	MatchedBy  IdentityKind `json:"matchedBy,omitempty"`  // set when Outcome is MATCHED
	CustomerID int64        `json:"customerId,omitempty"` // set when Outcome is MATCHED
	Created    bool         `json:"created,omitempty"`    // the customer was created (isMatching=false)
	Conflict   bool         `json:"conflict,omitempty"`   // a lower-priority identifier named another customer
	Groups     []string     `json:"groups,omitempty"`     // normalised group names, when MATCHED
	Ref        *RecordRef   `json:"ref,omitempty"`        // set when Outcome is not MATCHED
	// Pending is set on a NOT_FOUND verdict of a record whose batch defers
	// unmatched records (SPEC §13): the sink keeps it as a pending binding.
	Pending *Pending `json:"pending,omitempty"`
	// Late marks a MATCHED verdict the re-matcher reached for a pending
	// binding: the record already has its NOT_FOUND ledger row, which the
	// sink turns into a late match once (its first counters stay).
	Late bool `json:"late,omitempty"`
}

// EncodeRecord returns the JSON value of m, with V set to Version: the bytes
// json.Marshal would write. It never fails; the error is for symmetry with
// the other codecs.
func EncodeRecord(m RecordMessage) ([]byte, error) {
	m.V = Version
	return appendRecord(make([]byte, 0, 256), &m), nil
}

// DecodeRecord parses a groupmatch.records value as json.Unmarshal would,
// then checks it. Any error wraps ErrUndecodable.
func DecodeRecord(b []byte) (RecordMessage, error) {
	var m RecordMessage
	if !fastRecord(b, &m) {
		m = RecordMessage{}
		if err := json.Unmarshal(b, &m); err != nil {
			return m, undecodable("record", err)
		}
	}
	if err := checkHeader("record", m.V, m.TenantID, m.BatchID, m.Index); err != nil {
		return m, err
	}
	if m.Params.OptType != OptAdd && m.Params.OptType != OptDelete {
		return m, fmt.Errorf("%w: record: bad optType", ErrUndecodable)
	}
	return m, nil
}

// EncodeResolved returns the JSON value of m, with V set to Version: the
// bytes json.Marshal would write. It never fails; the error is for symmetry
// with the other codecs.
func EncodeResolved(m ResolvedMessage) ([]byte, error) {
	m.V = Version
	return appendResolved(make([]byte, 0, 192), &m), nil
}

// DecodeResolved parses a groupmatch.resolved value as json.Unmarshal
// would, then checks it. Any error wraps ErrUndecodable.
func DecodeResolved(b []byte) (ResolvedMessage, error) {
	var m ResolvedMessage
	if !fastResolved(b, &m) {
		m = ResolvedMessage{}
		if err := json.Unmarshal(b, &m); err != nil {
			return m, undecodable("resolved", err)
		}
	}
	if err := checkHeader("resolved", m.V, m.TenantID, m.BatchID, m.Index); err != nil {
		return m, err
	}
	if m.OptType != OptAdd && m.OptType != OptDelete {
		return m, fmt.Errorf("%w: resolved: bad optType", ErrUndecodable)
	}
	switch m.Outcome {
	case OutcomeMatched:
		if m.CustomerID <= 0 || len(m.Groups) == 0 {
			return m, fmt.Errorf("%w: resolved: matched without customer or groups", ErrUndecodable)
		}
	case OutcomeNotFound, OutcomeAmbiguous, OutcomeInvalid, OutcomeFailed:
	default:
		return m, fmt.Errorf("%w: resolved: bad outcome", ErrUndecodable)
	}
	return m, nil
}

// undecodable wraps a json.Unmarshal error of a what message in
// ErrUndecodable, keeping only what names no value (an offset, a field
// path): these errors end up in logs and dead-letter headers, and
// encoding/json makes no promise that its texts never quote the input
// (a syntax error already quotes the offending character).
func undecodable(what string, err error) error {
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syntax):
		return fmt.Errorf("%w: %s: not valid JSON near byte %d", ErrUndecodable, what, syntax.Offset)
	case errors.As(err, &typ):
		return fmt.Errorf("%w: %s: field %q has the wrong type", ErrUndecodable, what, typ.Field)
	}
	return fmt.Errorf("%w: %s: not valid JSON", ErrUndecodable, what)
}

func checkHeader(what string, v int, tenant, batch int64, index int) error {
	switch {
	case v != Version:
		return fmt.Errorf("%w: %s: version %d, want %d", ErrUndecodable, what, v, Version)
	case tenant <= 0 || batch <= 0 || batch > MaxBatchID:
		return fmt.Errorf("%w: %s: bad tenantId or batchId", ErrUndecodable, what)
	case index < 0 || index >= MaxRecords:
		return fmt.Errorf("%w: %s: bad index %d", ErrUndecodable, what, index)
	}
	return nil
}

// RecordKey is the Kafka key of a records message: 32 lower-case hex digits,
// the first 16 bytes of SHA-256 over the tenant id in decimal, a NUL byte,
// the kind, a NUL byte and the record's leading identity value. It names no
// identity value (SPEC §10), yet is stable: the same (tenant, kind, value)
// always gives the same key, so every record naming one identity lands in
// one matcher partition. Find-or-create by thirdId (isMatching=false)
// relies on that: records naming one thirdId are resolved in order by one
// consumer. Callers pass the value trimmed of white space, as the matcher
// reads it; any other normalisation only spreads the records wider.
func RecordKey(tenantID int64, kind IdentityKind, value string) []byte {
	var buf [64]byte
	h := sha256.New()
	b := strconv.AppendInt(buf[:0], tenantID, 10)
	b = append(b, 0)
	b = append(b, kind...)
	b = append(b, 0)
	h.Write(b)
	io.WriteString(h, value)
	var sum [sha256.Size]byte
	key := make([]byte, hex.EncodedLen(16))
	hex.Encode(key, h.Sum(sum[:0])[:16])
	return key
}

// ResolvedKey is the Kafka key of a resolved message: tenant and customer, so
// one customer's membership writes stay in one sink partition, in order. A
// record that matched no customer is keyed by its batch instead.
func ResolvedKey(m ResolvedMessage) []byte {
	k := strconv.AppendInt(nil, m.TenantID, 10)
	if m.CustomerID > 0 {
		k = append(k, "/c"...)
		return strconv.AppendInt(k, m.CustomerID, 10)
	}
	k = append(k, "/b"...)
	return strconv.AppendInt(k, m.BatchID, 10)
}

// Topics names the Kafka topics groupmatch uses.
type Topics struct {
	Requests  string // batchAdd bodies published directly by feeds
	Records   string // one message per record: ingest -> matcher
	Resolved  string // one message per resolved record: matcher -> sink
	Events    string // request and batch events for feeds
	DLQ       string // dead letters
	Directory string // directory changes and pending-binding rechecks (SPEC §13)
}

// DefaultPendingTimeout is the age at which a batch whose acceptance never
// completed (ingest died between its two steps) is aborted, by ingest's
// janitor or by the matcher or sink that meets its records. cmd/groupmatch's
// --pending-timeout defaults to it.
const DefaultPendingTimeout = 60 * time.Second

// DefaultTopicPrefix is the prefix of the documented topic names;
// cmd/groupmatch's --topic-prefix defaults to it.
const DefaultTopicPrefix = "groupmatch."

// TopicsFor returns the topic names with prefix: prefix + "requests",
// "records", "resolved", "events" and "dlq". Every topic name is built
// here.
func TopicsFor(prefix string) Topics {
	return Topics{
		Requests:  prefix + "requests",
		Records:   prefix + "records",
		Resolved:  prefix + "resolved",
		Events:    prefix + "events",
		DLQ:       prefix + "dlq",
		Directory: prefix + "directory",
	}
}

// DefaultTopics returns the documented topic names,
// TopicsFor(DefaultTopicPrefix).
func DefaultTopics() Topics { return TopicsFor(DefaultTopicPrefix) }

// TenantEvents returns the events topic of one tenant, Events + "." +
// tenant, and whether the tenant's name can be part of a topic name (ASCII
// letters, digits, '.', '_' and '-', the whole name at most 249
// characters). Kafka treats '.' and '_' alike in metric names, so tenants
// "a.b" and "a_b" cannot both have a topic.
func (t Topics) TenantEvents(tenant string) (string, bool) {
	name := t.Events + "." + tenant
	if tenant == "" || len(name) > 249 || tenant == "." || tenant == ".." {
		return "", false
	}
	for _, c := range []byte(tenant) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return "", false
		}
	}
	return name, true
}

// Position names one record of one batch.
type Position struct {
	TenantID int64 `json:"tenantId"`
	BatchID  int64 `json:"batchId"`
	Index    int   `json:"index"`
}

// PeekPosition extracts the record position from a message value that failed
// to decode, so that the record can still be counted as failed and its batch
// can finish. ok is false when the value names no valid position.
func PeekPosition(b []byte) (p Position, ok bool) {
	if json.Unmarshal(b, &p) != nil {
		return p, false
	}
	return p, checkHeader("peek", Version, p.TenantID, p.BatchID, p.Index) == nil
}
