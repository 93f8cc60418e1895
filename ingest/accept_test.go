package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// rig is a Service on a fresh database and an in-process broker.
type rig struct {
	svc     *Service
	store   *Store
	db      *pgxpool.Pool
	brokers []string
	auth    *switchAuth
}

// switchAuth is fakeAuth whose token "flaky" fails transiently while down
// is set, and whose token "boom" panics.
type switchAuth struct {
	fakeAuth
	down chan struct{} // closed when "flaky" works again
}

func (a *switchAuth) Authenticate(ctx context.Context, token string) (apps.Principal, error) {
	switch token {
	case "flaky":
		select {
		case <-a.down:
			return a.fakeAuth["good"], nil
		default:
			return apps.Principal{}, fmt.Errorf("apps: authenticate: %w", &pgconn.PgError{Code: "57P03"})
		}
	case "boom":
		var m map[string]int
		m[token]++
	}
	return a.fakeAuth.Authenticate(ctx, token)
}

func newRig(t *testing.T, partitions int) *rig {
	t.Helper()
	db, _ := schematest.NewPool(t)
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: partitions})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	topics := pipeline.DefaultTopics()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var specs []stream.TopicSpec
	for _, name := range []string{topics.Requests, topics.Records, topics.Events} {
		specs = append(specs, stream.TopicSpec{Name: name, Partitions: partitions})
	}
	if err := stream.CreateTopics(ctx, brokers, nil, specs); err != nil {
		t.Fatal(err)
	}
	auth := &switchAuth{fakeAuth: fakeAuth{"good": {TenantID: 1, AppID: "a1", Scopes: []string{apps.ScopeGroup}}}, down: make(chan struct{})}
	store := NewStore(db)
	svc, err := New(Config{Brokers: brokers}, store, auth, NewMetrics(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close() })
	return &rig{svc: svc, store: store, db: db, brokers: brokers, auth: auth}
}

func (r *rig) post(t *testing.T, key, body string) (int, envelope) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", strings.NewReader(body))
	req.Header.Set("X-Token", "good")
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	rec := httptest.NewRecorder()
	r.svc.Handler().ServeHTTP(rec, req)
	var env envelope
	if err := json.Unmarshal(rec.Body.Bytes(), &env); err != nil {
		t.Fatalf("answer is not the envelope: %q", rec.Body.String())
	}
	return rec.Code, env
}

func (r *rig) batch(t *testing.T, id int64) (status string, aborted bool) {
	t.Helper()
	err := r.db.QueryRow(context.Background(), `SELECT status, aborted FROM batches WHERE batch_id = $1`, id).Scan(&status, &aborted)
	if err != nil {
		t.Fatal(err)
	}
	return status, aborted
}

