package ingest

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A fresh process reports both feed failure classes at 0, so that the first
// failure is an increase rate() sees.
func TestMetricsPreinitialised(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	want := `
# HELP groupmatch_feed_failures_total Requests-topic messages that failed permanently or panicked, answered request.rejected; by class.
# TYPE groupmatch_feed_failures_total counter
groupmatch_feed_failures_total{class="panic",stage="ingest"} 0
groupmatch_feed_failures_total{class="permanent",stage="ingest"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "groupmatch_feed_failures_total"); err != nil {
		t.Fatal(err)
	}
}
