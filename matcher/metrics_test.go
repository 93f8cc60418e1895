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
groupmatch_matcher_records_total{matched_by="email",outcome="MATCHED",stage="matcher"} 0
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

// The re-matcher's series exist at 0 from the start, labelled
// stage="rematcher", beside the matcher's in one registry.
func TestRematchMetricsPreinitialised(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	NewMetrics(reg)
	NewRematchMetrics(reg)
	want := `
# HELP groupmatch_rematcher_directory_messages_total Directory messages consumed, by type (identity, recheck).
# TYPE groupmatch_rematcher_directory_messages_total counter
groupmatch_rematcher_directory_messages_total{stage="rematcher",type="identity"} 0
groupmatch_rematcher_directory_messages_total{stage="rematcher",type="recheck"} 0
# HELP groupmatch_rematcher_late_matches_total Late MATCHED verdicts written to the resolved topic, by the identifier that matched (redeliveries count again; the sink applies each once).
# TYPE groupmatch_rematcher_late_matches_total counter
groupmatch_rematcher_late_matches_total{matched_by="email",stage="rematcher"} 0
groupmatch_rematcher_late_matches_total{matched_by="id",stage="rematcher"} 0
groupmatch_rematcher_late_matches_total{matched_by="openid",stage="rematcher"} 0
groupmatch_rematcher_late_matches_total{matched_by="phone",stage="rematcher"} 0
groupmatch_rematcher_late_matches_total{matched_by="unionid",stage="rematcher"} 0
# HELP groupmatch_rematcher_rechecks_total Pending bindings resolved again, by outcome; only MATCHED ones are applied, the others stay pending.
# TYPE groupmatch_rematcher_rechecks_total counter
groupmatch_rematcher_rechecks_total{outcome="AMBIGUOUS",stage="rematcher"} 0
groupmatch_rematcher_rechecks_total{outcome="INVALID",stage="rematcher"} 0
groupmatch_rematcher_rechecks_total{outcome="MATCHED",stage="rematcher"} 0
groupmatch_rematcher_rechecks_total{outcome="NOT_FOUND",stage="rematcher"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "groupmatch_rematcher_directory_messages_total",
		"groupmatch_rematcher_late_matches_total", "groupmatch_rematcher_rechecks_total"); err != nil {
		t.Fatal(err)
	}
}