// An acceptance whose UPDATE committed but reported a failure (the
// connection was lost after COMMIT) is answered with the batch id; one that
// did not commit is aborted and answered 503.
func TestAcceptAmbiguousFailure(t *testing.T) {
	r := newRig(t, 1)
	lost := fmt.Errorf("ingest: accept batch: %w", io.ErrUnexpectedEOF)
	r.store.afterAccept = func(int64) error { return lost }
	code, env := r.post(t, "", validBody)
	if code != http.StatusOK || env.Code != "200" {
		t.Fatalf("committed acceptance reported lost: HTTP %d %+v, want 200 and the batch id", code, env)
	}
	id := int64(env.Data.(float64))
	if status, aborted := r.batch(t, id); status != "PROCESSING" || aborted {
		t.Errorf("batch %d is %s (aborted %v), want PROCESSING", id, status, aborted)
	}

	// Now the UPDATE "did not commit": the hook puts the batch back.
	r.store.afterAccept = func(id int64) error {
		if _, err := r.db.Exec(context.Background(), `UPDATE batches SET status = 'PENDING' WHERE batch_id = $1`, id); err != nil {
			t.Error(err)
		}
		return lost
	}
	code, env = r.post(t, "", validBody)
	if code != http.StatusServiceUnavailable || env.Code != "503" || env.Data != nil {
		t.Fatalf("lost acceptance: HTTP %d %+v, want 503", code, env)
	}
	var last int64
	if err := r.db.QueryRow(context.Background(), `SELECT max(batch_id) FROM batches`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	if status, aborted := r.batch(t, last); status != "FAILED" || !aborted {
		t.Errorf("batch %d is %s (aborted %v) after a 503, want FAILED and aborted", last, status, aborted)
	}
}

// A failure no retry can mend is a 4xx, and nothing is accepted: here an
// Idempotency-Key PostgreSQL refuses as invalid UTF-8 (SQLSTATE 22021).
func TestPermanentFailureIs4xx(t *testing.T) {
	r := newRig(t, 1)
	key := "k\xff\xfe-secret"
	code, env := r.post(t, key, validBody)
	if code != http.StatusBadRequest || env.Code != "400" || env.ErrorCode != "INVALID_PARAMETER" {
		t.Fatalf("HTTP %d %+v, want 400 INVALID_PARAMETER", code, env)
	}
	t.Logf("answer: %+v", env)
	if strings.Contains(env.Msg, "secret") || strings.Contains(env.Msg, "\xff") {
		t.Errorf("message %q quotes the value", env.Msg)
	}
	var n int
	if err := r.db.QueryRow(context.Background(), `SELECT count(*) FROM batches WHERE status <> 'FAILED'`).Scan(&n); err != nil || n != 0 {
		t.Errorf("%d batches not failed after a 400 (%v), want 0", n, err)
	}
}

func TestPermanentRefusal(t *testing.T) {
	cases := []struct {
		name   string
		err    error
		status int
		code   string
	}{
		{"invalid UTF-8", fmt.Errorf("ingest: find key: %w", &pgconn.PgError{Code: "22021", Message: "invalid byte 0xff"}), 400, "INVALID_PARAMETER"},
		{"index row too large", &pgconn.PgError{Code: "54000"}, 400, "INVALID_PARAMETER"},
		{"kafka refuses size", fmt.Errorf("write: %w", kafka.WriteErrors{nil, kafka.MessageSizeTooLarge}), 413, "PAYLOAD_TOO_LARGE"},
		{"kafka-go refuses size", kafka.MessageTooLargeError{}, 413, "PAYLOAD_TOO_LARGE"},
		{"privilege", &pgconn.PgError{Code: "42501"}, 422, "UNPROCESSABLE"},
		{"panic", &retry.PanicError{Value: "x"}, 422, "UNPROCESSABLE"},
		{"unknown", errors.New("boom"), 422, "UNPROCESSABLE"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if retry.Transient(c.err) {
				t.Fatal("case is transient")
			}
			r := permanentRefusal(c.err)
			if r.Status != c.status || r.Code != fmt.Sprint(c.status) || r.ErrorCode != c.code {
				t.Errorf("refusal %+v, want %d %s", r, c.status, c.code)
			}
			if strings.Contains(r.Msg, "0xff") {
				t.Errorf("message %q quotes PostgreSQL's message", r.Msg)
			}
		})
	}
}

// A panic while a batch is being accepted aborts the batch before the panic
// goes on: no answer leaves a batch pending.
func TestAcceptPanicAborts(t *testing.T) {
	r := newRig(t, 1)
	r.store.afterAccept = func(id int64) error {
		if _, err := r.db.Exec(context.Background(), `UPDATE batches SET status = 'PENDING' WHERE batch_id = $1`, id); err != nil {
			t.Error(err)
		}
		panic("a bug")
	}
	req, err := DecodeRequest([]byte(validBody))
	if err != nil {
		t.Fatal(err)
	}
	err = retry.Catch(func() error {
		_, err := r.svc.Accept(context.Background(), r.auth.fakeAuth["good"], req, "")
		return err
	})
	var panicErr *retry.PanicError
	if !errors.As(err, &panicErr) {
		t.Fatalf("Accept = %v, want the panic to go on", err)
	}
	var id int64
	if err := r.db.QueryRow(context.Background(), `SELECT max(batch_id) FROM batches`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	if status, aborted := r.batch(t, id); status != "FAILED" || !aborted {
		t.Errorf("batch %d is %s (aborted %v) after a panic, want FAILED and aborted", id, status, aborted)
	}
}
