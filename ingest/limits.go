package ingest

import (
	"context"
	"fmt"
	"hash/maphash"
	"math"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/groupmatch/groupmatch/retry"
)

// failureShards is the number of independently locked parts of a
// failureLimiter, so that a flood from one address does not serialise the
// checks of all others on one mutex.
const failureShards = 64

// failureLimiter limits failed authentications (a missing or invalid
// X-Token, wrong application credentials, a bad refresh token) per client
// address with a token bucket: rate failures per second, burst at most in a
// row. A client whose bucket is empty is refused before its credentials are
// checked, so a flood of forged tokens costs no database work beyond its
// budget. Successful requests never touch the table.
//
// Memory is bounded: the table holds at most capacity addresses (an entry is
// about 100 bytes). An address whose bucket has refilled is forgotten (it
// is the same as a new one); when the table is full of addresses still
// paying off their failures, the least recently seen address is evicted
// from its shard, so a flood from more than capacity addresses can make a
// forgotten address's budget start afresh, but never grows the table. IPv6
// clients are limited per /64, the block one subscriber usually holds.
//
// It is safe for concurrent use.
type failureLimiter struct {
	rate     float64 // failures per second refilled
	burst    float64
	perShard int
	seed     maphash.Seed
	shards   [failureShards]failureShard
}

type failureShard struct {
	mu sync.Mutex
	m  map[netip.Addr]*failureBucket // owned by the shard, under mu
}

type failureBucket struct {
	tokens float64   // may be below zero: failures of requests in flight together
	at     time.Time // when tokens was computed
}

func newFailureLimiter(perSecond float64, burst, capacity int) *failureLimiter {
	l := &failureLimiter{rate: perSecond, burst: float64(burst), perShard: max(capacity/failureShards, 1), seed: maphash.MakeSeed()}
	for i := range l.shards {
		l.shards[i].m = make(map[netip.Addr]*failureBucket)
	}
	return l
}

func (l *failureLimiter) shard(a netip.Addr) *failureShard {
	b := a.As16()
	return &l.shards[maphash.Bytes(l.seed, b[:])%failureShards]
}

// refill brings b up to now; it reports whether the bucket is full again.
func (l *failureLimiter) refill(b *failureBucket, now time.Time) bool {
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(l.burst, b.tokens+d.Seconds()*l.rate)
		b.at = now
	}
	return b.tokens >= l.burst
}

// blocked reports whether the client has no failure left to spend, and
// then how long until it has one.
func (l *failureLimiter) blocked(a netip.Addr, now time.Time) (time.Duration, bool) {
	s := l.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[a]
	if b == nil {
		return 0, false
	}
	if l.refill(b, now) {
		delete(s.m, a)
		return 0, false
	}
	if b.tokens >= 1 {
		return 0, false
	}
	return time.Duration((1 - b.tokens) / l.rate * float64(time.Second)), true
}

// fail spends one failure of the client's budget.
func (l *failureLimiter) fail(a netip.Addr, now time.Time) {
	s := l.shard(a)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[a]
	if b == nil {
		if len(s.m) >= l.perShard {
			l.evict(s, now)
		}
		b = &failureBucket{tokens: l.burst, at: now}
		s.m[a] = b
	}
	l.refill(b, now)
	b.tokens--
}

// evict makes room in a full shard: it drops every address whose bucket
// has refilled, or else the one seen longest ago. It runs only when a new
// address fails while the shard is full, and costs one pass over the shard.
func (l *failureLimiter) evict(s *failureShard, now time.Time) {
	var oldest netip.Addr
	var oldestAt time.Time
	dropped := false
	for a, b := range s.m {
		if b.tokens+now.Sub(b.at).Seconds()*l.rate >= l.burst {
			delete(s.m, a)
			dropped = true
			continue
		}
		if oldestAt.IsZero() || b.at.Before(oldestAt) {
			oldest, oldestAt = a, b.at
		}
	}
	if !dropped {
		delete(s.m, oldest)
	}
}

// size is the number of addresses held.
func (l *failureLimiter) size() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.m)
		s.mu.Unlock()
	}
	return n
}

// maxForwardedHops bounds the X-Forwarded-For entries clientAddr reads.
const maxForwardedHops = 16

// clientAddr is the address failures are counted against: the connection's
// remote IP, unless that is one of Config.TrustedProxies; then the
// rightmost X-Forwarded-For entry that is not a trusted proxy (walking at
// most 16 entries from the right; an entry that does not parse ends the
// walk at the last trusted hop). Without trusted proxies the header is never
// read: any client can send it. IPv4-mapped addresses count as IPv4, IPv6
// addresses are reduced to their /64. A RemoteAddr that does not parse
// (never from net/http) is the zero address, one shared bucket.
func (s *Service) clientAddr(r *http.Request) netip.Addr {
	a := parseHostAddr(r.RemoteAddr)
	if s.trusted(a) {
		hops := r.Header.Values("X-Forwarded-For")
	walk:
		for i, n := len(hops)-1, 0; i >= 0; i-- {
			for rest := hops[i]; rest != ""; n++ {
				if n == maxForwardedHops {
					break walk
				}
				var hop string
				if j := strings.LastIndexByte(rest, ','); j >= 0 {
					rest, hop = rest[:j], rest[j+1:]
				} else {
					rest, hop = "", rest
				}
				h := parseHostAddr(strings.TrimSpace(hop))
				if !h.IsValid() {
					break walk
				}
				a = h
				if !s.trusted(h) {
					break walk
				}
			}
		}
	}
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			a = p.Addr()
		}
	}
	return a
}

