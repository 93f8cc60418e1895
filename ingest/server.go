package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"
	"golang.org/x/time/rate"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// MaxBodyBytes is the largest batchAdd body accepted (1 MiB).
const MaxBodyBytes = 1 << 20

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
		s.log.Error("authenticate", "err", err)
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

func (s *Service) batchAdd(w http.ResponseWriter, r *http.Request, p apps.Principal) {
	if s.draining.Load() {
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "shutting down; nothing was accepted, retry is safe")
		return
	}
	select {
	case s.inFlight <- struct{}{}:
		defer func() { <-s.inFlight }()
	default:
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "overloaded; nothing was accepted, retry later")
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			refuseTooLarge.write(w)
			return
		}
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", "body could not be read")
		return
	}
	if len(r.Header.Values("Idempotency-Key")) > 1 {
		writeError(w, http.StatusBadRequest, "400", "INVALID_PARAMETER", "Idempotency-Key must be given at most once")
		return
	}
	id, refusal, err := s.submit(r.Context(), p, body, r.Header.Get("Idempotency-Key"))
	var quota *QuotaError
	if errors.As(err, &quota) {
		setRetryAfter(w, quota.RetryAfter)
		writeError(w, http.StatusTooManyRequests, "429", "RATE_LIMITED", "records quota of the tenant exceeded")
		return
	}
	if err != nil {
		s.log.Error("batch not accepted; retry is safe", "err", stream.ErrorText(err))
		refuseUnavailable.write(w)
		return
	}
	if refusal != nil {
		refusal.write(w)
		return
	}
	writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "SUCCESS", Msg: "ok", Data: id})
}

// MaxIdempotencyKey is the longest Idempotency-Key accepted.
const MaxIdempotencyKey = 64

// ValidIdempotencyKey reports whether key may name a request: "" (no key),
// or 1 to MaxIdempotencyKey bytes each in 0x21-0x7E, printable ASCII
// without space, so that a key is a token that survives any HTTP header,
// Kafka header, log field and PostgreSQL text column unchanged.
func ValidIdempotencyKey(key string) bool {
	if len(key) > MaxIdempotencyKey {
		return false
	}
	for i := 0; i < len(key); i++ {
		if key[i] < 0x21 || key[i] > 0x7e {
			return false
		}
	}
	return true
}

// submit validates a batchAdd body and accepts it as a batch. A refusal is
// an answer that a retry of the same request would get again: the caller's
// mistake as the API documents, or a failure that retry.Transient calls
// permanent (see permanentRefusal). An error means PostgreSQL or Kafka
// failed transiently, or ctx ended, and nothing was accepted, so a retry is
// safe.
func (s *Service) submit(ctx context.Context, p apps.Principal, body []byte, key string) (int64, *Refusal, error) {
	if len(body) > MaxBodyBytes {
		return 0, copyOf(refuseTooLarge), nil
	}
	req, err := DecodeRequest(body)
	if err != nil {
		return 0, &Refusal{Status: http.StatusBadRequest, Code: "400", ErrorCode: "INVALID_PARAMETER", Msg: err.Error()}, nil
	}
	if !ValidIdempotencyKey(key) {
		return 0, &Refusal{Status: http.StatusBadRequest, Code: "400", ErrorCode: "INVALID_PARAMETER",
			Msg: fmt.Sprintf("Idempotency-Key must be 1 to %d printable ASCII characters (0x21-0x7E, no space)", MaxIdempotencyKey)}, nil
	}
	id, err := s.Accept(ctx, p, req, key)
	switch {
	case errors.Is(err, ErrIdempotencyConflict):
		return 0, copyOf(refuseConflict), nil
	case err != nil && !retry.Transient(err) && ctx.Err() == nil:
		r := permanentRefusal(err)
		s.log.Warn("batch refused: it cannot succeed on a retry", "tenant_id", p.TenantID, "code", r.Code, "err", stream.ErrorText(err))
		return 0, r, nil
	}
	return id, nil, err
}

