package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/stream"
)

// The fault tests run every stage as its own process of the built binary,
// inject a fault while batches flow, and then check, against a serial
// reference computed here, that every accepted batch finished with exact
// counters and that memberships equal applying the accepted batches one
// after another in batch id order.

const faultCustomers = 200

// refRecord is what the test knows of one record it sent.
type refRecord struct {
	customer int64  // 0: unknown thirdId (NOT_FOUND)
	groups   string // "" makes the record INVALID (NO_GROUPS)
}

type sentBatch struct {
	id      int64
	add     bool
	records []refRecord
}

// rig is a multi-process groupmatch with a loaded directory, an app and the
// batches it accepted.
type rig struct {
	t     *testing.T
	c     *cluster
	db    *pgxpool.Pool
	dbURL string
	token string
	api   *system

	mu       sync.Mutex
	sent     []sentBatch
	rejected int // batches answered 503
}

// newRig runs the stages on brokers (the shared broker when empty).
func newRig(t *testing.T, dbURL, brokers string, env ...string) *rig {
	t.Helper()
	c := startClusterOn(t, dbURL, brokers, env...)
	db, err := pgxpool.New(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	var creds struct{ InstanceAppid, InstanceSecrect string }
	out := runProc(t, c.env, nil, "app", "create", "--tenant", "faults", "--name", "feed", "--scope", "audience.group")
	if err := json.Unmarshal([]byte(out), &creds); err != nil {
		t.Fatal(err)
	}
	var dir strings.Builder
	for i := 1; i <= faultCustomers; i++ {
		fmt.Fprintf(&dir, `{"customerId": %d, "thirdId": "c-%d"}`+"\n", i, i)
	}
	runProc(t, c.env, strings.NewReader(dir.String()), "directory", "load", "--tenant", "faults", "-")
	r := &rig{t: t, c: c, db: db, dbURL: dbURL, api: &system{t: t, base: c.base}}
	var tok struct {
		Data struct{ OrgAccessToken string }
	}
	r.api.get("/api/open/app/getOrgAccessToken?instanceAppid="+creds.InstanceAppid+"&instanceSecrect="+creds.InstanceSecrect, "", 200, &tok)
	r.token = tok.Data.OrgAccessToken
	return r
}

// makeBatch returns a random add or delete batch over the directory, with a
// few unknown and invalid records.
func makeBatch(rng *rand.Rand, n int) (string, sentBatch) {
	b := sentBatch{add: rng.IntN(3) > 0}
	opt := "delete"
	if b.add {
		opt = "add"
	}
	var data []string
	for range n {
		r := refRecord{customer: int64(1 + rng.IntN(faultCustomers))}
		third := fmt.Sprintf("c-%d", r.customer)
		switch rng.IntN(20) {
		case 0:
			r.customer, third = 0, fmt.Sprintf("nobody-%d", rng.IntN(1000))
		case 1:
			r.groups = ""
		}
		if third != "" && (r.customer == 0 || rng.IntN(20) != 1) {
			var gs []string
			for _, g := range []string{"g1", "g2", "g3"} {
				if rng.IntN(2) == 0 {
					gs = append(gs, g)
				}
			}
			if len(gs) == 0 {
				gs = []string{"g1"}
			}
			r.groups = strings.Join(gs, ",")
		}
		b.records = append(b.records, r)
		data = append(data, fmt.Sprintf(`{"identityType": "id", "thirdId": %q, "groups": %q}`, third, r.groups))
	}
	body := fmt.Sprintf(`{"publicParams": {"isMatching": true, "matchingType": 1, "optType": %q}, "data": [%s]}`, opt, strings.Join(data, ","))
	return body, b
}

// post sends a batch; it remembers accepted ones and counts 503s. Any
// other answer fails the test.
func (r *rig) post(body string, b sentBatch) {
	req, _ := http.NewRequest(http.MethodPost, r.c.base+"/api/integrate/audience/group/rel/batchAdd", strings.NewReader(body))
	req.Header.Set("X-Token", r.token)
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		r.mu.Lock()
		r.rejected++ // connection refused while ingest restarts, say
		r.mu.Unlock()
		return
	}
	defer resp.Body.Close()
	var env struct {
		Code string
		Data int64
	}
	_ = json.NewDecoder(resp.Body).Decode(&env)
	r.mu.Lock()
	defer r.mu.Unlock()
	switch resp.StatusCode {
	case http.StatusOK:
		b.id = env.Data
		r.sent = append(r.sent, b)
	case http.StatusServiceUnavailable:
		r.rejected++
	default:
		r.t.Errorf("batchAdd answered HTTP %d %+v", resp.StatusCode, env)
	}
}

