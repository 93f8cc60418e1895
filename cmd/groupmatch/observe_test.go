package main

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

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
