package ingest

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/apps"
)

// brokenAuth fails every check with err.
type brokenAuth struct{ err error }

func (b brokenAuth) Authenticate(context.Context, string) (apps.Principal, error) {
	return apps.Principal{}, b.err
}

func (b brokenAuth) IssueTokenIf(context.Context, string, string, apps.Admit) (apps.Tokens, error) {
	return apps.Tokens{}, b.err
}

func (b brokenAuth) RefreshIf(context.Context, string, apps.Admit) (apps.Tokens, error) {
	return apps.Tokens{}, b.err
}

// An identity value quoted by a failure (a PostgreSQL message or detail,
// an encode error) never reaches ingest's log lines: they carry what
// redact.Error leaves of the error.
func TestLogsCarryNoIdentityValue(t *testing.T) {
	const secret = "13800138000"
	for _, err := range []error{
		fmt.Errorf("apps: authenticate: %w", &pgconn.PgError{Code: "22P02",
			Message: `invalid input syntax for type bigint: "` + secret + `"`, Detail: secret}),
		fmt.Errorf("apps: authenticate: %w", fmt.Errorf("unable to encode %q into binary format", secret)),
	} {
		var buf bytes.Buffer
		svc, nerr := New(Config{Brokers: []string{"127.0.0.1:1"}, Logger: slog.New(slog.NewJSONHandler(&buf, nil))},
			nil, brokenAuth{err}, NewMetrics(prometheus.NewRegistry()))
		if nerr != nil {
			t.Fatal(nerr)
		}
		h := svc.Handler()
		rec, _ := post(t, h, "any", []byte(validBody))
		if rec.Code != http.StatusServiceUnavailable {
			t.Errorf("HTTP %d, want 503", rec.Code)
		}
		req, _ := http.NewRequest(http.MethodGet, "/api/open/app/getOrgAccessToken?instanceAppid=a&instanceSecrect=s", nil)
		h.ServeHTTP(discard{}, req)
		svc.Close()
		logs := buf.String()
		if strings.Contains(logs, secret) || !strings.Contains(logs, `"msg":"authenticate"`) || !strings.Contains(logs, `"msg":"token"`) {
			t.Errorf("logs:\n%s", logs)
		}
	}
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{}

func (discard) Header() http.Header         { return http.Header{} }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}
