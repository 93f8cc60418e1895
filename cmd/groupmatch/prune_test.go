package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// TestPruneCommand prunes an expired batch once and keeps a recent one;
// a retention below an hour is refused.
func TestPruneCommand(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `
		INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES (1, 't');
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, processed, success, finished_at)
		VALUES (1, 1, 'app', 'add', '{}', 'SUCCESS', 1, 1, 1, now() - interval '3 hours'),
		       (2, 1, 'app', 'add', '{}', 'SUCCESS', 1, 1, 1, now() - interval '1 hour')`); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"prune", "--database-url", url, "--result-retention", "2h", "--once"}, &out, &errOut); err != nil {
		t.Fatalf("prune: %v\n%s", err, errOut.String())
	}
	if !strings.HasPrefix(out.String(), "pruned 1 batches,") {
		t.Errorf("output %q", out.String())
	}
	var left []int64
	rows, _ := conn.Query(ctx, `SELECT batch_id FROM batches`)
	if left, err = pgx.CollectRows(rows, pgx.RowTo[int64]); err != nil || len(left) != 1 || left[0] != 2 {
		t.Errorf("batches left %v (%v), want 2", left, err)
	}

	err = run(ctx, []string{"prune", "--database-url", url, "--result-retention", time.Minute.String(), "--once"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "--result-retention must be at least 1h") {
		t.Errorf("retention 1m: %v", err)
	}
}
