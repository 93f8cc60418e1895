package matcher

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// A fresh process reports every outcome and dead-letter class at 0, so that
// the first dead letter is an increase rate() sees.
func TestMetricsPreinitialised(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	want := `
# HELP groupmatch_dlq_messages_total Messages sent to the dead-letter topic, by error class.
# TYPE groupmatch_dlq_messages_total counter
groupmatch_dlq_messages_total{class="panic",stage="matcher"} 0
groupmatch_dlq_messages_total{class="permanent",stage="matcher"} 0
groupmatch_dlq_messages_total{class="undecodable",stage="matcher"} 0
# HELP groupmatch_matcher_records_total Records resolved, by outcome and by the identifier that matched.
# TYPE groupmatch_matcher_records_total counter
groupmatch_matcher_records_total{matched_by="none",outcome="AMBIGUOUS",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="none",outcome="FAILED",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="none",outcome="INVALID",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="none",outcome="NOT_FOUND",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="id",outcome="MATCHED",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="openid",outcome="MATCHED",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="phone",outcome="MATCHED",stage="matcher"} 0
groupmatch_matcher_records_total{matched_by="unionid",outcome="MATCHED",stage="matcher"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "groupmatch_dlq_messages_total",
		"groupmatch_matcher_records_total"); err != nil {
		t.Fatal(err)
	}
}
