package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/apps"
)

// slowAuth is an Auth whose every check costs a database round trip on a
// pool of a few connections, as apps.Store's does, and counts the checks.
type slowAuth struct {
	pool   chan struct{} // connections
	cost   time.Duration
	checks atomic.Int64 // Authenticate calls
	issued atomic.Int64 // token pairs issued
}

func newSlowAuth(conns int, cost time.Duration) *slowAuth {
	return &slowAuth{pool: make(chan struct{}, conns), cost: cost}
}

func (a *slowAuth) query(ctx context.Context) error {
	select {
	case a.pool <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	time.Sleep(a.cost)
	<-a.pool
	return nil
}

func (a *slowAuth) Authenticate(ctx context.Context, token string) (apps.Principal, error) {
	a.checks.Add(1)
	if err := a.query(ctx); err != nil {
		return apps.Principal{}, err
	}
	if token != "good" {
		return apps.Principal{}, apps.ErrTokenInvalid
	}
	return apps.Principal{TenantID: 1, AppID: "a1", Scopes: []string{apps.ScopeGroup}}, nil
}

func (a *slowAuth) IssueTokenIf(ctx context.Context, appID, secret string, admit apps.Admit) (apps.Tokens, error) {
	if err := a.query(ctx); err != nil {
		return apps.Tokens{}, err
	}
	if appID != "a1" || secret != "s1" {
		return apps.Tokens{}, apps.ErrBadCredentials
	}
	if err := admit(appID); err != nil {
		return apps.Tokens{}, err
	}
	a.issued.Add(1)
	return apps.Tokens{Access: "good", Refresh: "r", Expire: 7200}, nil
}

func (a *slowAuth) RefreshIf(ctx context.Context, token string, admit apps.Admit) (apps.Tokens, error) {
	if token != "r" {
		return apps.Tokens{}, apps.ErrTokenInvalid
	}
	if err := admit("a1"); err != nil {
		return apps.Tokens{}, err
	}
	a.issued.Add(1)
	return apps.Tokens{Access: "good", Refresh: "r", Expire: 7200}, nil
}

func newLimitService(t *testing.T, cfg Config, auth Auth) *Service {
	t.Helper()
	cfg.Brokers = []string{"127.0.0.1:1"} // never dialled by these tests
	svc, err := New(cfg, nil, auth, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

// call serves one request from the client address and returns the status,
// the envelope's errorCode and Retry-After.
func call(t *testing.T, h http.Handler, method, target, from, token string) (int, string, string) {
	t.Helper()
	req := httptest.NewRequest(method, target, strings.NewReader(`{}`))
	req.RemoteAddr = from
	if token != "" {
		req.Header.Set("X-Token", token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var env envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("%s %s: answer is not the envelope: %q", method, target, rec.Body.String())
	}
	return rec.Code, env.ErrorCode, rec.Header().Get("Retry-After")
}

const batchAddPath = "/api/open/audience/group/rel/batchAdd"

// Failed token checks are limited per client address: beyond the burst the
// address is answered 429 without a check, whatever token it sends; other
// addresses are not affected; an IPv6 /64 is one client.
func TestAuthFailuresLimitedPerAddress(t *testing.T) {
	auth := newSlowAuth(4, 0)
	svc := newLimitService(t, Config{AuthFailRate: 1, AuthFailBurst: 3}, auth)
	h := svc.Handler()
	for i, token := range []string{"forged", "", "forged"} {
		if code, ec, _ := call(t, h, "POST", batchAddPath, "192.0.2.1:1000", token); code != http.StatusUnauthorized || ec != "TOKEN_INVALID" {
			t.Fatalf("failure %d: HTTP %d %s, want 401", i, code, ec)
		}
	}
	checks := auth.checks.Load()
	for _, token := range []string{"forged", "good"} {
		code, ec, retry := call(t, h, "POST", batchAddPath, "192.0.2.1:1001", token)
		if code != http.StatusTooManyRequests || ec != "RATE_LIMITED" || retry != "1" {
			t.Errorf("over budget with token %q: HTTP %d %s Retry-After %q, want 429 RATE_LIMITED 1", token, code, ec, retry)
		}
	}
	if n := auth.checks.Load() - checks; n != 0 {
		t.Errorf("%d tokens checked for a client over its budget, want none", n)
	}
	// Another address is served (400: the body is bad, so auth passed).
	if code, _, _ := call(t, h, "POST", batchAddPath, "192.0.2.2:1000", "good"); code != http.StatusBadRequest {
		t.Errorf("other address: HTTP %d, want 400 past authentication", code)
	}
	// A permission refusal (403) is not an authentication failure.
	// The budget refills at AuthFailRate.
	time.Sleep(1100 * time.Millisecond)
	if code, _, _ := call(t, h, "POST", batchAddPath, "192.0.2.1:1000", "good"); code != http.StatusBadRequest {
		t.Errorf("after a second: HTTP %d, want 400 past authentication", code)
	}
	// IPv6: one budget per /64.
	for i := range 3 {
		call(t, h, "GET", "/api/open/audience/group/list", fmt.Sprintf("[2001:db8:1:2::%x]:443", i+1), "forged")
	}
	if code, _, _ := call(t, h, "GET", "/api/open/audience/group/list", "[2001:db8:1:2:ffff::9]:443", "forged"); code != http.StatusTooManyRequests {
		t.Errorf("same /64: HTTP %d, want 429", code)
	}
	if code, _, _ := call(t, h, "GET", "/api/open/audience/group/list", "[2001:db8:1:3::1]:443", "forged"); code != http.StatusUnauthorized {
		t.Errorf("next /64: HTTP %d, want 401", code)
	}
}

// Bad credentials on the token routes spend the address's failure budget;
// good ones are limited per application (TokenRate a minute), and failed
// attempts cannot use up an application's budget.
func TestTokenRoutesLimits(t *testing.T) {
	auth := newSlowAuth(4, 0)
	svc := newLimitService(t, Config{AuthFailRate: 1, AuthFailBurst: 5, TokenRate: 2}, auth)
	h := svc.Handler()
	get := func(from, appid, secret string) (int, string, string) {
		return call(t, h, "GET", "/api/open/app/getOrgAccessToken?instanceAppid="+appid+"&instanceSecrect="+secret, from, "")
	}
	for range 3 { // wrong secrets from an attacker: 401, the application's budget untouched
		if code, ec, _ := get("198.51.100.7:1", "a1", "guess"); code != http.StatusUnauthorized || ec != "APP_CREDENTIALS_INVALID" {
			t.Fatalf("wrong secret: HTTP %d %s", code, ec)
		}
	}
	for i := range 2 {
		if code, _, _ := get("192.0.2.1:1", "a1", "s1"); code != http.StatusOK {
			t.Fatalf("token %d: HTTP %d, want 200", i, code)
		}
	}
	code, ec, retry := get("192.0.2.1:1", "a1", "s1")
	if code != http.StatusTooManyRequests || ec != "RATE_LIMITED" || retry != "30" {
		t.Errorf("third token in a minute: HTTP %d %s Retry-After %q, want 429 RATE_LIMITED 30", code, ec, retry)
	}
	code, ec, _ = call(t, h, "GET", "/api/open/app/refreshOrgAccessToken?orgRefreshToken=r", "192.0.2.1:1", "")
	if code != http.StatusTooManyRequests || ec != "RATE_LIMITED" {
		t.Errorf("refresh over the limit: HTTP %d %s, want 429", code, ec)
	}
	if n := auth.issued.Load(); n != 2 {
		t.Errorf("%d token pairs issued, want 2", n)
	}
	// Two more failures (refresh, then getOrgAccessToken) empty the
	// attacker's budget of 5; then it is refused before any check.
	call(t, h, "GET", "/api/open/app/refreshOrgAccessToken?orgRefreshToken=stolen", "198.51.100.7:2", "")
	get("198.51.100.7:1", "a1", "guess")
	if code, _, _ := get("198.51.100.7:1", "a1", "s1"); code != http.StatusTooManyRequests {
		t.Errorf("address over its failure budget: HTTP %d, want 429", code)
	}
}

// The address table never grows past its capacity, however many addresses
// fail, and a full table still limits the addresses it holds.
func TestFailureLimiterBounded(t *testing.T) {
	l := newFailureLimiter(1, 2, 256)
	now := time.Now()
	for i := range 100_000 {
		a := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		l.fail(a, now)
		l.fail(a, now)
	}
	if n := l.size(); n > 256 {
		t.Fatalf("table holds %d addresses, capacity 256", n)
	}
	last := netip.AddrFrom4([4]byte{10, 1, 134, 159}) // 99,999: the most recent, kept
	if _, blocked := l.blocked(last, now); !blocked {
		t.Error("the most recent failing address is not limited")
	}
	// Refilled entries are dropped when seen.
	if _, blocked := l.blocked(last, now.Add(10*time.Second)); blocked || l.size() > 255 {
		t.Errorf("refilled address still blocked or kept (size %d)", l.size())
	}
}

// During a flood of forged tokens from one address, valid requests from
// another keep their latency: after its burst the flood is answered 429
// without touching the (simulated) database, so the valid requests find
// free connections. The same flood against a limit too high to bite shows
// what the limit saves.
func TestForgedTokenFloodKeepsValidLatency(t *testing.T) {
	limited := floodLatency(t, Config{}) // defaults: 20/s, burst 100
	unlimited := floodLatency(t, Config{AuthFailRate: 1e9, AuthFailBurst: 1 << 30})
	if limited.checks > limited.budget {
		t.Errorf("the flood had %d tokens checked, want at most %d", limited.checks, limited.budget)
	}
	if limited.p50 > 15*time.Millisecond || limited.p95 > 40*time.Millisecond {
		t.Errorf("valid requests during the flood: median %s, p95 %s; want under 15 ms and 40 ms", limited.p50, limited.p95)
	}
	if unlimited.p50 < 2*limited.p50 {
		t.Errorf("without the limit the median is %s, with it %s: the test does not measure the limit", unlimited.p50, limited.p50)
	}
}

type floodResult struct {
	checks, budget int64
	p50, p95       time.Duration
}

// floodLatency runs 1.5 s of a forged-token flood (16 clients at one
// address) against a database of 2 connections costing 5 ms a query, and
// measures valid requests from another address meanwhile.
func floodLatency(t *testing.T, cfg Config) floodResult {
	auth := newSlowAuth(2, 5*time.Millisecond)
	svc := newLimitService(t, cfg, auth)
	ok := svc.authed(func(w http.ResponseWriter, _ *http.Request, _ apps.Principal) {
		writeJSON(w, http.StatusOK, envelope{Code: "200", ErrorCode: "SUCCESS", Msg: "ok"})
	})
	serve := func(from, token string) int {
		req := httptest.NewRequest("GET", "/x", nil)
		req.RemoteAddr = from
		req.Header.Set("X-Token", token)
		rec := httptest.NewRecorder()
		ok.ServeHTTP(rec, req)
		return rec.Code
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var flood, refused atomic.Int64
	start := time.Now()
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				if serve("203.0.113.66:4444", "forged") == http.StatusTooManyRequests {
					refused.Add(1)
				}
				flood.Add(1)
				time.Sleep(time.Millisecond) // a network's pace, not a CPU's
			}
		})
	}
	time.Sleep(300 * time.Millisecond) // the flood has spent its burst
	var lat []time.Duration
	for time.Since(start) < 1500*time.Millisecond {
		t0 := time.Now()
		if code := serve("192.0.2.10:5555", "good"); code != http.StatusOK {
			t.Fatalf("valid request during the flood: HTTP %d", code)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(2 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(lat)
	r := floodResult{
		checks: auth.checks.Load() - int64(len(lat)),
		// The burst, the refill, and the requests in flight when the
		// budget ran out.
		budget: int64(100 + 20*elapsed.Seconds() + 16 + 1),
		p50:    lat[len(lat)/2], p95: lat[len(lat)*95/100],
	}
	t.Logf("limit %v/s burst %d: flood %d requests in %s, %d answered 429, %d tokens checked; valid: %d requests, median %s, p95 %s, max %s",
		svc.cfg.AuthFailRate, svc.cfg.AuthFailBurst, flood.Load(), elapsed.Round(time.Millisecond), refused.Load(), r.checks, len(lat), r.p50, r.p95, lat[len(lat)-1])
	return r
}

// Without the quota nothing is charged; with it, a batch beyond the
// tenant's remaining quota is answered 429 RATE_LIMITED with Retry-After
// before anything is recorded, and other tenants are unaffected.
func TestTenantQuota(t *testing.T) {
	if refund, err := newLimitService(t, Config{}, newSlowAuth(1, 0)).takeQuota(1, 500); err != nil || refund == nil {
		t.Fatalf("no quota: %v", err)
	}
	svc := newLimitService(t, Config{TenantRate: 100}, newSlowAuth(1, 0))
	// The burst is max(rate, 500): one full batch fits, a second does not.
	if _, err := svc.takeQuota(1, 500); err != nil {
		t.Fatalf("a full batch within the burst: %v", err)
	}
	_, err := svc.takeQuota(1, 200)
	var q *QuotaError
	if !errors.As(err, &q) || q.RetryAfter < 1900*time.Millisecond || q.RetryAfter > 2*time.Second {
		t.Fatalf("over quota: %v, want a QuotaError of about 2 s", err)
	}
	if _, err := svc.takeQuota(2, 500); err != nil {
		t.Fatalf("another tenant: %v", err)
	}
	// Through the API (the store is never reached: the quota is checked
	// first). Tenant 1 is empty.
	body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"1","groups":"g"}]}`
	req := httptest.NewRequest("POST", batchAddPath, strings.NewReader(body))
	req.Header.Set("X-Token", "good")
	rec := httptest.NewRecorder()
	svc.Handler().ServeHTTP(rec, req)
	var env envelope
	_ = json.Unmarshal(rec.Body.Bytes(), &env)
	if rec.Code != http.StatusTooManyRequests || env.Code != "429" || env.ErrorCode != "RATE_LIMITED" || rec.Header().Get("Retry-After") != "1" || env.Data != nil {
		t.Errorf("batchAdd over quota: HTTP %d %+v Retry-After %q", rec.Code, env, rec.Header().Get("Retry-After"))
	}
	// A refund gives the records back (a batch that was not accepted).
	svc2 := newLimitService(t, Config{TenantRate: 1}, newSlowAuth(1, 0))
	refund, err := svc2.takeQuota(1, 500)
	if err != nil {
		t.Fatal(err)
	}
	refund()
	if _, err := svc2.takeQuota(1, 500); err != nil {
		t.Errorf("after a refund: %v", err)
	}
}

// The client address is the remote IP; X-Forwarded-For counts only when the
// remote IP is a trusted proxy, read from the right past trusted hops.
func TestClientAddr(t *testing.T) {
	none := newLimitService(t, Config{}, newSlowAuth(1, 0))
	proxied := newLimitService(t, Config{TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8")}}, newSlowAuth(1, 0))
	cases := []struct {
		svc    *Service
		remote string
		xff    []string
		want   string
	}{
		{none, "192.0.2.1:5000", nil, "192.0.2.1"},
		{none, "192.0.2.1:5000", []string{"198.51.100.9"}, "192.0.2.1"}, // untrusted: ignored
		{none, "[::ffff:192.0.2.1]:5000", nil, "192.0.2.1"},
		{none, "[2001:db8:1:2:3:4:5:6]:443", nil, "2001:db8:1:2::"},
		{none, "garbage", nil, "invalid IP"},
		{proxied, "10.1.1.1:80", []string{"198.51.100.9"}, "198.51.100.9"},
		{proxied, "10.1.1.1:80", []string{"203.0.113.5, 198.51.100.9, 10.2.2.2"}, "198.51.100.9"}, // a client-sent first entry is not believed
		{proxied, "10.1.1.1:80", []string{"203.0.113.5", "198.51.100.9"}, "198.51.100.9"},
		{proxied, "10.1.1.1:80", []string{"not-an-ip, 10.3.3.3"}, "10.3.3.3"},
		{proxied, "10.1.1.1:80", nil, "10.1.1.1"},
		{proxied, "192.0.2.1:5000", []string{"198.51.100.9"}, "192.0.2.1"}, // not from a proxy
		{proxied, "[fd00::1]:80", []string{"2001:db8:9:9::1"}, "2001:db8:9:9::"},
		{proxied, "10.1.1.1:80", []string{strings.Repeat("10.4.4.4,", 40) + "10.5.5.5"}, "10.4.4.4"}, // at most 16 hops
	}
	for _, c := range cases {
		req := httptest.NewRequest("GET", "/", nil)
		req.RemoteAddr = c.remote
		for _, v := range c.xff {
			req.Header.Add("X-Forwarded-For", v)
		}
		if got := c.svc.clientAddr(req).String(); got != c.want {
			t.Errorf("remote %s, X-Forwarded-For %q: %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}
