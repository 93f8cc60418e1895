package main

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/apps"
)

// opsDirectory and opsBatch are the identities the operations tests import;
// no log line or label may ever show one of them.
const opsDirectory = `{"customerId": 71, "thirdId": "ops-crm-71", "unionid": "ops-union-71", "phones": ["13900000071"]}
{"customerId": 72, "thirdId": "ops-crm-72", "phones": ["13900000072"], "openids": [{"openid": "ops-open-72", "appType": "gzh", "appId": "wxops"}]}
{"customerId": 73, "thirdId": "ops-crm-73", "phones": ["13900000079"]}
{"customerId": 74, "thirdId": "ops-crm-74", "phones": ["13900000079"]}
`

const opsBatch = `{"publicParams": {"isMatching": true, "matchingType": 2, "identifyWay": 1, "optType": "add"},
 "data": [
  {"unionid": "ops-union-71", "phone": "13900000072", "groups": "ops-vip"},
  {"openid": "ops-open-72", "groups": "ops-vip"},
  {"phone": "13900000079", "groups": "ops-vip"},
  {"thirdId": "ops-nobody-1", "groups": "ops-vip"},
  {"phone": "12399999", "unionid": "undefined", "groups": "ops-vip"},
  {"thirdId": "ops-crm-73", "openid": "ops-open-unknown", "groups": "ops-new"}
 ]}`

// opsIdentities are every identity value of opsDirectory and opsBatch.
var opsIdentities = []string{"ops-crm-71", "ops-union-71", "13900000071", "ops-crm-72", "13900000072", "ops-open-72",
	"ops-crm-73", "ops-crm-74", "13900000079", "ops-nobody-1", "12399999", "ops-open-unknown"}

// trafficSystem is a running system that has imported opsBatch n times,
// every batch final.
func trafficSystem(t *testing.T, n int) *system {
	t.Helper()
	s := startSystem(t)
	_, token := s.app("ops", apps.ScopeGroup)
	s.loadDirectory("ops", opsDirectory)
	for range n {
		id := s.postBatch(token, opsBatch)
		if res := s.waitFinal(token, id, 15*time.Second); res.Processed != 6 {
			t.Fatalf("batch %d: %+v", id, res)
		}
	}
	s.get("/api/integrate/audience/group/rel/batchResult?batchId=999999", token, http.StatusNotFound, nil)
	return s
}

// scrape returns the body of base/metrics.
func scrape(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: HTTP %d %v\n%s", resp.StatusCode, err, body)
	}
	return string(body)
}

// promtool returns the path of Debian's promtool; the tests fail without
// it (make test installs it).
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: install Debian's prometheus package (make deps does)")
	}
	return p
}

// A running system's scrape has every metric of SPEC §8, with values that
// agree with the traffic, and passes promtool's lint.
func TestMetricsScrape(t *testing.T) {
	s := trafficSystem(t, 2)
	body := scrape(t, s.base)
	for _, want := range []string{
		`groupmatch_http_requests_total{code="200",route="batchAdd",stage="ingest"} 2`,
		`groupmatch_http_requests_total{code="404",route="batchResult",stage="ingest"} 1`,
		`groupmatch_records_accepted_total{stage="ingest"} 12`,
		`groupmatch_matcher_records_total{matched_by="unionid",outcome="MATCHED",stage="matcher"} 2`,
		`groupmatch_matcher_records_total{matched_by="openid",outcome="MATCHED",stage="matcher"} 2`,
		`groupmatch_matcher_records_total{matched_by="id",outcome="MATCHED",stage="matcher"} 2`,
		`groupmatch_matcher_records_total{matched_by="none",outcome="AMBIGUOUS",stage="matcher"} 2`,
		`groupmatch_batches_finished_total{stage="sink",status="PARTIAL_SUCCESS"} 2`,
		`groupmatch_batch_latency_seconds_count{stage="sink"} 2`,
		`groupmatch_batches_in_flight{stage="sink"} 0`,
		`groupmatch_kafka_writer_messages_total{stage="ingest",topic="groupmatch.records"} 12`,
		`groupmatch_kafka_writer_messages_total{stage="matcher",topic="groupmatch.resolved"} 12`,
		`groupmatch_kafka_reader_messages_total{stage="sink",topic="groupmatch.resolved"} 12`,
		`groupmatch_kafka_consumer_lag_messages{group="groupmatch-matcher",partition="0",stage="matcher",topic="groupmatch.records"} 0`,
		`groupmatch_kafka_consumer_lag_messages{group="groupmatch-sink",partition="3",stage="sink",topic="groupmatch.resolved"} 0`,
		`groupmatch_kafka_consumer_lag_messages{group="groupmatch-dlq-replay",partition="0",stage="sink",topic="groupmatch.dlq"} 0`,
		`groupmatch_kafka_lag_collect_errors_total{stage="matcher"} 0`,
		`groupmatch_kafka_reader_rebalances_total{stage="matcher",topic="groupmatch.records"}`,
		`groupmatch_sink_chunk_duration_seconds_bucket{stage="sink",le="+Inf"}`,
		`groupmatch_retries_total{stage="sink"}`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	for _, v := range opsIdentities {
		if strings.Contains(body, v) {
			t.Errorf("scrape shows the identity value %q", v)
		}
	}
	cmd := exec.Command(promtool(t), "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", body)
	}
}

// An end-to-end run's logs, at debug level, name batches, records,
// partitions and offsets but never an identity value it imported.
func TestLogsHoldNoIdentityValues(t *testing.T) {
	s := trafficSystem(t, 1)
	logs := s.logs.String()
	if !strings.Contains(logs, `"batch_id"`) || !strings.Contains(logs, `"stage":"sink"`) {
		t.Errorf("logs lack batch_id or stage; got:\n%s", logs)
	}
	for _, v := range opsIdentities {
		if strings.Contains(logs, v) {
			t.Errorf("logs show the identity value %q", v)
		}
	}
	for _, line := range bytes.Split([]byte(logs), []byte("\n")) {
		if len(line) > 0 && line[0] != '{' {
			t.Errorf("a log line is not JSON: %s", line)
		}
	}
	if t.Failed() {
		fmt.Println(logs)
	}
}