// trusted reports whether a is one of Config.TrustedProxies.
func (s *Service) trusted(a netip.Addr) bool {
	for _, p := range s.cfg.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// parseHostAddr parses "ip:port", "[ip]:port" or "ip", unmapped and
// without zone; the zero Addr when it is none of them.
func parseHostAddr(s string) netip.Addr {
	var a netip.Addr
	if ap, err := netip.ParseAddrPort(s); err == nil {
		a = ap.Addr()
	} else if ip, err := netip.ParseAddr(s); err == nil {
		a = ip
	}
	return a.Unmap().WithZone("")
}

// refuseTooManyFailures answers a client over its failure budget.
func refuseTooManyFailures(w http.ResponseWriter, wait time.Duration) {
	setRetryAfter(w, wait)
	writeError(w, http.StatusTooManyRequests, "429", "RATE_LIMITED", "too many failed authentications from this address")
}

// setRetryAfter sets Retry-After to wait in whole seconds, at least 1.
func setRetryAfter(w http.ResponseWriter, wait time.Duration) {
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(math.Ceil(wait.Seconds())))))
}

// keyedLimiter is a token bucket per key (an application, a tenant). Keys
// are only ever authenticated principals, so the map holds at most one
// entry per application or tenant that exists. It is safe for concurrent
// use.
type keyedLimiter[K comparable] struct {
	rate  float64 // tokens per second
	burst float64
	mu    sync.Mutex
	m     map[K]*bucket // under mu
}

// bucket is one key's tokens as of at.
type bucket struct {
	tokens float64
	at     time.Time
}

func newKeyedLimiter[K comparable](perSecond float64, burst int) *keyedLimiter[K] {
	return &keyedLimiter[K]{rate: perSecond, burst: float64(burst), m: make(map[K]*bucket)}
}

// take takes n tokens of key's bucket if it holds them now; otherwise it
// takes nothing and returns how long until n tokens would be there (for n
// beyond the burst, never: the maximal duration).
func (k *keyedLimiter[K]) take(key K, n int, now time.Time) time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	b := k.m[key]
	if b == nil {
		b = &bucket{tokens: k.burst, at: now}
		k.m[key] = b
	}
	if d := now.Sub(b.at); d > 0 {
		b.tokens = min(k.burst, b.tokens+d.Seconds()*k.rate)
		b.at = now
	}
	need := float64(n)
	if need > k.burst {
		return time.Duration(math.MaxInt64)
	}
	if b.tokens < need {
		return time.Duration((need - b.tokens) / k.rate * float64(time.Second))
	}
	b.tokens -= need
	return 0
}

// give returns n tokens taken from key's bucket.
func (k *keyedLimiter[K]) give(key K, n int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if b := k.m[key]; b != nil {
		b.tokens = min(k.burst, b.tokens+float64(n))
	}
}

// TokenRateError means an application asked for more token pairs than
// Config.TokenRate allows; nothing was issued.
type TokenRateError struct{ RetryAfter time.Duration }

func (e *TokenRateError) Error() string {
	return fmt.Sprintf("ingest: token issuing limit of the application reached; retry in %s", e.RetryAfter)
}

// admitToken is the apps.Admit of the token routes: one token pair per
// call, within the application's issuing rate.
func (s *Service) admitToken(appID string) error {
	if wait := s.tokenLimits.take(appID, 1, time.Now()); wait > 0 {
		return &TokenRateError{RetryAfter: wait}
	}
	return nil
}

// QuotaError means a batch's records exceed what is left of its tenant's
// records quota (Config.TenantRate); nothing was accepted. It is transient:
// the same request succeeds once the quota has refilled.
type QuotaError struct{ RetryAfter time.Duration }

func (e *QuotaError) Error() string {
	return fmt.Sprintf("ingest: records quota of the tenant exceeded; retry in %s", e.RetryAfter)
}

// Unwrap makes a QuotaError transient to retry.Transient.
func (e *QuotaError) Unwrap() error { return retry.ErrTransient }

// takeQuota charges a batch of n records to the tenant's quota. It returns
// a function giving the records back (for a batch that was not accepted
// after all), or a *QuotaError. Without a quota it charges nothing.
func (s *Service) takeQuota(tenantID int64, n int) (refund func(), err error) {
	if s.quota == nil {
		return func() {}, nil
	}
	if wait := s.quota.take(tenantID, n, time.Now()); wait > 0 {
		return nil, &QuotaError{RetryAfter: wait}
	}
	return func() { s.quota.give(tenantID, n) }, nil
}

// waitQuota sleeps until the quota of a QuotaError has refilled or ctx is
// done: the requests topic waits instead of refusing (its back-pressure is
// the topic's lag).
func waitQuota(ctx context.Context, e *QuotaError) {
	t := time.NewTimer(e.RetryAfter)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
