package pipeline

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// DefaultDeferTTL is how long a pending binding is kept (SPEC §13):
// cmd/groupmatch's --defer-ttl defaults to it.
const DefaultDeferTTL = 90 * 24 * time.Hour

// Pending is what a NOT_FOUND resolved message carries when its batch
// defers unmatched records (Params.DeferUnmatched, SPEC §13): everything a
// later resolution needs, so that the re-matcher resolves the record by the
// rules of SPEC §5 without its batch or its original message. The sink
// stores it as a pending binding in the transaction that writes the
// record's ledger row.
type Pending struct {
	// Identities are the record's normalised values that were looked up,
	// by kind (only kinds with a value; never empty).
	Identities map[IdentityKind]string `json:"identities"`
	// IdentityType is the record's identityType, the kind exact matching
	// (matchingType 1) uses; "" under fuzzy matching.
	IdentityType IdentityKind `json:"identityType,omitempty"`
	// Params are the batch's parameters: the priority order (matchingType,
	// identifyWay) and application filter (accurateMatchType/Value).
	Params Params `json:"params"`
	// Groups are the record's normalised group names.
	Groups []string `json:"groups"`
}

// Directory message types on the directory topic.
const (
	// DirectoryIdentity: the directory learned that Value of Kind names
	// CustomerID (directory load, or a customer found or created by an
	// isMatching=false import).
	DirectoryIdentity = "identity"
	// DirectoryRecheck: a pending binding naming Value of Kind was stored;
	// resolve the pending bindings of that identity against the directory
	// as it is now (closes the race between a binding stored after the
	// directory learned its customer, and that customer's identity event).
	DirectoryRecheck = "recheck"
)

// DirectoryMessage is the value of a <prefix>directory message: one
// identity the directory learned, or one identity whose pending bindings
// should be resolved again. It is keyed by DirectoryKey, so one identity's
// messages stay in one partition, in order. The value is a normalised
// identity: the message travels only on this topic, never in a key, a
// header, a log line or an error.
type DirectoryMessage struct {
	V          int          `json:"v"`
	Type       string       `json:"type"` // DirectoryIdentity or DirectoryRecheck
	TenantID   int64        `json:"tenantId"`
	Kind       IdentityKind `json:"kind"`
	Value      string       `json:"value"`
	CustomerID int64        `json:"customerId,omitempty"` // DirectoryIdentity only
}

// DirectoryKey is the Kafka key of a directory message: RecordKey of its
// tenant, kind and value (a hash; it names no identity value).
func DirectoryKey(m DirectoryMessage) []byte {
	return RecordKey(m.TenantID, m.Kind, m.Value)
}

// EncodeDirectory returns the JSON value of m, with V set to Version.
func EncodeDirectory(m DirectoryMessage) ([]byte, error) {
	m.V = Version
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("pipeline: encode directory message: %w", err)
	}
	return b, nil
}

// DecodeDirectory parses a directory message and checks it. Any error
// wraps ErrUndecodable and names no value.
func DecodeDirectory(b []byte) (DirectoryMessage, error) {
	var m DirectoryMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return m, undecodable("directory", err)
	}
	switch {
	case m.V != Version:
		return m, fmt.Errorf("%w: directory: version %d, want %d", ErrUndecodable, m.V, Version)
	case m.TenantID <= 0:
		return m, fmt.Errorf("%w: directory: bad tenantId", ErrUndecodable)
	case m.Type != DirectoryIdentity && m.Type != DirectoryRecheck:
		return m, fmt.Errorf("%w: directory: bad type", ErrUndecodable)
	case m.Value == "" || !knownKind(m.Kind):
		return m, fmt.Errorf("%w: directory: bad kind or empty value", ErrUndecodable)
	case utf8.RuneCountInString(m.Value) > MaxEmailLen || strings.IndexByte(m.Value, 0) >= 0:
		// No normalised value of any kind is longer (email's limit is
		// the largest) or holds NUL, which PostgreSQL text, where the
		// re-matcher looks values up, cannot hold. (encoding/json has
		// already replaced invalid UTF-8.)
		return m, fmt.Errorf("%w: directory: value over %d characters or holding NUL", ErrUndecodable, MaxEmailLen)
	case m.Type == DirectoryIdentity && m.CustomerID <= 0:
		return m, fmt.Errorf("%w: directory: identity without customer", ErrUndecodable)
	}
	return m, nil
}

func knownKind(k IdentityKind) bool { return KindOrdinal(k) >= 0 }
