package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
)

// event is any message of the events topic.
type event struct {
	Type           string `json:"type"`
	BatchID        int64  `json:"batchId"`
	Code           string `json:"code"`
	ErrorCode      string `json:"errorCode"`
	Msg            string `json:"msg"`
	RequestKey     string `json:"requestKey"`
	IdempotencyKey string `json:"idempotencyKey"`
	Status         string `json:"status"`
	Total          int    `json:"total"`
	Success        int    `json:"success"`
	Processed      int    `json:"processed"`
}

// kcat runs Debian's kcat (a librdkafka client) against the system's broker.
func (s *system) kcat(stdin string, args ...string) string {
	s.t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		s.t.Fatal("kcat is not installed (make deps installs it): ", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, append([]string{"-b", s.opts.brokers}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		s.t.Fatalf("kcat %v: %v\n%s", args, err, errOut.String())
	}
	return out.String()
}

// waitEvents reads the events topic with kcat until match has found what it
// needs; match sees every event read so far.
func (s *system) waitEvents(within time.Duration, match func([]event) bool) []event {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		out := s.kcat("", "-C", "-t", s.topic("events"), "-e", "-q", "-f", "%s\n")
		var evs []event
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			if line == "" {
				continue
			}
			var e event
			if err := json.Unmarshal([]byte(line), &e); err != nil {
				s.t.Fatalf("event is not JSON: %q", line)
			}
			evs = append(evs, e)
		}
		if match(evs) {
			return evs
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("events never matched within %s; read %+v", within, evs)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A feed publishes requests with kcat and learns their fate from events.
func TestFeedWithKcat(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("feed", apps.ScopeGroup)
	s.loadDirectory("feed", testDirectory)
	body := `{"publicParams":{"isMatching":true,"matchingType":1,"optType":"add"},"data":[{"identityType":"id","thirdId":"crm-1","groups":"kcat"},{"identityType":"phone","phone":"13800000009","groups":"kcat"}]}`
	// -K: splits key from value at the first tab; -H: headers.
	s.kcat("order-1\t"+body+"\n", "-P", "-t", s.topic("requests"), "-K", "\t", "-H", "x-token="+token, "-H", "idempotency-key=feed-42")
	s.kcat("order-2\t"+body+"\n", "-P", "-t", s.topic("requests"), "-K", "\t", "-H", "x-token=forged")
	s.kcat("order-3\t{\"publicParams\":{}}\n", "-P", "-t", s.topic("requests"), "-K", "\t", "-H", "x-token="+token)

	var accepted event
	evs := s.waitEvents(30*time.Second, func(evs []event) bool {
		var finished bool
		for _, e := range evs {
			if e.Type == "request.accepted" && e.RequestKey == "order-1" {
				accepted = e
			}
			if e.Type == "batch.finished" && accepted.BatchID != 0 && e.BatchID == accepted.BatchID {
				finished = true
			}
		}
		return finished && len(evs) >= 4
	})
	if accepted.IdempotencyKey != "feed-42" {
		t.Errorf("accepted event %+v, want idempotency key feed-42", accepted)
	}
	var rejectedToken, rejectedBody bool
	for _, e := range evs {
		switch {
		case e.Type == "request.rejected" && e.RequestKey == "order-2":
			rejectedToken = e.Code == "100200" && e.ErrorCode == "TOKEN_INVALID" && e.BatchID == 0
		case e.Type == "request.rejected" && e.RequestKey == "order-3":
			rejectedBody = e.Code == "400" && e.ErrorCode == "INVALID_PARAMETER" && strings.HasPrefix(e.Msg, "publicParams.")
		case e.Type == "batch.finished" && e.BatchID == accepted.BatchID:
			if e.Status != "PARTIAL_SUCCESS" || e.Total != 2 || e.Processed != 2 || e.Success != 1 {
				t.Errorf("batch.finished %+v", e)
			}
		}
	}
	if !rejectedToken || !rejectedBody {
		t.Errorf("rejections missing or wrong (token %v, body %v): %+v", rejectedToken, rejectedBody, evs)
	}
	// The rejected requests made no batch: only one exists.
	var batches int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM batches`).Scan(&batches); err != nil || batches != 1 {
		t.Fatalf("%d batches, want 1 (%v)", batches, err)
	}
	res := s.waitFinal(token, accepted.BatchID, 10*time.Second)
	if res.Success != 1 || res.Ambiguous != 1 {
		t.Errorf("batchResult %+v", res)
	}
	// Exactly one batch.finished per batch.
	n := 0
	for _, e := range s.waitEvents(time.Second, func([]event) bool { return true }) {
		if e.Type == "batch.finished" && e.BatchID == accepted.BatchID {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d batch.finished events for batch %d, want 1", n, accepted.BatchID)
	}
}

// A request read twice (its offset rewound, as after a crash before the
// commit) makes one batch: its default idempotency key is its
// topic/partition/offset.
func TestFeedRedelivery(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	brokers := r.c.brokers
	ctx := context.Background()
	body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"r-1","groups":"redelivered"}]}`
	w := &kafka.Writer{Addr: kafka.TCP(brokers), Topic: r.c.topic("requests"), RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	msg := kafka.Message{Key: []byte("once"), Value: []byte(body), Headers: []kafka.Header{{Key: "x-token", Value: []byte(r.token)}}}
	if err := w.WriteMessages(ctx, msg); err != nil {
		t.Fatal(err)
	}
	accepted := func(n int) []event {
		var out []event
		deadline := time.Now().Add(30 * time.Second)
		for len(out) < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d request.accepted events, want %d", len(out), n)
			}
			time.Sleep(200 * time.Millisecond)
			out = out[:0]
			for _, m := range readTopic(t, []string{brokers}, r.c.topic("events")) {
				var e event
				if json.Unmarshal(m.Value, &e) == nil && e.Type == "request.accepted" {
					out = append(out, e)
				}
			}
		}
		return out
	}
	first := accepted(1)[0]
	var part int
	var off int64
	if _, err := fmt.Sscanf(strings.TrimPrefix(first.IdempotencyKey, r.c.topic("requests")), "/%d/%d", &part, &off); err != nil {
		t.Fatalf("default idempotency key %q is not topic/partition/offset", first.IdempotencyKey)
	}
	// Stop ingest, rewind its group to the request, start it again.
	r.c.ingest.stop()
	r.waitGroupEmpty(stageIngest)
	client := &kafka.Client{Addr: kafka.TCP(brokers)}
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: r.c.group(stageIngest), GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{r.c.topic("requests"): {{Partition: part, Offset: off}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, ps := range resp.Topics {
		for _, p := range ps {
			if p.Error != nil {
				t.Fatalf("rewind: %v", p.Error)
			}
		}
	}
	r.c.ingest = r.c.start(t, "ingest")
	r.c.ingest.waitFor(httpAddrRE, 30*time.Second)
	second := accepted(2)[1]
	if second.BatchID != first.BatchID || second.IdempotencyKey != first.IdempotencyKey {
		t.Fatalf("re-read request became batch %d (key %s), want %d", second.BatchID, second.IdempotencyKey, first.BatchID)
	}
	var batches int
	if err := r.db.QueryRow(ctx, `SELECT count(*) FROM batches`).Scan(&batches); err != nil || batches != 1 {
		t.Fatalf("%d batches, want 1 (%v)", batches, err)
	}
}

// Concurrent identical requests with one Idempotency-Key make one batch; the
// key with another body is a conflict.
func TestIdempotencyKeyHTTP(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("idem", apps.ScopeGroup)
	body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"i-1","groups":"once"}]}`
	ids := make([]int64, 8)
	var wg sync.WaitGroup
	for i := range ids {
		wg.Go(func() {
			req, _ := http.NewRequest(http.MethodPost, s.base+"/api/integrate/audience/group/rel/batchAdd", strings.NewReader(body))
			req.Header.Set("X-Token", token)
			req.Header.Set("Idempotency-Key", "key-1")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			defer resp.Body.Close()
			var env struct{ Data int64 }
			_ = json.NewDecoder(resp.Body).Decode(&env)
			if resp.StatusCode != http.StatusOK {
				t.Errorf("HTTP %d", resp.StatusCode)
			}
			ids[i] = env.Data
		})
	}
	wg.Wait()
	for _, id := range ids {
		if id != ids[0] || id == 0 {
			t.Fatalf("concurrent requests with one key got batches %v", ids)
		}
	}
	res := s.waitFinal(token, ids[0], 10*time.Second)
	if res.Total != 1 || res.Success != 1 {
		t.Fatalf("result %+v", res)
	}
	var batches int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM batches`).Scan(&batches); err != nil || batches != 1 {
		t.Fatalf("%d batches, want 1 (%v)", batches, err)
	}
	var env envelope
	req := func(key, body string, want int) {
		r, _ := http.NewRequest(http.MethodPost, s.base+"/api/integrate/audience/group/rel/batchAdd", strings.NewReader(body))
		r.Header.Set("X-Token", token)
		r.Header.Set("Idempotency-Key", key)
		resp, err := http.DefaultClient.Do(r)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&env)
		if resp.StatusCode != want {
			t.Fatalf("key %q: HTTP %d %+v, want %d", key, resp.StatusCode, env, want)
		}
	}
	req("key-1", strings.Replace(body, "once", "twice", 1), http.StatusConflict)
	if env.Code != "409" || env.ErrorCode != "IDEMPOTENCY_CONFLICT" {
		t.Errorf("conflict answer %+v", env)
	}
	req(strings.Repeat("k", 65), body, http.StatusBadRequest)
	// Another tenant may use the same key.
	_, token = s.app("idem-2", apps.ScopeGroup)
	req("key-1", body, http.StatusOK)
	// An expired key names nothing any more.
	if _, err := s.pool.Exec(context.Background(), `UPDATE batches SET accepted_at = $1 WHERE accepted_at IS NOT NULL`,
		time.Now().Add(-25*time.Hour)); err != nil { // a parameter, not now()-like arithmetic: Citus refuses STABLE functions of columns in UPDATE
		t.Fatal(err)
	}
	req("key-1", strings.Replace(body, "once", "later", 1), http.StatusOK)
}
