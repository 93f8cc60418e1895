package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/apps"
)

// fakeAuth knows one token per principal.
type fakeAuth map[string]apps.Principal

func (f fakeAuth) Authenticate(_ context.Context, token string) (apps.Principal, error) {
	p, ok := f[token]
	if !ok {
		return apps.Principal{}, apps.ErrTokenInvalid
	}
	return p, nil
}

func (f fakeAuth) IssueTokenIf(context.Context, string, string, apps.Admit) (apps.Tokens, error) {
	return apps.Tokens{}, apps.ErrBadCredentials
}

func (f fakeAuth) RefreshIf(context.Context, string, apps.Admit) (apps.Tokens, error) {
	return apps.Tokens{}, apps.ErrTokenInvalid
}

func newTestService(t *testing.T, cfg Config) *Service {
	t.Helper()
	cfg.Brokers = []string{"127.0.0.1:1"} // never dialled by these tests
	svc, err := New(cfg, nil, fakeAuth{
		"good":    {TenantID: 1, AppID: "a1", Scopes: []string{apps.ScopeGroup}},
		"tagonly": {TenantID: 1, AppID: "a2", Scopes: []string{"audience.tag"}},
	}, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return svc
}

func post(t *testing.T, h http.Handler, token string, body []byte) (*httptest.ResponseRecorder, envelope) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/api/open/audience/group/rel/batchAdd", bytes.NewReader(body))
	if token != "" {
		req.Header.Set("X-Token", token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	var env envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("answer is not the envelope: %q", rec.Body.String())
	}
	if env.Data != nil && rec.Code != http.StatusOK {
		t.Errorf("error answer carries data %v", env.Data)
	}
	if env.Code != "100200" && env.Code != strconv.Itoa(rec.Code) {
		t.Errorf("body code %s disagrees with HTTP %d", env.Code, rec.Code)
	}
	return rec, env
}

const validBody = `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"1","groups":"g"}]}`

func TestAuthAnswers(t *testing.T) {
	h := newTestService(t, Config{}).Handler()
	cases := []struct {
		token     string
		status    int
		code      string
		errorCode string
	}{
		{"", http.StatusUnauthorized, "100200", "TOKEN_INVALID"},
		{"forged", http.StatusUnauthorized, "100200", "TOKEN_INVALID"},
		{"tagonly", http.StatusForbidden, "403", "PERMISSION_DENIED"},
	}
	for _, c := range cases {
		rec, env := post(t, h, c.token, []byte(validBody))
		if rec.Code != c.status || env.Code != c.code || env.ErrorCode != c.errorCode {
			t.Errorf("token %q: HTTP %d %+v, want %d %s %s", c.token, rec.Code, env, c.status, c.code, c.errorCode)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	h := newTestService(t, Config{}).Handler()
	// Exactly 1 MiB passes the size check (and fails validation: it is not
	// JSON); one byte more is 413.
	rec, env := post(t, h, "good", bytes.Repeat([]byte(" "), MaxBodyBytes))
	if rec.Code != http.StatusBadRequest || env.ErrorCode != "INVALID_PARAMETER" {
		t.Errorf("1 MiB body: HTTP %d %+v, want 400", rec.Code, env)
	}
	rec, env = post(t, h, "good", bytes.Repeat([]byte(" "), MaxBodyBytes+1))
	if rec.Code != http.StatusRequestEntityTooLarge || env.Code != "413" || env.ErrorCode != "PAYLOAD_TOO_LARGE" {
		t.Errorf("1 MiB + 1 byte: HTTP %d %+v, want 413", rec.Code, env)
	}
	rec, env = post(t, h, "good", []byte(`{"publicParams":{"isMatching":true,"matchingType":2,"optType":"add"},"data":[{}]}`))
	if rec.Code != http.StatusBadRequest || env.Msg != "publicParams.identifyWay is required when matchingType=2" {
		t.Errorf("invalid params: HTTP %d %+v", rec.Code, env)
	}
	data := strings.Repeat(`{"thirdId":"1","groups":"g"},`, 501)
	rec, env = post(t, h, "good", []byte(`{"publicParams":{"isMatching":false,"optType":"add"},"data":[`+data[:len(data)-1]+`]}`))
	if rec.Code != http.StatusBadRequest || env.Msg != "data must hold 1 to 500 records, got 501" {
		t.Errorf("501 records: HTTP %d %+v", rec.Code, env)
	}
}

func TestRateLimit(t *testing.T) {
	h := newTestService(t, Config{RateLimit: 1, RateBurst: 2}).Handler()
	tooMany := 0
	for range 3 {
		// A bad body is enough: the limit is checked before the body.
		rec, env := post(t, h, "good", []byte(`{}`))
		if rec.Code == http.StatusTooManyRequests {
			tooMany++
			if env.ErrorCode != "RATE_LIMITED" || rec.Header().Get("Retry-After") != "1" {
				t.Errorf("429 answer %+v, Retry-After %q", env, rec.Header().Get("Retry-After"))
			}
		}
	}
	if tooMany != 1 {
		t.Fatalf("%d of 3 requests limited at 1/s burst 2, want 1", tooMany)
	}
}

func TestDrainingAndOverloadAnswer503(t *testing.T) {
	svc := newTestService(t, Config{MaxInFlight: 1})
	h := svc.Handler()
	svc.inFlight <- struct{}{} // one request is being served
	rec, env := post(t, h, "good", []byte(validBody))
	if rec.Code != http.StatusServiceUnavailable || env.ErrorCode != "UNAVAILABLE" {
		t.Errorf("overloaded: HTTP %d %+v, want 503", rec.Code, env)
	}
	<-svc.inFlight
	if err := svc.Ready(); err != nil {
		t.Fatalf("not ready before draining: %v", err)
	}
	svc.Drain()
	if svc.Ready() == nil {
		t.Error("still ready while draining")
	}
	rec, env = post(t, h, "good", []byte(validBody))
	if rec.Code != http.StatusServiceUnavailable || env.ErrorCode != "UNAVAILABLE" {
		t.Errorf("draining: HTTP %d %+v, want 503", rec.Code, env)
	}
}

// The in-flight limit is exported, so the dashboard can plot the requests
// in flight against it: the configured value, or the default.
func TestInFlightLimitMetric(t *testing.T) {
	for cfg, want := range map[int]float64{1: 1, 40: 40, 0: 256} {
		svc := newTestService(t, Config{MaxInFlight: cfg})
		if got := testutil.ToFloat64(svc.metrics.InFlightLimit); got != want {
			t.Errorf("MaxInFlight %d: groupmatch_http_requests_in_flight_limit %v, want %v", cfg, got, want)
		}
	}
}

func TestCheckVersion(t *testing.T) {
	for body, refused := range map[string]bool{
		`{"publicParams":{},"data":[]}`:         false,
		`{"v":1,"publicParams":{},"data":[]}`:   false,
		`{"v":2,"publicParams":{},"data":[]}`:   true,
		`{"v":"1","publicParams":{},"data":[]}`: true,
		`{"data":[{"groups":"\"v\""}]}`:         false,
		`not json but "v"`:                      false, // DecodeRequest answers it
	} {
		if got := checkVersion([]byte(body)) != nil; got != refused {
			t.Errorf("checkVersion(%s) refused %v, want %v", body, got, refused)
		}
	}
}