// permanentRefusal answers a request whose acceptance failed in a way no
// retry can mend (nothing was accepted): a record Kafka refuses as too large
// is 413 PAYLOAD_TOO_LARGE; a PostgreSQL data exception or program limit
// (SQLSTATE class 22 or 54: a value of the request it cannot store) is 400
// INVALID_PARAMETER; anything else (another permanent PostgreSQL error, a
// panic) is 422 UNPROCESSABLE. Messages name a SQLSTATE, never a value.
func permanentRefusal(err error) *Refusal {
	var pgErr *pgconn.PgError
	switch {
	case tooLargeForKafka(err):
		return &Refusal{http.StatusRequestEntityTooLarge, "413", "PAYLOAD_TOO_LARGE",
			"the batch's records are too large for Kafka; nothing was accepted"}
	case errors.As(err, &pgErr) && (strings.HasPrefix(pgErr.Code, "22") || strings.HasPrefix(pgErr.Code, "54")):
		return &Refusal{http.StatusBadRequest, "400", "INVALID_PARAMETER",
			"a value of the request cannot be stored (SQLSTATE " + pgErr.Code + "); nothing was accepted"}
	case errors.As(err, &pgErr):
		return &Refusal{http.StatusUnprocessableEntity, "422", "UNPROCESSABLE",
			"the request cannot be processed (SQLSTATE " + pgErr.Code + "); nothing was accepted, and a retry fails the same way"}
	}
	return &Refusal{http.StatusUnprocessableEntity, "422", "UNPROCESSABLE",
		"the request cannot be processed; nothing was accepted, and a retry fails the same way"}
}

// tooLargeForKafka reports whether Kafka, or kafka-go before sending,
// refused a message as too large.
func tooLargeForKafka(err error) bool {
	var tooLarge kafka.MessageTooLargeError
	if errors.Is(err, kafka.MessageSizeTooLarge) || errors.As(err, &tooLarge) {
		return true
	}
	var writeErrs kafka.WriteErrors
	if errors.As(err, &writeErrs) {
		for _, e := range writeErrs {
			if e != nil && tooLargeForKafka(e) {
				return true
			}
		}
	}
	return false
}

// ErrIdempotencyConflict means the idempotency key names a batch made from
// a different request within IdempotencyWindow.
var ErrIdempotencyConflict = errors.New("ingest: idempotency key used for a different request")

// Accept records a batch and writes its records to Kafka, returning the
// batch id only once Kafka acknowledged every record and the batch is marked
// accepted. On error nothing was accepted: the batch is aborted (now, or by
// the janitor after PendingTimeout if PostgreSQL is down), so its records are
// never applied and the id is never PROCESSING for ever.
//
// With a non-empty key, a request repeating one the tenant made with the
// same key within IdempotencyWindow gets that request's batch id and
// changes nothing; concurrent repeats wait for the first. The same key with
// a different request fails with ErrIdempotencyConflict.
func (s *Service) Accept(ctx context.Context, p apps.Principal, req Request, key string) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	defer cancel()
	var hash []byte
	if key != "" {
		canon, err := json.Marshal(req)
		if err != nil {
			return 0, fmt.Errorf("ingest: hash request: %w", err)
		}
		sum := sha256.Sum256(canon)
		hash = sum[:]
	}
	for {
		if key != "" {
			b, found, err := s.store.FindByKey(ctx, p.TenantID, key)
			if err != nil {
				return 0, err
			}
			switch {
			case found && !bytes.Equal(b.hash, hash):
				return 0, ErrIdempotencyConflict
			case found && !b.pending:
				return b.id, nil
			case found:
				// The first request with this key is being accepted.
				select {
				case <-ctx.Done():
					return 0, fmt.Errorf("ingest: waiting for a request with the same idempotency key: %w", ctx.Err())
				case <-time.After(20 * time.Millisecond):
				}
				continue
			}
		}
		refund, err := s.takeQuota(p.TenantID, len(req.Records))
		if err != nil {
			return 0, err
		}
		id, err := s.accept(ctx, p, req, key, hash)
		if err != nil {
			refund() // nothing was accepted
		}
		if errors.Is(err, errKeyTaken) {
			continue // a concurrent request with the key won; answer as it does
		}
		return id, err
	}
}

