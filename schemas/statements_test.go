package schemas_test

import (
	"context"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// The statement guard (schematest.StatementLog) flags exactly the
// statements that reach a tenant table without naming its tenant.
func TestTenantFilterViolations(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	log := &schematest.StatementLog{}
	cfg.ConnConfig.Tracer = log
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	schematest.SkipOnCitus(t, pool, "Citus refuses some of the deliberately bad statements before the guard sees their plans")
	ids, tenant := []int64{1, 2}, int64(7)
	cases := []struct {
		sql  string
		args []any
		bad  string // "" when fine, else a part of the violation
	}{
		{`SELECT status FROM batches WHERE tenant_id = $1 AND batch_id = ANY($2)`, []any{tenant, ids}, ""},
		{`SELECT status FROM batches WHERE batch_id = ANY($1)`, []any{ids}, "scan of batches (alias batches)"},
		{`UPDATE batches SET status = 'FAILED' WHERE batch_id = $1`, []any{ids[0]}, "scan of batches"},
		{`DELETE FROM batch_events_outbox WHERE tenant_id = $1 AND batch_id = ANY($2)`, []any{tenant, ids}, ""},
		{`INSERT INTO memberships (tenant_id, group_id, customer_id, present, batch_id, rec_index)
			SELECT $1, g, 1, true, 1, 0 FROM unnest($2::bigint[]) AS g ON CONFLICT DO NOTHING`, []any{tenant, ids}, ""},
		{`SELECT g.name, (SELECT count(*) FROM memberships m WHERE m.tenant_id = g.tenant_id AND m.group_id = g.group_id)
			FROM groups g WHERE g.tenant_id = $1`, []any{tenant}, ""},
		{`SELECT g.name, (SELECT count(*) FROM memberships m WHERE m.group_id = g.group_id)
			FROM groups g WHERE g.tenant_id = $1`, []any{tenant}, "scan of memberships (alias m)"},
		{`SELECT m.customer_id FROM memberships m JOIN groups g ON g.group_id = m.group_id
			WHERE g.tenant_id = $1`, []any{tenant}, "alias m"},
		{`SELECT m.customer_id FROM memberships m JOIN groups g ON g.tenant_id = m.tenant_id AND g.group_id = m.group_id
			WHERE g.tenant_id = $1`, []any{tenant}, ""},
		{`WITH o AS (SELECT batch_id FROM batch_events_outbox) SELECT * FROM o`, nil, "scan of batch_events_outbox"},
		{`SELECT ` + schematest.AllTenants + ` tenant_id, batch_id FROM batch_events_outbox ORDER BY batch_id LIMIT 5`, nil, ""},
		{`SELECT ` + schematest.AllTenants + ` batch_id FROM batch_events_outbox LIMIT 5 FOR UPDATE SKIP LOCKED`, nil, "writes or locks"},
		{`SELECT appid FROM applications WHERE appid = $1`, []any{"x"}, ""}, // a reference table
		{`SELECT nextval('batch_id_seq')`, nil, ""},
	}
	for _, c := range cases {
		if _, err := pool.Exec(ctx, c.sql, c.args...); err != nil {
			t.Fatalf("%s: %v", c.sql, err)
		}
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT count(*) FROM customers WHERE third_id = $1`, "crm-1")
	if err := pool.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	got, err := log.TenantFilterViolations(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, c := range append(cases, struct {
		sql  string
		args []any
		bad  string
	}{`SELECT count(*) FROM customers WHERE third_id = $1`, nil, "scan of customers"}) {
		if c.bad == "" {
			for _, g := range got {
				if strings.HasSuffix(g, strings.Join(strings.Fields(c.sql), " ")) {
					t.Errorf("flagged a good statement: %s", g)
				}
			}
			continue
		}
		want++
		found := false
		for _, g := range got {
			found = found || strings.Contains(g, c.bad) && strings.HasSuffix(g, strings.Join(strings.Fields(c.sql), " "))
		}
		if !found {
			t.Errorf("not flagged (%q expected): %s", c.bad, c.sql)
		}
	}
	if len(got) != want {
		t.Errorf("%d violations, want %d:\n%s", len(got), want, strings.Join(got, "\n"))
	}
}
