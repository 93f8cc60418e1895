package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// pgx failures reach the log at the documented levels, with the statement
// but without its arguments or a message that quotes a value.
func TestPgxTracerLogs(t *testing.T) {
	url := schematest.NewDatabase(t)
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&lockedWriter{w: &buf}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.Tracer = pgxTracer(log)
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	const secret = "13811112222x"
	if _, err := pool.Exec(ctx, "SELECT $1::text::bigint", secret); err == nil {
		t.Fatal("the bad cast succeeded")
	}
	if _, err := pool.Exec(ctx, "SELECT nosuchcolumn FROM batches WHERE appid = $1", secret); err == nil {
		t.Fatal("the bad query succeeded")
	}
	if _, err := pool.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = pool.Exec(cctx, "SELECT pg_sleep(1) WHERE $1 <> ''", secret)

	logs := buf.String()
	if strings.Contains(logs, secret) {
		t.Errorf("a query argument reached the log:\n%s", logs)
	}
	for _, want := range []string{
		`"level":"WARN","msg":"postgres: query failed","component":"pgx","op":"Query","sql":"SELECT $1::text::bigint"`,
		`"err":"postgres error SQLSTATE 22P02"`,
		`"err":"postgres error SQLSTATE 42703: column \"nosuchcolumn\" does not exist"`,
	} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %s", want)
		}
	}
	if strings.Contains(logs, "SELECT 1") {
		t.Errorf("a statement that succeeded was logged:\n%s", logs)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		if strings.Contains(line, "pg_sleep") && !strings.Contains(line, `"level":"DEBUG"`) {
			t.Errorf("a cancelled statement was logged above debug: %s", line)
		}
	}
	if t.Failed() {
		t.Logf("logs:\n%s", logs)
	}
}

// The batch collector counts the PROCESSING batches and reports when the
// oldest was accepted; none in flight leaves the timestamp out.
func TestBatchCollector(t *testing.T) {
	pool, _ := schematest.NewPool(t)
	ctx := context.Background()
	c := newBatchCollector(pool, slog.New(slog.DiscardHandler))
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