func (s *Service) accept(ctx context.Context, p apps.Principal, req Request, key string, hash []byte) (int64, error) {
	if !req.DeferGiven {
		// The tenant's default (SPEC §13), read after the idempotency hash
		// so that a repeat stays the same request if the default changes.
		def, err := s.store.DeferDefault(ctx, p.TenantID)
		if err != nil {
			return 0, err
		}
		req.Params.DeferUnmatched = def
	}
	id, err := s.store.CreateBatch(ctx, p.TenantID, p.AppID, req.Params, len(req.Records), key, hash)
	if err != nil {
		return 0, err
	}
	defer func() {
		if v := recover(); v != nil {
			s.abort(ctx, p.TenantID, id) // nothing was accepted: no answer may leave the batch pending
			panic(v)
		}
	}()
	msgs := make([]kafka.Message, len(req.Records))
	for i, rec := range req.Records {
		v, err := pipeline.EncodeRecord(pipeline.RecordMessage{
			TenantID: p.TenantID, BatchID: id, Index: i, Params: req.Params, Record: rec,
		})
		if err != nil {
			s.abort(ctx, p.TenantID, id)
			return 0, fmt.Errorf("ingest: encode record: %w", err)
		}
		kind, value := leadingIdentity(req.Params, rec)
		msgs[i] = kafka.Message{Key: pipeline.RecordKey(p.TenantID, kind, value), Value: v}
	}
	if err := s.records.WriteMessages(ctx, msgs...); err != nil {
		s.abort(ctx, p.TenantID, id)
		return 0, fmt.Errorf("ingest: write records of batch %d: %w", id, err)
	}
	if err := s.store.Accept(ctx, p.TenantID, id); err != nil {
		if errors.Is(err, errNotAccepted) || !s.settle(ctx, p.TenantID, id) {
			return 0, err
		}
		s.log.Warn("acceptance reported a failure but had committed; answering the batch id", "batch_id", id, "err", stream.ErrorText(err))
	}
	s.metrics.BatchesAccepted.Inc()
	s.metrics.RecordsAccepted.Add(float64(len(msgs)))
	s.log.Info("batch accepted", "batch_id", id, "records", len(msgs), "tenant_id", p.TenantID)
	return id, nil
}

// settle decides a batch whose acceptance failed ambiguously (see
// Store.Settle), retrying for a few seconds even after ctx ended, and
// reports whether it was accepted. A batch it cannot decide stays PENDING
// until the janitor aborts it; the caller answers 503, which is then right
// unless the lost acceptance had committed (the retry with an
// Idempotency-Key gets the batch id).
func (s *Service) settle(ctx context.Context, tenantID, id int64) bool {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	var accepted bool
	err := retry.Do(ctx, retry.Policy{MaxElapsed: 3 * time.Second, Initial: 50 * time.Millisecond, Max: time.Second}, func() error {
		var err error
		accepted, err = s.store.Settle(ctx, tenantID, id)
		return err
	}, nil)
	switch {
	case err != nil:
		s.log.Warn("acceptance undecided; the janitor will abort the batch if it is still pending", "batch_id", id, "err", stream.ErrorText(err))
		return false
	case !accepted:
		s.metrics.BatchesAborted.Inc()
	}
	return accepted
}

func (s *Service) abort(ctx context.Context, tenantID, id int64) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.store.Abort(ctx, tenantID, id); err != nil {
		s.log.Warn("abort failed; the janitor will abort the batch", "batch_id", id, "err", err)
		return
	}
	s.metrics.BatchesAborted.Inc()
}

// leadingIdentity is the identifier a record is keyed by on the records
// topic (pipeline.RecordKey): the one matching will try first, trimmed, and
// its kind. An unknown identityType keys by thirdId; a record with no
// identifier at all gets kind and value "" (it will be INVALID anyway).
func leadingIdentity(p pipeline.Params, r pipeline.RawRecord) (pipeline.IdentityKind, string) {
	field := func(k pipeline.IdentityKind) string {
		switch k {
		case pipeline.KindPhone:
			return r.Phone
		case pipeline.KindOpenID:
			return r.OpenID
		case pipeline.KindUnionID:
			return r.UnionID
		}
		return r.ThirdID
	}
	switch {
	case !p.IsMatching:
		return pipeline.KindThirdID, strings.TrimSpace(r.ThirdID)
	case p.MatchingType == pipeline.MatchingExact:
		k := pipeline.KindThirdID
		switch strings.ToLower(strings.TrimSpace(r.IdentityType)) {
		case "phone":
			k = pipeline.KindPhone
		case "openid":
			k = pipeline.KindOpenID
		case "unionid":
			k = pipeline.KindUnionID
		}
		return k, strings.TrimSpace(field(k))
	}
	order := pipeline.IdentityKinds
	if p.IdentifyWay == pipeline.IdentifyThirdIDFirst {
		order = []pipeline.IdentityKind{pipeline.KindThirdID, pipeline.KindPhone, pipeline.KindOpenID, pipeline.KindUnionID}
	}
	for _, k := range order {
		if v := strings.TrimSpace(field(k)); v != "" {
			return k, v
		}
	}
	return "", ""
}

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
		s.log.Error("read", "err", err)
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "database unavailable; retry later")
	}
	return true
}

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
		s.log.Error("token", "err", err)
		writeError(w, http.StatusServiceUnavailable, "503", "UNAVAILABLE", "database unavailable; retry later")
	default:
		writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "0", Msg: "操作成功", Data: t})
	}
}

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
