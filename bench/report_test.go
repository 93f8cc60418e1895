package bench

import (
	"strings"
	"testing"
)

// ParseMetrics sums each metric over its label sets, gives histograms as
// _count and _sum, and refuses what is not the text format.
func TestParseMetrics(t *testing.T) {
	text := `# HELP groupmatch_sink_records_total Records applied.
# TYPE groupmatch_sink_records_total counter
groupmatch_sink_records_total{outcome="MATCHED"} 90
groupmatch_sink_records_total{outcome="NOT_FOUND"} 10
# TYPE groupmatch_batches_in_flight gauge
groupmatch_batches_in_flight 3
# TYPE groupmatch_sink_chunk_duration_seconds histogram
groupmatch_sink_chunk_duration_seconds_bucket{le="0.1"} 4
groupmatch_sink_chunk_duration_seconds_bucket{le="+Inf"} 5
groupmatch_sink_chunk_duration_seconds_sum 0.75
groupmatch_sink_chunk_duration_seconds_count 5
process_cpu_seconds_total 1.5
`
	got, err := ParseMetrics(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{
		"groupmatch_sink_records_total":                100,
		"groupmatch_batches_in_flight":                 3,
		"groupmatch_sink_chunk_duration_seconds_count": 5,
		"groupmatch_sink_chunk_duration_seconds_sum":   0.75,
		"process_cpu_seconds_total":                    1.5,
	}
	if len(got) != len(want) {
		t.Errorf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	if _, err := ParseMetrics(strings.NewReader("groupmatch_x{broken 1\n")); err == nil {
		t.Error("a malformed line was accepted")
	}
}
