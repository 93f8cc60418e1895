package ingest

import (
	"errors"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/redact"
)

func (s *Service) batchResult(w http.ResponseWriter, r *http.Request, p apps.Principal) {
	q := r.URL.Query()
	id, err := strconv.ParseInt(q.Get("batchId"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", "batchId must be a positive integer")
		return
	}
	pageNo, ok := intParam(w, q.Get("pageNo"), "pageNo", 1, 1, math.MaxInt32)
	if !ok {
		return
	}
	pageSize, ok := intParam(w, q.Get("pageSize"), "pageSize", 100, 1, 1000)
	if !ok {
		return
	}
	res, err := s.store.BatchResult(r.Context(), p.TenantID, id, pageNo, pageSize)
	if s.readFailed(w, err, "batch") {
		return
	}
	writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "SUCCESS", Msg: "ok", Data: res})
}

func (s *Service) groupList(w http.ResponseWriter, r *http.Request, p apps.Principal) {
	q := r.URL.Query()
	pageNo, ok := intParam(w, q.Get("pageNo"), "pageNo", 1, 1, math.MaxInt32)
	if !ok {
		return
	}
	pageSize, ok := intParam(w, q.Get("pageSize"), "pageSize", 100, 1, 1000)
	if !ok {
		return
	}
	page, err := s.store.Groups(r.Context(), p.TenantID, pageNo, pageSize)
	if s.readFailed(w, err, "") {
		return
	}
	writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "SUCCESS", Msg: "ok", Data: page})
}

func (s *Service) groupMembers(w http.ResponseWriter, r *http.Request, p apps.Principal) {
	q := r.URL.Query()
	name := strings.TrimSpace(q.Get("groupName"))
	if name == "" {
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", "groupName is required")
		return
	}
	pageSize, ok := intParam(w, q.Get("pageSize"), "pageSize", 100, 1, 1000)
	if !ok {
		return
	}
	page, err := s.store.Members(r.Context(), p.TenantID, name, q.Get("cursor"), pageSize)
	if errors.Is(err, errBadCursor) {
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", "cursor "+err.Error())
		return
	}
	if s.readFailed(w, err, "group") {
		return
	}
	writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "SUCCESS", Msg: "ok", Data: page})
}

// readFailed answers a failed read: 404 for ErrNotFound, 503 otherwise.
func (s *Service) readFailed(w http.ResponseWriter, err error, what string) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, ErrNotFound):
		writeError(w, http.StatusNotFound, "404", "NOT_FOUND", "no such "+what)
	default:
		s.log.Error("read", "err", redact.Error(err))
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "database unavailable; retry later")
	}
	return true
}