// load posts batches from a few clients until count batches were tried.
func (r *rig) load(seed uint64, count, size, clients int) {
	var wg sync.WaitGroup
	per := count / clients
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for range per {
				body, b := makeBatch(rng, size)
				r.post(body, b)
			}
		})
	}
	wg.Wait()
}

// loadFor posts batches from a few clients, each pausing between posts,
// until d has passed, so that the load spans a fault injected meanwhile.
func (r *rig) loadFor(seed uint64, d time.Duration, size, clients int) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	r.loadUntil(seed, ctx.Done(), size, clients)
}

// loadUntil is loadFor until stop is closed.
func (r *rig) loadUntil(seed uint64, stop <-chan struct{}, size, clients int) {
	var wg sync.WaitGroup
	for c := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for {
				select {
				case <-stop:
					return
				default:
				}
				body, b := makeBatch(rng, size)
				r.post(body, b)
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
}

// verify waits until every accepted batch is final and checks counters and
// memberships against the serial reference. It returns the records checked.
func (r *rig) verify(within time.Duration) int {
	r.t.Helper()
	ctx := context.Background()
	r.mu.Lock()
	sent := append([]sentBatch(nil), r.sent...)
	r.mu.Unlock()
	if len(sent) == 0 {
		r.t.Fatal("no batch was accepted")
	}
	deadline := time.Now().Add(within)
	ids := make([]int64, len(sent))
	for i, b := range sent {
		ids[i] = b.id
	}
	// Every accepted batch finishes, and no batch is left PROCESSING or
	// PENDING, accepted or not: one whose abort failed while PostgreSQL
	// was down is aborted by the janitor after the pending timeout.
	for {
		var open, stuck int
		if err := r.db.QueryRow(ctx, `SELECT count(*) FILTER (WHERE batch_id = ANY($1) AND finished_at IS NULL),
			count(*) FILTER (WHERE status IN ('PENDING', 'PROCESSING')) FROM batches`, ids).Scan(&open, &stuck); err != nil {
			r.t.Fatal(err)
		}
		if open == 0 && stuck == 0 {
			break
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("after %s, %d of %d accepted batches are not final and %d batches are PENDING/PROCESSING", within, open, len(sent), stuck)
		}
		time.Sleep(100 * time.Millisecond)
	}
	sort.Slice(sent, func(i, j int) bool { return sent[i].id < sent[j].id })
	state := map[string]bool{}
	records := 0
	for _, b := range sent {
		want := batchRow{total: len(b.records)}
		for _, rec := range b.records {
			switch {
			case rec.groups == "":
				want.invalid++
			case rec.customer == 0:
				want.unmatched++
			default:
				want.success++
				for _, g := range strings.Split(rec.groups, ",") {
					state[fmt.Sprintf("%s/%d", g, rec.customer)] = b.add
				}
			}
		}
		want.processed = want.total
		var got batchRow
		if err := r.db.QueryRow(ctx, `SELECT total, processed, success, unmatched, invalid, ambiguous + failed FROM batches WHERE batch_id = $1`, b.id).
			Scan(&got.total, &got.processed, &got.success, &got.unmatched, &got.invalid, &got.other); err != nil {
			r.t.Fatal(err)
		}
		if got != want {
			r.t.Errorf("batch %d counters %+v, want %+v", b.id, got, want)
		}
		records += len(b.records)
	}
	var want []string
	for k, present := range state {
		if present {
			want = append(want, k)
		}
	}
	sort.Strings(want)
	rows, err := r.db.Query(ctx, `SELECT g.name || '/' || m.customer_id FROM memberships m JOIN groups g USING (tenant_id, group_id)
		WHERE m.present AND g.visible AND g.name IN ('g1', 'g2', 'g3') ORDER BY 1`)
	if err != nil {
		r.t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			r.t.Fatal(err)
		}
		got = append(got, s)
	}
	if err := rows.Err(); err != nil {
		r.t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		r.t.Fatalf("memberships differ from the serial reference: %d present, want %d", len(got), len(want))
	}
	// Every record of every accepted batch has its bit in the applied
	// bitmap, which with the counters above (processed = total, each
	// outcome's count as sent) shows each took effect once; the records
	// that did not apply, and only they, have one ledger row each.
	var bits, ledger, matchedRows, wrong int
	if err := r.db.QueryRow(ctx, `SELECT coalesce(sum(bit_count(done)), 0),
		(SELECT count(*) FROM batch_records WHERE batch_id = ANY($1)),
		(SELECT count(*) FROM batch_records WHERE batch_id = ANY($1) AND outcome = 'MATCHED')
		FROM batches WHERE batch_id = ANY($1)`, ids).Scan(&bits, &ledger, &matchedRows); err != nil {
		r.t.Fatal(err)
	}
	if err := r.db.QueryRow(ctx, `SELECT count(*) FROM batches b WHERE batch_id = ANY($1) AND (
		length(done) <> (total + 7) / 8
		OR EXISTS (SELECT 1 FROM generate_series(0, total - 1) AS i WHERE get_bit(done, i) = 0)
		OR total - success <> (SELECT count(*) FROM batch_records r WHERE r.tenant_id = b.tenant_id AND r.batch_id = b.batch_id))`,
		ids).Scan(&wrong); err != nil {
		r.t.Fatal(err)
	}
	if bits != records || matchedRows != 0 || wrong != 0 {
		r.t.Fatalf("applied bits %d, want %d; %d ledger rows, %d of them MATCHED; %d batches with a clear bit or a ledger row per failure missing or extra",
			bits, records, ledger, matchedRows, wrong)
	}
	r.t.Logf("verified %d batches, %d records, %d memberships; %d batches answered 503", len(sent), records, len(want), r.rejected)
	return records
}

