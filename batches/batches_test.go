package batches_test

import (
	"context"
	"reflect"
	"testing"

	"github.com/groupmatch/groupmatch/batches"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// TestRead reads summaries against a real database: counters, matchedBy
// without the kinds that matched nothing, error counts per batch, PENDING
// read as PROCESSING, and another tenant's batch left out.
func TestRead(t *testing.T) {
	ctx := context.Background()
	db, _ := schematest.NewPool(t)
	for _, q := range []string{
		`INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total, processed, success, unmatched,
			invalid, matched_by, groups_created, finished_at)
		 VALUES (1, 7, 'app', 'add', '{}', 'PARTIAL_SUCCESS', 4, 4, 2, 1, 1, '{1,0,1,0}', 1, now())`,
		`INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		 VALUES (2, 7, 'app', 'add', '{}', 'PENDING', 3)`,
		`INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		 VALUES (3, 8, 'app', 'add', '{}', 'PENDING', 3)`,
		`INSERT INTO batch_records (tenant_id, batch_id, rec_index, outcome, reason) VALUES
		 (7, 1, 0, 'UNMATCHED', 'NO_MATCH'), (7, 1, 1, 'INVALID', 'INVALID_PHONE'), (7, 1, 2, 'SUCCESS', NULL)`,
	} {
		if _, err := db.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	sums, err := batches.Read(ctx, db, 7, []int64{2, 1, 3, 99})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 2 || sums[0].BatchID != 1 || sums[1].BatchID != 2 {
		t.Fatalf("read %+v, want batches 1 and 2 of tenant 7", sums)
	}
	s := sums[0]
	if s.TenantID != 7 || s.Status != "PARTIAL_SUCCESS" || s.Total != 4 || s.Success != 2 || s.Unmatched != 1 ||
		s.Invalid != 1 || s.GroupsCreated != 1 || s.FinishedAt == nil {
		t.Errorf("summary of batch 1 = %+v", s)
	}
	if want := map[string]int{"unionid": 1, "phone": 1}; !reflect.DeepEqual(s.MatchedBy, want) {
		t.Errorf("matchedBy = %v, want %v", s.MatchedBy, want)
	}
	if want := map[string]int{"NO_MATCH": 1, "INVALID_PHONE": 1}; !reflect.DeepEqual(s.ErrorCounts, want) {
		t.Errorf("errorCounts = %v, want %v", s.ErrorCounts, want)
	}
	if p := sums[1]; p.Status != "PROCESSING" || p.FinishedAt != nil || len(p.ErrorCounts) != 0 || p.ErrorCounts == nil {
		t.Errorf("pending batch 2 = %+v, want PROCESSING with empty error counts", p)
	}
	none, err := batches.Read(ctx, db, 7, []int64{3})
	if err != nil || len(none) != 0 {
		t.Errorf("another tenant's batch: %v, %v; want none", none, err)
	}
}
