package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// metricAtLeast waits until the system's counter (summed over its label
// sets) reaches n.
func (s *system) metricAtLeast(name string, n float64, within time.Duration) {
	s.t.Helper()
	re := regexp.MustCompile(`(?m)^` + name + `(?:\{[^}]*\})? (\S+)$`)
	deadline := time.Now().Add(within)
	for {
		got := 0.0
		for _, m := range re.FindAllStringSubmatch(scrape(s.t, s.admin), -1) {
			var v float64
			fmt.Sscan(m[1], &v)
			got += v
		}
		if got >= n {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("%s is %v after %s, want at least %v", name, got, within, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newBatchRow records a batch as ingest would, in the given state, and
// returns its id.
func (s *system) newBatchRow(tenantID int64, appID, status string, aborted bool, total int) int64 {
	s.t.Helper()
	var id int64
	err := s.pool.QueryRow(context.Background(), `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, aborted, total)
		VALUES (nextval('batch_id_seq'), $1, $2, 'add', '{"isMatching":false,"optType":"add"}', $3, $4, $5)
		RETURNING batch_id`, tenantID, appID, status, aborted, total).Scan(&id)
	if err != nil {
		s.t.Fatal(err)
	}
	return id
}

// produceRecords writes isMatching=false records of a batch to the records
// topic, as ingest would, one per thirdId, from index 0.
func (s *system) produceRecords(tenantID, batchID int64, thirdIDs ...string) {
	s.t.Helper()
	w := stream.NewWriter([]string{s.opts.brokers}, s.opts.topics().Records, nil)
	defer w.Close()
	p := pipeline.Params{IsMatching: false, OptType: pipeline.OptAdd}
	var msgs []kafka.Message
	for i, third := range thirdIDs {
		v, err := pipeline.EncodeRecord(pipeline.RecordMessage{TenantID: tenantID, BatchID: batchID, Index: i, Params: p,
			Record: pipeline.RawRecord{ThirdID: third, Phone: "13900000099", Groups: "late"}})
		if err != nil {
			s.t.Fatal(err)
		}
		msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprintf("t%d/b%d", tenantID, batchID)), Value: v})
	}
	if err := w.WriteMessages(context.Background(), msgs...); err != nil {
		s.t.Fatal(err)
	}
}

// memberships counts the tenant's present memberships.
func (s *system) memberships(tenantID int64) int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM memberships m JOIN groups g USING (tenant_id, group_id)
		WHERE m.tenant_id = $1 AND m.present`, tenantID).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// customersNamed counts the tenant's customers with the thirdIds.
func (s *system) customersNamed(tenantID int64, thirdIDs ...string) int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), `SELECT count(*) FROM customers WHERE tenant_id = $1 AND third_id = ANY($2)`,
		tenantID, thirdIDs).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// A batch whose records never arrive is finished at --batch-deadline: FAILED,
// every record failed with reason TIMED_OUT (counters, errorCounts and the
// failures page agree), exactly one batch.finished event; a record of it
// arriving later creates no customer and changes no counter. A batch whose
// records all arrive is not touched.
func TestBatchDeadlineEndToEnd(t *testing.T) {
	s := startSystem(t, func(o *options) { o.batchDeadline = 2 * time.Second })
	creds, token := s.app("deadline", apps.ScopeGroup)
	ctx := context.Background()
	tenantID, err := s.apps.TenantID(ctx, "deadline")
	if err != nil {
		t.Fatal(err)
	}
	lost := s.newBatchRow(tenantID, creds.AppID, "PROCESSING", false, 3) // accepted, records lost
	normal := s.postBatch(token, `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"on-time","groups":"g"}]}`)
	if r := s.waitFinal(token, normal, 10*time.Second); r.Status != "SUCCESS" || r.Success != 1 {
		t.Fatalf("normal batch %+v", r)
	}
	r := s.waitFinal(token, lost, 20*time.Second)
	if r.Status != "FAILED" || r.Processed != 3 || r.Failed != 3 || r.Success != 0 || r.FailureTotal != 3 ||
		fmt.Sprint(r.ErrorCounts) != "map[TIMED_OUT:3]" || r.FinishedAt == nil || len(r.Failures) != 3 {
		t.Fatalf("timed-out batch %+v", r)
	}
	for i, f := range r.Failures {
		if f.Index != i || f.Reason != "TIMED_OUT" {
			t.Errorf("failure %d: %+v", i, f)
		}
	}
	finished := func(evs []event) (n int, last event) {
		for _, e := range evs {
			if e.Type == "batch.finished" && e.BatchID == lost {
				n++
				last = e
			}
		}
		return n, last
	}
	s.waitEvents(20*time.Second, func(evs []event) bool { n, _ := finished(evs); return n > 0 })
	time.Sleep(time.Second) // more sweeps and relay rounds: still one event
	n, e := finished(s.waitEvents(time.Second, func([]event) bool { return true }))
	if n != 1 || e.Status != "FAILED" || e.Total != 3 || e.Processed != 3 {
		t.Fatalf("%d batch.finished events for the timed-out batch, last %+v; want exactly 1", n, e)
	}
	// The event as sent: valid, with the TIMED_OUT records in errorCounts.
	contracts := schematest.MustContracts(t)
	for _, line := range strings.Split(strings.TrimSpace(s.kcat("", "-C", "-t", s.topic("events"), "-e", "-q", "-f", "%s\n")), "\n") {
		var ev struct {
			Type        string         `json:"type"`
			BatchID     int64          `json:"batchId"`
			Failed      int            `json:"failed"`
			ErrorCounts map[string]int `json:"errorCounts"`
		}
		if json.Unmarshal([]byte(line), &ev) != nil || ev.Type != "batch.finished" || ev.BatchID != lost {
			continue
		}
		if _, err := contracts.ValidateEvent([]byte(line)); err != nil {
			t.Errorf("batch.finished of the timed-out batch: %v", err)
		}
		if ev.Failed != 3 || ev.ErrorCounts["TIMED_OUT"] != 3 {
			t.Errorf("batch.finished of the timed-out batch: %s", line)
		}
	}

	// A late record: the matcher creates no customer (the batch is
	// finished), the sink finds the TIMED_OUT ledger row.
	s.produceRecords(tenantID, lost, "late-0")
	s.metricAtLeast("groupmatch_sink_duplicate_records_total", 1, 30*time.Second)
	if n := s.customersNamed(tenantID, "late-0"); n != 0 {
		t.Errorf("a late record of a timed-out batch created %d customers", n)
	}
	if r2 := s.waitFinal(token, lost, time.Second); r2.Processed != 3 || r2.Failed != 3 || r2.Success != 0 {
		t.Errorf("counters moved after a late record: %+v", r2)
	}
	if n := s.memberships(tenantID); n != 1 { // the normal batch's
		t.Errorf("%d memberships after a late record, want 1", n)
	}
	if log := s.logs.String(); !strings.Contains(log, `"msg":"batch finished"`) || !strings.Contains(log, `"timed_out":true`) || strings.Contains(log, "late-0") {
		t.Errorf("the log lacks the time-out line or shows an identity value")
	}
}

// Records of an aborted batch (ingest answered 503) reach neither the
// directory nor the groups: no customer is created for isMatching=false.
func TestAbortedBatchCreatesNothing(t *testing.T) {
	s := startSystem(t)
	creds, _ := s.app("aborted", apps.ScopeGroup)
	tenantID, err := s.apps.TenantID(context.Background(), "aborted")
	if err != nil {
		t.Fatal(err)
	}
	id := s.newBatchRow(tenantID, creds.AppID, "FAILED", true, 2)
	s.produceRecords(tenantID, id, "ghost-0", "ghost-1")
	s.metricAtLeast("groupmatch_sink_aborted_records_total", 2, 30*time.Second)
	if n := s.customersNamed(tenantID, "ghost-0", "ghost-1"); n != 0 {
		t.Errorf("records of an aborted batch created %d customers", n)
	}
	if n := s.memberships(tenantID); n != 0 {
		t.Errorf("records of an aborted batch made %d memberships", n)
	}
}

// With --tenant-rate, a batch beyond the tenant's remaining quota is
// answered 429 RATE_LIMITED with Retry-After; other tenants are served; the
// requests topic waits for the quota instead of rejecting.
func TestTenantQuotaEndToEnd(t *testing.T) {
	s := startSystem(t, func(o *options) { o.tenantRate = 200 }) // burst 500
	_, big := s.app("big", apps.ScopeGroup)
	_, small := s.app("small", apps.ScopeGroup)
	batch := func(n int) string {
		recs := make([]string, n)
		for i := range recs {
			recs[i] = fmt.Sprintf(`{"thirdId":"q-%d","groups":"g"}`, i)
		}
		return `{"publicParams":{"isMatching":false,"optType":"add"},"data":[` + strings.Join(recs, ",") + `]}`
	}
	s.postBatch(big, batch(500)) // the whole burst
	// Another full batch needs 2.5 s of refill: far more than the test's
	// own pace could refill meanwhile.
	var env envelope
	resp := s.do(http.MethodPost, "/api/integrate/audience/group/rel/batchAdd", big, []byte(batch(500)), http.StatusTooManyRequests, &env)
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); env.Code != "429" || env.ErrorCode != "RATE_LIMITED" || ra < 1 || ra > 3 {
		t.Errorf("over quota: %+v, Retry-After %q", env, resp.Header.Get("Retry-After"))
	}
	s.postBatch(small, batch(500)) // another tenant has its own quota

	// Two feed requests of 300 records: each waits for the quota (1.5 s
	// of refill apiece, less what refilled since the burst was spent).
	start := time.Now()
	s.kcat("quota-1\t"+batch(300)+"\nquota-2\t"+batch(300)+"\n",
		"-P", "-t", s.topic("requests"), "-K", "\t", "-H", "x-token="+big)
	evs := s.waitEvents(30*time.Second, func(evs []event) bool {
		n := 0
		for _, e := range evs {
			if strings.HasPrefix(e.RequestKey, "quota-") {
				n++
			}
		}
		return n == 2
	})
	for _, e := range evs {
		if strings.HasPrefix(e.RequestKey, "quota-") && e.Type != pipeline.EventRequestAccepted {
			t.Errorf("feed request %s answered %+v, want accepted after a wait", e.RequestKey, e)
		}
	}
	if d := time.Since(start); d < 1500*time.Millisecond {
		t.Errorf("the feed's 600 records were accepted in %s, faster than the quota allows", d)
	}
}

// clientFrom returns an HTTP client whose connections come from the given
// local (loopback) address, so the server sees it as the client address.
func clientFrom(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 32}}
}

// A flood of forged tokens from one address (127.0.0.1) against the real
// server and database: after its burst it is answered 429, and a tenant's
// valid requests from another address (127.0.0.2) keep working, quickly.
func TestForgedTokenFloodEndToEnd(t *testing.T) {
	s := startSystem(t)
	_, token := s.app("victim", apps.ScopeGroup)
	flooder, victim := clientFrom("127.0.0.1"), clientFrom("127.0.0.2")
	get := func(c *http.Client, tok string) (int, error) {
		req, _ := http.NewRequest(http.MethodGet, s.base+"/api/open/audience/group/list", nil)
		req.Header.Set("X-Token", tok)
		resp, err := c.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var mu sync.Mutex
	codes := map[int]int{}
	start := time.Now()
	for range 16 {
		wg.Go(func() {
			for ctx.Err() == nil {
				code, err := get(flooder, "forged-"+strconv.Itoa(rand.IntN(1<<30)))
				mu.Lock()
				codes[code]++
				mu.Unlock()
				if err != nil && ctx.Err() == nil {
					t.Errorf("flood request: %v", err)
					return
				}
			}
		})
	}
	time.Sleep(500 * time.Millisecond)
	var lat []time.Duration
	for range 100 {
		t0 := time.Now()
		code, err := get(victim, token)
		if err != nil || code != http.StatusOK {
			t.Fatalf("valid request during the flood: HTTP %d, %v", code, err)
		}
		lat = append(lat, time.Since(t0))
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	wg.Wait()
	flood := time.Since(start)
	slices.Sort(lat)
	t.Logf("flood of %s answers %v; valid requests: median %s, p95 %s, max %s", flood.Round(time.Millisecond), codes, lat[50], lat[95], lat[99])
	// The budget: a burst of 100, a refill of 20 a second over the flood's
	// duration (longer on a loaded machine), and the 16 requests in flight.
	if budget := 100 + int(20*flood.Seconds()) + 16; codes[http.StatusUnauthorized] > budget || codes[http.StatusTooManyRequests] == 0 {
		t.Errorf("flood answers %v: want at most the burst and refill as 401, the rest 429", codes)
	}
	// Generous for a shared 2-core machine whose CPU the flood itself
	// loads; a valid request costs a few milliseconds.
	if lat[95] > 200*time.Millisecond {
		t.Errorf("valid requests' p95 latency %s during the flood", lat[95])
	}
}

func TestTrustedProxiesFlag(t *testing.T) {
	o := options{trustedProxies: " 10.0.0.0/8, 192.0.2.7 ,fd00::/8,2001:db8::1,10.1.2.3/16"}
	got, err := o.proxyPrefixes()
	if err != nil || fmt.Sprint(got) != "[10.0.0.0/8 192.0.2.7/32 fd00::/8 2001:db8::1/128 10.1.0.0/16]" {
		t.Errorf("prefixes %v, %v", got, err)
	}
	o.trustedProxies = "10.0.0.0/8,proxy.local"
	if _, err := o.proxyPrefixes(); err == nil || !strings.Contains(err.Error(), `"proxy.local"`) {
		t.Errorf("a host name: %v", err)
	}
}
