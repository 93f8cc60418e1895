package schemas_test

import (
	"context"
	"testing"

	"github.com/groupmatch/groupmatch/schemas"
)

// Schema 11 derives the applied bitmap (batches.done) of every batch still
// PROCESSING from its ledger rows, so a record redelivered after the
// upgrade stays a duplicate; finished and PENDING batches keep an empty
// one, the ledger rows stay, and running the migrations again changes
// nothing.
func TestAppliedBitmapUpgradeInPlace(t *testing.T) {
	ctx := context.Background()
	conn, later := schemaBefore(t, 11)
	// Batch 1 (20 records) is in flight with records 0, 3, 8, 9 and 19
	// recorded; batch 2 of another tenant with none; batch 3 finished;
	// batch 4 is PENDING.
	if _, err := conn.Exec(ctx, `
		INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, processed, success, unmatched)
		VALUES (1, 10, 'a', 'add', '{}', 'PROCESSING', 20, 5, 4, 1), (2, 20, 'a', 'add', '{}', 'PROCESSING', 3, 0, 0, 0),
		       (3, 10, 'a', 'add', '{}', 'SUCCESS', 1, 1, 1, 0), (4, 10, 'a', 'add', '{}', 'PENDING', 2, 0, 0, 0);
		INSERT INTO batch_records (tenant_id, batch_id, rec_index, outcome, reason)
		VALUES (10, 1, 0, 'MATCHED', NULL), (10, 1, 3, 'MATCHED', NULL), (10, 1, 8, 'NOT_FOUND', 'NOT_FOUND'),
		       (10, 1, 9, 'MATCHED', NULL), (10, 1, 19, 'MATCHED', NULL), (10, 3, 0, 'MATCHED', NULL)`); err != nil {
		t.Fatal(err)
	}
	if n, err := schemas.Migrate(ctx, conn); err != nil || n != later {
		t.Fatalf("upgrade applied %d, %v; want %d", n, err, later)
	}
	// Bit i is get_bit(done, i): byte i / 8, from its least significant bit.
	const want = `1:\x090308 2:\x00 3:\x 4:\x`
	var got string
	if err := conn.QueryRow(ctx, `SELECT string_agg(batch_id || ':' || done::text, ' ' ORDER BY batch_id) FROM batches`).Scan(&got); err != nil || got != want {
		t.Errorf("done after the upgrade = %q, %v; want %q", got, err, want)
	}
	var rows int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM batch_records`).Scan(&rows); err != nil || rows != 6 {
		t.Errorf("%d ledger rows after the upgrade, %v; want the 6 kept", rows, err)
	}
	if n, err := schemas.Migrate(ctx, conn); err != nil || n != 0 {
		t.Fatalf("second run applied %d, %v", n, err)
	}
}
