package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/retry"
)

// MaxBodyBytes is the largest batchAdd body accepted (1 MiB).
const MaxBodyBytes = 1 << 20

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
		s.log.Error("batch not accepted; retry is safe", "err", redact.Error(err))
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
		s.log.Warn("batch refused: it cannot succeed on a retry", "tenant_id", p.TenantID, "code", r.Code, "err", redact.Error(err))
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
		s.log.Warn("acceptance reported a failure but had committed; answering the batch id", "batch_id", id, "err", redact.Error(err))
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
		s.log.Warn("acceptance undecided; the janitor will abort the batch if it is still pending", "batch_id", id, "err", redact.Error(err))
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
		s.log.Warn("abort failed; the janitor will abort the batch", "batch_id", id, "err", redact.Error(err))
		return
	}
	s.metrics.BatchesAborted.Inc()
}

// leadingIdentity is the identifier a record is keyed by on the records
// topic (pipeline.RecordKey): the one matching will try first, trimmed, and
// its kind (identity.Kinds: the kind identityType names under exact
// matching, the first the record has in identity.FuzzyOrder under fuzzy
// matching). An unknown identityType keys by thirdId; a record with no
// identifier at all gets kind and value "" (it will be INVALID anyway).
func leadingIdentity(p pipeline.Params, r pipeline.RawRecord) (pipeline.IdentityKind, string) {
	switch {
	case !p.IsMatching:
		return pipeline.KindThirdID, strings.TrimSpace(r.ThirdID)
	case p.MatchingType == pipeline.MatchingExact:
		k, ok := identity.ParseIdentityType(r.IdentityType)
		if !ok {
			k = pipeline.KindThirdID
		}
		e, _ := identity.Of(k)
		return k, strings.TrimSpace(r.Member(e.Field))
	}
	order, n := identity.FuzzyOrder(p.IdentifyWay)
	for _, o := range order[:n] {
		if v := strings.TrimSpace(r.Member(identity.Kinds()[o].Field)); v != "" {
			return pipeline.IdentityKinds[o], v
		}
	}
	return "", ""
}