type batchRow struct{ total, processed, success, unmatched, invalid, other int }

// abortedAppliedSQL counts the records of aborted batches that had an
// outcome: a bit in the applied bitmap, a count, or a ledger row.
const abortedAppliedSQL = `SELECT coalesce(sum(bit_count(b.done) + b.processed
	+ (SELECT count(*) FROM batch_records r WHERE r.tenant_id = b.tenant_id AND r.batch_id = b.batch_id)), 0)
	FROM batches b WHERE b.aborted`

// restart kills a stage process (SIGKILL) and starts a new one.
func (r *rig) restart(p **proc, stage string) {
	(*p).kill()
	*p = r.c.start(r.t, stage)
	(*p).waitFor(adminAddrRE, 30*time.Second)
}

// waitGroupEmpty waits until a stage's consumer group has no member.
func (r *rig) waitGroupEmpty(stage string) {
	r.t.Helper()
	group := r.c.group(stage)
	client := &kafka.Client{Addr: kafka.TCP(strings.Split(r.c.brokers, ",")...)}
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := client.DescribeGroups(context.Background(), &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
		if err == nil && len(resp.Groups) == 1 && len(resp.Groups[0].Members) == 0 {
			return
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("group %s still has members after 30 s: %+v %v", group, resp, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SIGKILL the matcher and the sink several times while batches flow, at
// any moment, even while the killed process is joining its group: Apache
// Kafka's coordinator drops a dead member once its session timeout (10 s,
// set by package stream) passes, and the group goes on without it. (kfake
// kept such members for good, so this test used to wait for a Stable group
// before each kill.)
func TestFaultKillStages(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.loadFor(1, 8*time.Second, 150, 3)
	}()
	for range 3 {
		time.Sleep(300 * time.Millisecond)
		r.restart(&r.c.matcher, "matcher")
		time.Sleep(300 * time.Millisecond)
		r.restart(&r.c.sink, "sink")
	}
	<-done
	start := time.Now()
	r.verify(90 * time.Second)
	t.Logf("settled %s after the load", time.Since(start).Round(time.Millisecond))
}

// Terminate the sink's PostgreSQL backends mid-stream, repeatedly.
func TestFaultTerminateSinkBackends(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.load(2, 40, 150, 4)
	}()
	killed := 0
	for range 8 {
		time.Sleep(250 * time.Millisecond)
		var n int
		err := r.db.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
			WHERE application_name = 'groupmatch-sink' AND datname = current_database()`).Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		killed += n
	}
	<-done
	if killed == 0 {
		t.Fatal("no sink backend was terminated")
	}
	t.Logf("terminated %d sink backends", killed)
	r.verify(60 * time.Second)
}

// Stop the broker (a clean shutdown of Apache Kafka, its own for this
// test) while ingest takes requests: clients get 503, and every batch id
// that was returned finishes once the broker is back on the same log.
func TestFaultBrokerDown(t *testing.T) {
	k := startOwnKafka(t, devenv.KafkaConfig{DataDir: t.TempDir()})
	r := newRig(t, startSystemDB(t).url, k.Addr())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.loadFor(3, 6*time.Second, 100, 3)
	}()
	time.Sleep(500 * time.Millisecond)
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	startOwnKafka(t, devenv.KafkaConfig{Addr: k.Addr(), ControllerAddr: k.ControllerAddr(), DataDir: k.DataDir()})
	<-done
	if r.rejected == 0 {
		t.Error("no request was refused while the broker was down")
	}
	r.verify(90 * time.Second)
	var aborted int
	if err := r.db.QueryRow(context.Background(), `SELECT count(*) FROM batches WHERE aborted`).Scan(&aborted); err != nil {
		t.Fatal(err)
	}
	var applied int
	if err := r.db.QueryRow(context.Background(), abortedAppliedSQL).Scan(&applied); err != nil || applied != 0 {
		t.Fatalf("%d records of aborted batches were applied (%v)", applied, err)
	}
	t.Logf("%d batches aborted, none applied", aborted)
}

// Stop PostgreSQL for a few seconds while batches flow. The cluster is a
// private one, so stopping it disturbs no other test.
func TestFaultPostgresDown(t *testing.T) {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "groupmatch-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the postgres user runs the cluster
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	cfg := devenv.PostgresConfig{DataDir: dir, LocalAddr: closed}
	pg, err := devenv.EnsurePostgres(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = pg.Stop(context.Background()) })
	if !pg.Private {
		t.Fatal("expected a private cluster")
	}
	r := newRig(t, pg.URL, "", "PENDING_TIMEOUT=15s")
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.loadFor(7, 6*time.Second, 100, 3)
	}()
	time.Sleep(700 * time.Millisecond)
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	pg2, err := devenv.EnsurePostgres(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pg2.URL != pg.URL {
		t.Fatalf("PostgreSQL came back at %s, not %s", pg2.URL, pg.URL)
	}
	<-done
	for deadline := time.Now().Add(30 * time.Second); r.db.Ping(ctx) != nil; {
		if time.Now().After(deadline) {
			t.Fatal("PostgreSQL did not come back")
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.rejected == 0 {
		t.Error("no request was refused while PostgreSQL was down")
	}
	r.verify(90 * time.Second)
}

// Undecodable messages on the records and resolved topics land in the DLQ;
// one that still names its record counts it failed, so its batch finishes.
func TestFaultPoisonMessages(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	ctx := context.Background()
	brokers := []string{r.c.brokers}
	// A batch of 2 records whose messages the test writes itself.
	var tenantID int64
	if err := r.db.QueryRow(ctx, `SELECT tenant_id FROM tenants WHERE name = 'faults'`).Scan(&tenantID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.db.Exec(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (nextval('batch_id_seq'), $1, 'x', 'add', '{}', 'PROCESSING', 3)`, tenantID); err != nil {
		t.Fatal(err)
	}
	var batchID int64
	if err := r.db.QueryRow(ctx, `SELECT max(batch_id) FROM batches`).Scan(&batchID); err != nil {
		t.Fatal(err)
	}
	good := fmt.Sprintf(`{"v":1,"tenantId":%d,"batchId":%d,"index":0,"params":{"isMatching":true,"matchingType":1,"optType":"add"},"record":{"identityType":"id","thirdId":"c-1","groups":"poison"}}`, tenantID, batchID)
	peekable := fmt.Sprintf(`{"v":1,"tenantId":%d,"batchId":%d,"index":1,"params":"broken"}`, tenantID, batchID)
	resolvedPeekable := fmt.Sprintf(`{"v":1,"tenantId":%d,"batchId":%d,"index":2,"outcome":"WHAT"}`, tenantID, batchID)
	write := func(topic string, values ...string) {
		w := stream.NewWriter(brokers, topic, nil)
		defer w.Close()
		var msgs []kafka.Message
		for _, v := range values {
			msgs = append(msgs, kafka.Message{Key: []byte("poison"), Value: []byte(v)})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
	}
	write(r.c.topic("records"), "garbage", good, peekable, `{"v":2}`)
	write(r.c.topic("resolved"), "\x00\x01", resolvedPeekable)
	// The pipeline keeps going: a normal batch after the poison finishes.
	r.load(4, 2, 50, 1)
	r.verify(30 * time.Second)
	var status string
	var processed, success, failed int
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := r.db.QueryRow(ctx, `SELECT status, processed, success, failed FROM batches WHERE batch_id = $1`, batchID).
			Scan(&status, &processed, &success, &failed); err != nil {
			t.Fatal(err)
		}
		if processed == 3 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if status != "PARTIAL_SUCCESS" || processed != 3 || success != 1 || failed != 2 {
		t.Fatalf("poisoned batch: %s processed %d success %d failed %d; want PARTIAL_SUCCESS 3 1 2", status, processed, success, failed)
	}
	// Every poison message is in the DLQ with its headers.
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: r.c.topic("dlq"), Partition: 0, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	classes := map[string]int{}
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	for len(classes) == 0 || classes["records/undecodable"] < 3 || classes["resolved/undecodable"] < 2 {
		m, err := rd.ReadMessage(rctx)
		if err != nil {
			t.Fatalf("reading the DLQ: %v (found %v)", err, classes)
		}
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		if h[stream.HeaderOffset] == "" || h[stream.HeaderPartition] == "" || h[stream.HeaderError] == "" {
			t.Errorf("dead letter without position or error: %v", h)
		}
		classes[strings.TrimPrefix(h[stream.HeaderTopic], r.c.names.topicPrefix)+"/"+h[stream.HeaderErrorClass]]++
	}
	t.Logf("dead letters by topic/class: %v", classes)
}

// A record that PostgreSQL refuses for good no longer stops the matcher: it
// is isolated, counted failed with reason PROCESSING_FAILED and
// dead-lettered, and the other records of its chunk and later batches are
// processed. Normalisation now keeps every value the issue named (NUL,
// over-long values) from reaching PostgreSQL, so the test makes its own
// poison: a CHECK constraint that refuses one thirdId (SQLSTATE 23514), an
// error no validation foresaw.
func TestFaultPermanentRecord(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	ctx := context.Background()
	brokers := []string{strings.TrimPrefix(r.c.env[0], "KAFKA_BROKERS=")}
	var tenantID, batchID int64
	if err := r.db.QueryRow(ctx, `SELECT tenant_id FROM tenants WHERE name = 'faults'`).Scan(&tenantID); err != nil {
		t.Fatal(err)
	}
	if err := r.db.QueryRow(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (nextval('batch_id_seq'), $1, 'x', 'add', '{}', 'PROCESSING', 3) RETURNING batch_id`, tenantID).Scan(&batchID); err != nil {
		t.Fatal(err)
	}
	if _, err := r.db.Exec(ctx, `ALTER TABLE customers ADD CONSTRAINT test_poison CHECK (third_id <> 'perm-poison-1')`); err != nil {
		t.Fatal(err)
	}
	var msgs []kafka.Message
	for i, thirdID := range []string{"perm-0", "perm-poison-1", "perm-2"} {
		v := fmt.Sprintf(`{"v":1,"tenantId":%d,"batchId":%d,"index":%d,"params":{"isMatching":false,"optType":"add"},"record":{"thirdId":"%s","groups":"perm"}}`,
			tenantID, batchID, i, thirdID)
		msgs = append(msgs, kafka.Message{Key: []byte("one-partition"), Value: []byte(v)})
	}
	w := stream.NewWriter(brokers, r.c.topic("records"), nil)
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	w.Close()
	// The pipeline keeps going: normal batches after it finish exactly.
	r.load(5, 2, 50, 1)
	r.verify(60 * time.Second)
	var status string
	var processed, success, failed int
	if err := r.db.QueryRow(ctx, `SELECT status, processed, success, failed FROM batches WHERE batch_id = $1`, batchID).
		Scan(&status, &processed, &success, &failed); err != nil {
		t.Fatal(err)
	}
	if status != "PARTIAL_SUCCESS" || processed != 3 || success != 2 || failed != 1 {
		t.Fatalf("batch with a bad record: %s processed %d success %d failed %d; want PARTIAL_SUCCESS 3 2 1", status, processed, success, failed)
	}
	var reason string
	if err := r.db.QueryRow(ctx, `SELECT reason FROM batch_records WHERE batch_id = $1 AND rec_index = 1`, batchID).Scan(&reason); err != nil || reason != "PROCESSING_FAILED" {
		t.Fatalf("bad record's reason %q (%v), want PROCESSING_FAILED", reason, err)
	}
	// The check violation is 23514 on PostgreSQL. On Citus the matcher's
	// INSERT … SELECT unnest(…) goes through the coordinator, which reports
	// the worker's violation as XX000 (as directory/load.go notes for COPY).
	wantCode := "23514"
	var citus bool
	if err := r.db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')`).Scan(&citus); err != nil {
		t.Fatal(err)
	}
	if citus {
		wantCode = "XX000"
	}
	var found bool
	for _, m := range readTopic(t, brokers, r.c.topic("dlq")) {
		h := map[string]string{}
		for _, x := range m.Headers {
			h[x.Key] = string(x.Value)
		}
		if h[stream.HeaderStage] == "matcher" && h[stream.HeaderErrorClass] == "permanent" {
			found = true
			if !strings.HasPrefix(h[stream.HeaderError], "postgres error SQLSTATE "+wantCode) || strings.Contains(h[stream.HeaderError], "perm-poison") {
				t.Errorf("dead letter error header %q, want the SQLSTATE only", h[stream.HeaderError])
			}
		}
	}
	if !found {
		t.Error("no permanent dead letter from the matcher")
	}
}

// A second matcher and a second sink join mid-stream (rebalances).
func TestFaultRebalance(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.load(5, 40, 150, 4)
	}()
	time.Sleep(500 * time.Millisecond)
	m2 := r.c.start(t, "matcher")
	m2.waitFor(adminAddrRE, 30*time.Second)
	s2 := r.c.start(t, "sink")
	s2.waitFor(adminAddrRE, 30*time.Second)
	<-done
	r.verify(90 * time.Second)
	m2.stop()
	s2.stop()
}

// Replays: every message of the records and resolved topics is published
// again after the batches finished; nothing changes.
func TestFaultReplay(t *testing.T) {
	r := newRig(t, startSystemDB(t).url, "")
	r.load(6, 30, 100, 3)
	records := r.verify(60 * time.Second)
	brokers := []string{r.c.brokers}
	ctx := context.Background()
	replayed := 0
	for _, topic := range []string{r.c.topic("resolved"), r.c.topic("records")} {
		var msgs []kafka.Message
		for _, m := range readTopic(t, brokers, topic) {
			msgs = append(msgs, kafka.Message{Key: m.Key, Value: m.Value})
		}
		w := stream.NewWriter(brokers, topic, nil)
		// Replay in reverse: old changes arrive after new ones.
		for i, j := 0, len(msgs)-1; i < j; i, j = i+1, j-1 {
			msgs[i], msgs[j] = msgs[j], msgs[i]
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			t.Fatal(err)
		}
		w.Close()
		replayed += len(msgs)
	}
	if replayed < 2*records {
		t.Fatalf("replayed %d messages, want at least %d", replayed, 2*records)
	}
	// Wait until the sink has consumed the replay, then check nothing moved.
	waitDuplicates(t, r, records)
	r.verify(30 * time.Second)
}

// waitDuplicates waits until the sink reports at least n duplicate records
// on its /metrics.
func waitDuplicates(t *testing.T, r *rig, n int) {
	t.Helper()
	addr := ""
	for _, line := range strings.Split(r.c.sink.output(), "\n") {
		if m := adminAddrRE.FindStringSubmatch(line); m != nil {
			addr = m[1]
		}
	}
	re := regexp.MustCompile(`(?m)^groupmatch_sink_duplicate_records_total\{[^}]*\} (\S+)`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err == nil {
			var buf bytes.Buffer
			_, _ = buf.ReadFrom(resp.Body)
			resp.Body.Close()
			if m := re.FindStringSubmatch(buf.String()); m != nil {
				var got float64
				fmt.Sscan(m[1], &got)
				if got >= float64(n) {
					t.Logf("sink saw %.0f duplicates", got)
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sink did not see %d duplicates within 60 s", n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
