package ingest

import (
	"context"
	"errors"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/time/rate"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// Config configures a Service. Zero values take the documented defaults.
type Config struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics()
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// RateLimit is each application's sustained request rate per second,
	// default 100; RateBurst its burst, default 200.
	RateLimit float64
	RateBurst int
	// RequestTimeout bounds accepting one batch (PostgreSQL and Kafka);
	// default 10 s.
	RequestTimeout time.Duration
	// PendingTimeout is the age after which a batch never accepted is
	// aborted by the janitor; default 60 s. It must exceed RequestTimeout.
	PendingTimeout time.Duration
	// MaxInFlight bounds the batchAdd requests served at once; beyond it
	// ingest answers 503 at once instead of queueing. Default 256.
	MaxInFlight int
	// AuthFailRate is the failed authentications per second each client
	// address may make, default 20; AuthFailBurst how many in a row,
	// default 100. Beyond them the address is answered 429 before its
	// credentials are checked. AuthFailClients bounds the addresses
	// tracked, default 65,536 (see failureLimiter).
	AuthFailRate    float64
	AuthFailBurst   int
	AuthFailClients int
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client address (see clientAddr); none by default, and then the
	// header is ignored.
	TrustedProxies []netip.Prefix
	// TokenRate is the token pairs (getOrgAccessToken and refresh) each
	// application may get per minute, also its burst; default 10.
	TokenRate float64
	// TenantRate is each tenant's records quota per second over batchAdd
	// and the requests topic; 0 (the default) means none. Its burst is
	// max(TenantRate, 500), so any batch fits into a full bucket.
	TenantRate float64
	Logger     *slog.Logger
}

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

// Defaults of Config, used where a field is zero; cmd/groupmatch's flags
// default to them too, so they are written only here.
const (
	DefaultRateLimit       = 100.0 // requests per second per application
	DefaultRateBurst       = 200
	DefaultMaxInFlight     = 256
	DefaultAuthFailRate    = 20.0 // failed authentications per second per client address
	DefaultAuthFailBurst   = 100
	DefaultAuthFailClients = 1 << 16
	DefaultTokenRate       = 10.0 // token pairs per minute per application
)

// New returns an ingest service.
func New(cfg Config, store *Store, auth Auth, metrics *Metrics) (*Service, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("ingest: no brokers")
	}
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.RateLimit <= 0 {
		cfg.RateLimit = DefaultRateLimit
	}
	if cfg.RateBurst <= 0 {
		cfg.RateBurst = DefaultRateBurst
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	if cfg.PendingTimeout <= 0 {
		cfg.PendingTimeout = pipeline.DefaultPendingTimeout
	}
	if cfg.PendingTimeout <= cfg.RequestTimeout {
		return nil, errors.New("ingest: PendingTimeout must exceed RequestTimeout")
	}
	if cfg.MaxInFlight <= 0 {
		cfg.MaxInFlight = DefaultMaxInFlight
	}
	if cfg.AuthFailRate <= 0 {
		cfg.AuthFailRate = DefaultAuthFailRate
	}
	if cfg.AuthFailBurst <= 0 {
		cfg.AuthFailBurst = DefaultAuthFailBurst
	}
	if cfg.AuthFailClients <= 0 {
		cfg.AuthFailClients = DefaultAuthFailClients
	}
	if cfg.TokenRate <= 0 {
		cfg.TokenRate = DefaultTokenRate
	}
	var quota *keyedLimiter[int64]
	if cfg.TenantRate > 0 {
		quota = newKeyedLimiter[int64](cfg.TenantRate, max(int(math.Ceil(cfg.TenantRate)), pipeline.MaxRecords))
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
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
				s.log.Warn("janitor", "err", err)
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
