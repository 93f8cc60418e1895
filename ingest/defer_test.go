package ingest

import (
	"context"
	"net/http"
	"testing"

	"github.com/groupmatch/groupmatch/pipeline"
)

// publicParams.deferUnmatched is stored in the batch's params and copied
// into every record message; absent, the tenant's default applies.
func TestDeferUnmatchedDefaultsFromTenant(t *testing.T) {
	r := newRig(t, 1)
	ctx := context.Background()
	if _, err := r.db.Exec(ctx, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES (1, 't')`); err != nil {
		t.Fatal(err)
	}
	const (
		absent = `{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add"},"data":[{"phone":"13800000000","groups":"vip"},{"unionid":"u1","groups":"vip"}]}`
		off    = `{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add","deferUnmatched":false},"data":[{"phone":"13800000000","groups":"vip"}]}`
		on     = `{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add","deferUnmatched":true},"data":[{"phone":"13800000000","groups":"vip"}]}`
		bad    = `{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add","deferUnmatched":"yes"},"data":[{"phone":"13800000000","groups":"vip"}]}`
	)
	cases := []struct {
		name          string
		tenantDefault bool
		body          string
		want          bool
	}{
		{"absent, tenant off", false, absent, false},
		{"given true, tenant off", false, on, true},
		{"absent, tenant on", true, absent, true},
		{"given false, tenant on", true, off, false},
	}
	records := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := r.db.Exec(ctx, `UPDATE tenants SET defer_unmatched = $1 WHERE tenant_id = 1`, c.tenantDefault); err != nil {
				t.Fatal(err)
			}
			code, env := r.post(t, "", c.body)
			if code != http.StatusOK {
				t.Fatalf("HTTP %d %+v", code, env)
			}
			id := int64(env.Data.(float64))
			var p pipeline.Params
			if err := r.db.QueryRow(ctx, `SELECT params FROM batches WHERE batch_id = $1`, id).Scan(&p); err != nil {
				t.Fatal(err)
			}
			if p.DeferUnmatched != c.want {
				t.Errorf("batch params deferUnmatched %v, want %v", p.DeferUnmatched, c.want)
			}
			msgs := readPartition(t, r.brokers, pipeline.DefaultTopics().Records, 0)
			for _, m := range msgs[records:] {
				rec, err := pipeline.DecodeRecord(m.Value)
				if err != nil {
					t.Fatal(err)
				}
				if rec.BatchID != id || rec.Params.DeferUnmatched != c.want {
					t.Errorf("record of batch %d: deferUnmatched %v, want batch %d with %v", rec.BatchID, rec.Params.DeferUnmatched, id, c.want)
				}
			}
			records = len(msgs)
		})
	}
	code, env := r.post(t, "", bad)
	if code != http.StatusBadRequest || env.ErrorCode != "INVALID_PARAMETER" || env.Msg != "publicParams.deferUnmatched must be a boolean" {
		t.Fatalf("non-boolean deferUnmatched: HTTP %d %+v", code, env)
	}
}
