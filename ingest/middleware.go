package ingest

import (
	"context"
	"errors"
	"math"
	"net/http"
	"strconv"
	"time"

	"golang.org/x/time/rate"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/redact"
)

// statusRecorder remembers the status code for metrics.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (s *Service) route(name string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		s.metrics.InFlight.Inc()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(rec, r)
		s.metrics.InFlight.Dec()
		s.metrics.Requests.WithLabelValues(name, strconv.Itoa(rec.code)).Inc()
		s.metrics.RequestSeconds.WithLabelValues(name).Observe(time.Since(start).Seconds())
	})
}

type principalKey struct{}

// authed checks the client address's failure budget (429), X-Token (401),
// the audience.group permission (403) and the application's rate limit
// (429) before h runs. A missing or invalid token spends one failure of the
// client address's budget.
func (s *Service) authed(h func(http.ResponseWriter, *http.Request, apps.Principal)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		addr := s.clientAddr(r)
		if wait, blocked := s.failures.blocked(addr, time.Now()); blocked {
			refuseTooManyFailures(w, wait)
			return
		}
		p, refusal := s.authorize(r.Context(), r.Header.Get("X-Token"))
		if refusal != nil {
			if refusal.Status == http.StatusUnauthorized {
				s.failures.fail(addr, time.Now())
			}
			refusal.write(w)
			return
		}
		if wait, ok := s.allow(p.AppID); !ok {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeError(w, http.StatusTooManyRequests, "429", "RATE_LIMITED", "rate limit of the application exceeded")
			return
		}
		h(w, r, p)
	})
}

// authorize checks an access token and the audience.group permission.
func (s *Service) authorize(ctx context.Context, token string) (apps.Principal, *Refusal) {
	p, err := s.auth.Authenticate(ctx, token)
	switch {
	case errors.Is(err, apps.ErrTokenInvalid):
		return p, copyOf(refuseToken)
	case err != nil:
		s.log.Error("authenticate", "err", redact.Error(err))
		return p, copyOf(refuseUnavailable)
	case !p.Can(apps.ScopeGroup):
		return p, copyOf(refusePermission)
	}
	return p, nil
}

// allow takes one token of the application's limiter; when none is left it
// returns how long until one is.
func (s *Service) allow(appID string) (time.Duration, bool) {
	s.mu.Lock()
	l := s.limiters[appID]
	if l == nil {
		l = rate.NewLimiter(rate.Limit(s.cfg.RateLimit), s.cfg.RateBurst)
		s.limiters[appID] = l
	}
	s.mu.Unlock()
	now := time.Now()
	res := l.ReserveN(now, 1)
	if d := res.DelayFrom(now); d > 0 {
		res.CancelAt(now)
		return d, false
	}
	return 0, true
}
