package ingest

import (
	"errors"
	"net/http"
	"net/netip"
	"time"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/redact"
)

func (s *Service) getToken(w http.ResponseWriter, r *http.Request) {
	addr := s.clientAddr(r)
	if wait, blocked := s.failures.blocked(addr, time.Now()); blocked {
		refuseTooManyFailures(w, wait)
		return
	}
	q := r.URL.Query()
	t, err := s.auth.IssueTokenIf(r.Context(), q.Get("instanceAppid"), q.Get("instanceSecrect"), s.admitToken)
	s.answerToken(w, addr, t, err, "100100", "APP_CREDENTIALS_INVALID", "instanceAppid or instanceSecrect is wrong")
}

func (s *Service) refreshToken(w http.ResponseWriter, r *http.Request) {
	addr := s.clientAddr(r)
	if wait, blocked := s.failures.blocked(addr, time.Now()); blocked {
		refuseTooManyFailures(w, wait)
		return
	}
	t, err := s.auth.RefreshIf(r.Context(), r.URL.Query().Get("orgRefreshToken"), s.admitToken)
	s.answerToken(w, addr, t, err, "100200", "TOKEN_INVALID", "orgRefreshToken is invalid or expired")
}

func (s *Service) answerToken(w http.ResponseWriter, addr netip.Addr, t apps.Tokens, err error, code, errorCode, msg string) {
	var limited *TokenRateError
	switch {
	case errors.Is(err, apps.ErrBadCredentials), errors.Is(err, apps.ErrTokenInvalid):
		s.failures.fail(addr, time.Now())
		writeError(w, http.StatusUnauthorized, code, errorCode, msg)
	case errors.As(err, &limited):
		setRetryAfter(w, limited.RetryAfter)
		writeError(w, http.StatusTooManyRequests, "429", "RATE_LIMITED", "token issuing limit of the application reached")
	case err != nil:
		s.log.Error("token", "err", redact.Error(err))
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "database unavailable; retry later")
	default:
		writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "0", Msg: "操作成功", Data: t})
	}
}
