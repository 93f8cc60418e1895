package sink

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A fresh process reports every outcome, final status and dead-letter class
// at 0, so that the first FAILED batch is an increase rate() sees.
func TestMetricsPreinitialised(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	want := `
# HELP groupmatch_batches_finished_total Batches that reached a final status, by status.
# TYPE groupmatch_batches_finished_total counter
groupmatch_batches_finished_total{stage="sink",status="FAILED"} 0
groupmatch_batches_finished_total{stage="sink",status="PARTIAL_SUCCESS"} 0
groupmatch_batches_finished_total{stage="sink",status="SUCCESS"} 0
# HELP groupmatch_dlq_messages_total Messages sent to the dead-letter topic, by error class.
# TYPE groupmatch_dlq_messages_total counter
groupmatch_dlq_messages_total{class="orphan",stage="sink"} 0
groupmatch_dlq_messages_total{class="panic",stage="sink"} 0
groupmatch_dlq_messages_total{class="permanent",stage="sink"} 0
groupmatch_dlq_messages_total{class="undecodable",stage="sink"} 0
# HELP groupmatch_sink_records_total Records whose outcome the sink recorded, by outcome (MATCHED records were applied to groups).
# TYPE groupmatch_sink_records_total counter
groupmatch_sink_records_total{outcome="AMBIGUOUS",stage="sink"} 0
groupmatch_sink_records_total{outcome="FAILED",stage="sink"} 0
groupmatch_sink_records_total{outcome="INVALID",stage="sink"} 0
groupmatch_sink_records_total{outcome="MATCHED",stage="sink"} 0
groupmatch_sink_records_total{outcome="NOT_FOUND",stage="sink"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "groupmatch_batches_finished_total",
		"groupmatch_dlq_messages_total", "groupmatch_sink_records_total"); err != nil {
		t.Fatal(err)
	}
}

// The batch latency histogram reaches hours: a 3-hour backfill lands below
// the 4-hour bucket, not in +Inf.
func TestBatchLatencyBucketsReachHours(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	m.BatchLatency.Observe(3 * 3600)
	m.BatchLatency.Observe(0.07)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "groupmatch_batch_latency_seconds" {
			continue
		}
		h := mf.GetMetric()[0].GetHistogram()
		b := h.GetBucket()
		if first, last := b[0].GetUpperBound(), b[len(b)-1].GetUpperBound(); first > 0.1 || last < 4*3600 {
			t.Fatalf("buckets run from %v s to %v s, want <= 0.1 s to >= 4 h", first, last)
		}
		for _, bk := range b {
			switch le := bk.GetUpperBound(); {
			case le < 0.07 && bk.GetCumulativeCount() != 0, le >= 0.07 && le < 3*3600 && bk.GetCumulativeCount() != 1,
				le >= 3*3600 && bk.GetCumulativeCount() != 2:
				t.Errorf("le=%v: cumulative count %d", le, bk.GetCumulativeCount())
			}
		}
		return
	}
	t.Fatal("groupmatch_batch_latency_seconds not gathered")
}
