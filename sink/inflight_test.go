package sink

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// The batch collector counts the PROCESSING batches and reports when the
// oldest was accepted; none in flight leaves the timestamp out.
func TestBatchCollector(t *testing.T) {
	pool, _ := schematest.NewPool(t)
	ctx := context.Background()
	c := NewBatchCollector(pool, slog.New(slog.DiscardHandler))
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	want := func(body string) {
		t.Helper()
		if err := testutil.GatherAndCompare(reg, strings.NewReader(body)); err != nil {
			t.Error(err)
		}
	}
	const header = `
# HELP groupmatch_batches_in_flight Accepted batches not yet final (status PROCESSING).
# TYPE groupmatch_batches_in_flight gauge
# HELP groupmatch_batches_in_flight_collect_errors_total Scrapes that could not count the batches in flight.
# TYPE groupmatch_batches_in_flight_collect_errors_total counter
groupmatch_batches_in_flight_collect_errors_total 0
`
	want(header + "groupmatch_batches_in_flight 0\n")

	for i, status := range []string{"PROCESSING", "PROCESSING", "SUCCESS", "PENDING"} {
		if _, err := pool.Exec(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, accepted_at)
			VALUES ($1::bigint, 1, 'a', 'add', '{}', $2, 1, to_timestamp(1700000000 + $1::bigint))`, i+1, status); err != nil {
			t.Fatal(err)
		}
	}
	want(header + `groupmatch_batches_in_flight 2
# HELP groupmatch_batch_oldest_in_flight_accepted_timestamp_seconds Acceptance time of the oldest batch in flight, as a Unix time; absent when none is.
# TYPE groupmatch_batch_oldest_in_flight_accepted_timestamp_seconds gauge
groupmatch_batch_oldest_in_flight_accepted_timestamp_seconds 1.700000001e+09
`)
}
