package schemas_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// Schema 9 upgrades the per-kind counters of existing batches in place:
// matched_unionid, matched_openid, matched_phone and matched_id become the
// matched_by array, by kind ordinal, and running the migrations again
// changes nothing.
func TestMatchedByUpgradeInPlace(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schematest.SkipOnCitus(t, conn, "DROP SCHEMA public CASCADE would drop the extension with it")
	ms, err := schemas.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public;
		CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	later := 0
	for _, m := range ms {
		if m.Version >= 9 {
			later++
			continue
		}
		if _, err := conn.Exec(ctx, m.SQL); err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, processed, success,
			matched_unionid, matched_openid, matched_phone, matched_id)
		VALUES (1, 10, 'a', 'add', '{}', 'SUCCESS', 10, 10, 10, 1, 2, 3, 4),
		       (2, 10, 'a', 'add', '{}', 'PROCESSING', 5, 0, 0, 0, 0, 0, 0)`); err != nil {
		t.Fatal(err)
	}
	if n, err := schemas.Migrate(ctx, conn); err != nil || n != later {
		t.Fatalf("upgrade applied %d, %v; want %d", n, err, later)
	}
	var got string
	if err := conn.QueryRow(ctx, `SELECT string_agg(batch_id || ':' || matched_by::text, ' ' ORDER BY batch_id) FROM batches`).Scan(&got); err != nil || got != "1:{1,2,3,4} 2:{}" {
		t.Errorf("matched_by after the upgrade = %q, %v; want %q", got, err, "1:{1,2,3,4} 2:{}")
	}
	var old int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = 'batches' AND column_name LIKE 'matched\_%' AND column_name <> 'matched_by'`).Scan(&old); err != nil || old != 0 {
		t.Errorf("%d per-kind counter columns left, %v", old, err)
	}
	if n, err := schemas.Migrate(ctx, conn); err != nil || n != 0 {
		t.Fatalf("second run applied %d, %v", n, err)
	}
}
