package schemas_test

import (
	"context"
	"testing"

	"github.com/groupmatch/groupmatch/schemas"
)

// Schema 9 upgrades the per-kind counters of existing batches in place:
// matched_unionid, matched_openid, matched_phone and matched_id become the
// matched_by array, by kind ordinal, and running the migrations again
// changes nothing.
func TestMatchedByUpgradeInPlace(t *testing.T) {
	ctx := context.Background()
	conn, later := schemaBefore(t, 9)
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
