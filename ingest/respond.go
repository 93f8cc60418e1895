package ingest

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/groupmatch/groupmatch/apps"
)

// envelope is the platform's answer shape; Data is null on errors.
type envelope struct {
	Code      string `json:"code"`
	ErrorCode string `json:"errorCode"`
	Msg       string `json:"msg"`
	Data      any    `json:"data"`
}

// Refusal is a request refused as the HTTP API answers it; the requests
// topic reports the same Code, ErrorCode and Msg in a request.rejected event.
type Refusal struct {
	Status    int // HTTP status
	Code      string
	ErrorCode string
	Msg       string
}

func (r *Refusal) write(w http.ResponseWriter) { writeError(w, r.Status, r.Code, r.ErrorCode, r.Msg) }

// The refusals that do not depend on the request.
var (
	refuseToken       = Refusal{http.StatusUnauthorized, "100200", "TOKEN_INVALID", "X-Token is missing, invalid or expired"}
	refusePermission  = Refusal{http.StatusForbidden, "403", "PERMISSION_DENIED", "the application lacks the permission " + apps.ScopeGroup}
	refuseUnavailable = Refusal{http.StatusServiceUnavailable, "503", "UNAVAILABLE", "Kafka or PostgreSQL unavailable; nothing was accepted, retry is safe"}
	refuseTooLarge    = Refusal{http.StatusRequestEntityTooLarge, "413", "PAYLOAD_TOO_LARGE", "body exceeds 1 MiB"}
	refuseConflict    = Refusal{http.StatusConflict, "409", "IDEMPOTENCY_CONFLICT", "Idempotency-Key was used within 24 h for a different request"}
)

func writeError(w http.ResponseWriter, status int, code, errorCode, msg string) {
	writeJSON(w, status, envelope{Code: code, ErrorCode: errorCode, Msg: msg})
}

func writeJSON(w http.ResponseWriter, status int, e envelope) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e) // the client may be gone; nothing to do
}

// intParam parses an optional integer query parameter within [lo, hi],
// answering 400 itself when it is bad.
func intParam(w http.ResponseWriter, raw, name string, def, lo, hi int) (int, bool) {
	if raw == "" {
		return def, true
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v < lo || v > hi {
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", fmt.Sprintf("%s must be an integer from %d to %d", name, lo, hi))
		return 0, false
	}
	return v, true
}

// copyOf returns a refusal the caller may keep.
func copyOf(r Refusal) *Refusal { return &r }
