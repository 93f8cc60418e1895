package ingest

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/time/rate"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/stream"
)

// Auth is what ingest needs of the application store.
type Auth interface {
	Authenticate(ctx context.Context, accessToken string) (apps.Principal, error)
	// IssueTokenIf and RefreshIf call admit once the credentials are
	// verified and issue nothing when it fails, returning its error.
	IssueTokenIf(ctx context.Context, appID, secret string, admit apps.Admit) (apps.Tokens, error)
	RefreshIf(ctx context.Context, refreshToken string, admit apps.Admit) (apps.Tokens, error)
}

// Service is the ingest stage: the HTTP API of SPEC §3–§4. It validates and
// authenticates requests, records batches, and writes one message per
// record to the records topic. It never touches group memberships.
type Service struct {
	cfg      Config
	store    *Store
	auth     Auth
	records  *kafka.Writer
	metrics  *Metrics
	log      *slog.Logger
	draining atomic.Bool
	inFlight chan struct{} // semaphore of MaxInFlight batchAdd requests

	mu       sync.Mutex
	limiters map[string]*rate.Limiter // by appid; one per application

	failures    *failureLimiter       // failed authentications by client address
	tokenLimits *keyedLimiter[string] // token pairs issued by appid
	quota       *keyedLimiter[int64]  // records by tenant; nil without a quota
}

// New returns an ingest service.
func New(cfg Config, store *Store, auth Auth, metrics *Metrics) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	var quota *keyedLimiter[int64]
	if cfg.TenantRate > 0 {
		quota = newKeyedLimiter[int64](cfg.TenantRate, max(int(math.Ceil(cfg.TenantRate)), pipeline.MaxRecords))
	}
	metrics.InFlightLimit.Set(float64(cfg.MaxInFlight))
	w := stream.NewWriter(cfg.Brokers, cfg.Topics.Records, cfg.Security)
	w.WriteTimeout = cfg.RequestTimeout
	return &Service{
		cfg: cfg, store: store, auth: auth, metrics: metrics,
		log: cfg.Logger.With("stage", "ingest"), records: w,
		limiters:    make(map[string]*rate.Limiter),
		inFlight:    make(chan struct{}, cfg.MaxInFlight),
		failures:    newFailureLimiter(cfg.AuthFailRate, cfg.AuthFailBurst, cfg.AuthFailClients),
		tokenLimits: newKeyedLimiter[string](cfg.TokenRate/60, max(int(cfg.TokenRate), 1)),
		quota:       quota,
	}, nil
}

// Close releases the Kafka writer.
func (s *Service) Close() error { return s.records.Close() }

// Writers exposes the service's producers for writer metrics.
func (s *Service) Writers() []*kafka.Writer { return []*kafka.Writer{s.records} }

// Drain makes the service refuse new batches with 503 and report not ready;
// call it when shutdown begins.
func (s *Service) Drain() { s.draining.Store(true) }

// Ready reports whether the service takes work.
func (s *Service) Ready() error {
	if s.draining.Load() {
		return errors.New("ingest: shutting down")
	}
	return nil
}

// RunJanitor aborts batches left PENDING by a crashed ingest, every interval,
// until ctx is done.
func (s *Service) RunJanitor(ctx context.Context, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			n, err := s.store.AbortStale(ctx, s.cfg.PendingTimeout)
			if err != nil {
				s.log.Warn("janitor", "err", redact.Error(err))
			} else if n > 0 {
				s.log.Warn("aborted batches never accepted", "batches", n)
				s.metrics.BatchesAborted.Add(float64(n))
			}
		}
	}
}

// Handler returns the HTTP API: every route under /api/integrate/ and
// /api/open/, the platform's gateway prefix.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	for _, prefix := range []string{"/api/integrate", "/api/open"} {
		mux.Handle("POST "+prefix+"/audience/group/rel/batchAdd", s.route("batchAdd", s.authed(s.batchAdd)))
		mux.Handle("GET "+prefix+"/audience/group/rel/batchResult", s.route("batchResult", s.authed(s.batchResult)))
		mux.Handle("GET "+prefix+"/audience/group/list", s.route("groupList", s.authed(s.groupList)))
		mux.Handle("GET "+prefix+"/audience/group/members", s.route("groupMembers", s.authed(s.groupMembers)))
		mux.Handle("GET "+prefix+"/app/getOrgAccessToken", s.route("getOrgAccessToken", http.HandlerFunc(s.getToken)))
		mux.Handle("GET "+prefix+"/app/refreshOrgAccessToken", s.route("refreshOrgAccessToken", http.HandlerFunc(s.refreshToken)))
	}
	mux.Handle("/", s.route("other", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "404", "NOT_FOUND", "no such API")
	})))
	return mux
}
