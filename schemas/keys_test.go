package schemas_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// keyViolations lists, from the catalog, every unique index (primary keys
// and unique constraints included) of a tenant table (schematest.TenantTables)
// whose first column is not tenant_id: on Citus such a table cannot be
// distributed by tenant_id.
func keyViolations(ctx context.Context, conn *pgx.Conn) ([]string, error) {
	tables, err := schematest.TenantTables(ctx, conn)
	if err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, `
		SELECT t.relname, i.relname, a.attname
		FROM pg_index x
		JOIN pg_class t ON t.oid = x.indrelid
		JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
		JOIN pg_class i ON i.oid = x.indexrelid
		LEFT JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = x.indkey[0]
		WHERE x.indisunique AND t.relname = ANY($1)
		ORDER BY 1, 2`, tables)
	if err != nil {
		return nil, fmt.Errorf("read unique indexes: %w", err)
	}
	var bad []string
	var table, index string
	var first *string
	_, err = pgx.ForEachRow(rows, []any{&table, &index, &first}, func() error {
		if first == nil || *first != "tenant_id" {
			bad = append(bad, table+"."+index)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read unique indexes: %w", err)
	}
	var missing []string
	for _, want := range []string{"customers", "customer_phones", "customer_openids", "batches", "batch_records",
		"groups", "memberships", "batch_events_outbox"} {
		if !slices.Contains(tables, want) {
			missing = append(missing, want)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("tables without tenant_id: %v", missing)
	}
	return bad, nil
}

// Every primary key and unique index of a tenant table leads with
// tenant_id (SPEC §12), whatever later migrations add; the check itself
// catches a table that breaks the rule.
func TestTenantKeys(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	bad, err := keyViolations(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("unique indexes of tenant tables not led by tenant_id: %v", bad)
	}

	if _, err := conn.Exec(ctx, `CREATE TABLE guard_probe (tenant_id bigint NOT NULL, id bigint PRIMARY KEY, name text,
		UNIQUE (name, tenant_id))`); err != nil {
		t.Fatal(err)
	}
	bad, err = keyViolations(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"guard_probe.guard_probe_name_tenant_id_key", "guard_probe.guard_probe_pkey"}; !slices.Equal(bad, want) {
		t.Fatalf("a table keyed without tenant_id first: reported %v, want %v", bad, want)
	}
}

// Schema 6 upgrades a database holding data in place: the new tenant_id
// columns are filled from the rows' batches and groups, rows that name no
// tenant are dropped, and running the migrations again changes nothing.
func TestTenantKeysUpgradeInPlace(t *testing.T) {
	ctx := context.Background()
	conn, later := schemaBefore(t, 6)
	if _, err := conn.Exec(ctx, `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (1, 10, 'a', 'add', '{}', 'PROCESSING', 2), (2, 20, 'b', 'add', '{}', 'SUCCESS', 1);
		INSERT INTO batch_records (batch_id, rec_index, outcome) VALUES (1, 0, 'MATCHED'), (2, 0, 'MATCHED'), (99, 0, 'MATCHED');
		INSERT INTO groups (tenant_id, name, visible) VALUES (10, 'vip', true), (20, 'vip', true);
		INSERT INTO memberships (group_id, customer_id, present, batch_id, rec_index)
		VALUES (1, 5, true, 1, 0), (2, 5, true, 2, 0), (77, 5, true, 1, 1);
		INSERT INTO batch_events_outbox (batch_id) VALUES (2)`); err != nil {
		t.Fatal(err)
	}
	n, err := schemas.Migrate(ctx, conn)
	if err != nil || n != later {
		t.Fatalf("upgrade applied %d, %v; want %d", n, err, later)
	}
	for _, q := range []struct{ sql, want string }{
		{`SELECT string_agg(tenant_id || '/' || batch_id || '/' || rec_index, ' ' ORDER BY batch_id) FROM batch_records`, "10/1/0 20/2/0"},
		{`SELECT string_agg(tenant_id || '/' || group_id || '/' || customer_id, ' ' ORDER BY group_id) FROM memberships`, "10/1/5 20/2/5"},
		{`SELECT string_agg(tenant_id || '/' || batch_id, ' ') FROM batch_events_outbox`, "20/2"},
		{`SELECT string_agg(attname, ',' ORDER BY k.i) FROM pg_index x
			CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
			JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
			WHERE x.indexrelid = 'memberships_pkey'::regclass`, "tenant_id,group_id,customer_id"},
	} {
		var got string
		if err := conn.QueryRow(ctx, q.sql).Scan(&got); err != nil || got != q.want {
			t.Errorf("%s\n= %q, %v; want %q", strings.Join(strings.Fields(q.sql), " "), got, err, q.want)
		}
	}
	if bad, err := keyViolations(ctx, conn); err != nil || len(bad) > 0 {
		t.Fatalf("after the upgrade: %v, %v", bad, err)
	}
	if n, err := schemas.Migrate(ctx, conn); err != nil || n != 0 {
		t.Fatalf("second run applied %d, %v", n, err)
	}
}
