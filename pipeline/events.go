package pipeline

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"
)

// Event types on the events topic.
const (
	EventRequestAccepted = "request.accepted"
	EventRequestRejected = "request.rejected"
	EventBatchFinished   = "batch.finished"
	// EventBatchUpdated reports a finished batch's counters again after
	// late matches changed lateMatched (SPEC §13).
	EventBatchUpdated = "batch.updated"
)

// Headers of a message on the requests topic.
const (
	HeaderToken          = "x-token"         // required: an access token, as X-Token
	HeaderIdempotencyKey = "idempotency-key" // optional; default: topic/partition/offset
)

// RequestEvent answers one message of the requests topic: the batch it
// became (request.accepted) or why it was refused (request.rejected, with
// the code, errorCode and msg the HTTP API would give). It is keyed like the
// request.
type RequestEvent struct {
	V              int       `json:"v"`
	Type           string    `json:"type"`
	BatchID        int64     `json:"batchId,omitempty"` // accepted only
	Code           string    `json:"code,omitempty"`    // rejected only
	ErrorCode      string    `json:"errorCode,omitempty"`
	Msg            string    `json:"msg,omitempty"`
	RequestKey     string    `json:"requestKey"`     // the request message's key
	IdempotencyKey string    `json:"idempotencyKey"` // as given, or topic/partition/offset
	Topic          string    `json:"topic"`          // where the request was read
	Partition      int       `json:"partition"`
	Offset         int64     `json:"offset"`
	At             time.Time `json:"at"`
}

// BatchSummary is a batch's progress and result: what batchResult answers
// and batch.finished reports. The counters are exact: Processed = Success +
// Unmatched + Ambiguous + Invalid + Failed.
type BatchSummary struct {
	Status    string  `json:"status"` // PROCESSING, SUCCESS, PARTIAL_SUCCESS or FAILED
	OptType   OptType `json:"optType"`
	Total     int     `json:"total"`
	Processed int     `json:"processed"`
	Success   int     `json:"success"`
	Unmatched int     `json:"unmatched"`
	Ambiguous int     `json:"ambiguous"`
	Invalid   int     `json:"invalid"`
	Failed    int     `json:"failed"`
	// Deferred counts the NOT_FOUND records kept as pending bindings
	// (SPEC §13; also counted in Unmatched), LateMatched those of them
	// applied since. Only LateMatched changes after the batch finished.
	Deferred      int            `json:"deferred"`
	LateMatched   int            `json:"lateMatched"`
	MatchedBy     map[string]int `json:"matchedBy"` // matched records by kind; kinds that matched none left out
	GroupsCreated int            `json:"groupsCreated"`
	Conflicts     int            `json:"conflicts"`
	// ErrorCounts counts the records not applied by reason (Reason values).
	ErrorCounts map[string]int `json:"errorCounts"`
	AcceptedAt  time.Time      `json:"acceptedAt"`
	FinishedAt  *time.Time     `json:"finishedAt"` // nil while PROCESSING
}

// BatchFinishedEvent reports a batch's final result, once per batch. It is
// keyed by BatchFinishedKey.
type BatchFinishedEvent struct {
	V        int    `json:"v"`
	Type     string `json:"type"`
	TenantID int64  `json:"tenantId"`
	BatchID  int64  `json:"batchId"`
	BatchSummary
}

// EncodeRequestEvent returns the JSON value of e, with V set.
func EncodeRequestEvent(e RequestEvent) ([]byte, error) {
	e.V = Version
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("pipeline: encode %s: %w", e.Type, err)
	}
	return b, nil
}

// EncodeBatchFinished returns the JSON value of e, with V and Type set and
// nil maps written as empty objects.
func EncodeBatchFinished(e BatchFinishedEvent) ([]byte, error) {
	return encodeBatchEvent(e, EventBatchFinished)
}

// EncodeBatchUpdated returns the JSON value of a batch.updated event: e as
// EncodeBatchFinished writes it, with Type batch.updated. It is keyed by
// BatchFinishedKey, so a batch's events stay in one partition, in order.
func EncodeBatchUpdated(e BatchFinishedEvent) ([]byte, error) {
	return encodeBatchEvent(e, EventBatchUpdated)
}

func encodeBatchEvent(e BatchFinishedEvent, typ string) ([]byte, error) {
	e.V, e.Type = Version, typ
	if e.MatchedBy == nil {
		e.MatchedBy = map[string]int{}
	}
	if e.ErrorCounts == nil {
		e.ErrorCounts = map[string]int{}
	}
	b, err := json.Marshal(e)
	if err != nil {
		return nil, fmt.Errorf("pipeline: encode %s: %w", typ, err)
	}
	return b, nil
}

// BatchFinishedKey is the key of a batch.finished event: tenant and batch.
func BatchFinishedKey(tenantID, batchID int64) []byte {
	k := strconv.AppendInt(nil, tenantID, 10)
	k = append(k, "/b"...)
	return strconv.AppendInt(k, batchID, 10)
}
