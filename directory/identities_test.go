package directory

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// The commit hook hears every identity of every committed chunk, in the
// normalised form the matcher looks up, each (kind, value, customer) once;
// loading again hears them again; a hook error ends the load after the
// chunk committed.
func TestLoadCommitHook(t *testing.T) {
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "hook")
	file := strings.Join([]string{
		`{"customerId": 1, "thirdId": " crm-1 ", "unionid": "u1", "phones": ["+86 138-0000-0001", {"phone": "13800000001", "appType": "gzh", "appId": "wx1"}]}`,
		`{"customerId": 2, "thirdId": "null", "openids": [{"openid": "oA", "appType": "gzh", "appId": "wx1"}, {"openid": "oA", "appType": "gzh", "appId": "wx2"}]}`,
		`{"customerId": 3, "openids": [{"openid": "oA", "appType": "gzh", "appId": "wx1"}]}`,
		`{"customerId": 1, "unionid": "u1b"}`, // merged: the later unionid
		`not json`,
	}, "\n")
	want := []string{"id/crm-1/1", "openid/oA/2", "openid/oA/3", "phone/13800000001/1", "unionid/u1b/1"}

	var mu sync.Mutex
	var got []string
	l := NewLoader(db)
	l.ChunkLines = 2
	l.OnCommitted = func(ctx context.Context, tenantID int64, ids []Identity) error {
		if tenantID != tenant {
			t.Errorf("tenant %d, want %d", tenantID, tenant)
		}
		mu.Lock()
		defer mu.Unlock()
		for _, id := range ids {
			got = append(got, fmt.Sprintf("%s/%s/%d", id.Kind, id.Value, id.CustomerID))
		}
		return nil
	}
	load := func() {
		t.Helper()
		got = nil
		if _, err := l.Load(context.Background(), tenant, strings.NewReader(file)); err != nil {
			t.Fatal(err)
		}
		slices.Sort(got)
		// Customer 1's two lines are in different chunks: its first
		// unionid is heard too (it was committed, then replaced).
		got = slices.DeleteFunc(got, func(s string) bool { return s == "unionid/u1/1" })
		if !slices.Equal(got, want) {
			t.Fatalf("hook heard %q, want %q", got, want)
		}
	}
	load()
	load() // a re-run republishes

	boom := errors.New("kafka down")
	l.OnCommitted = func(context.Context, int64, []Identity) error { return boom }
	if _, err := l.Load(context.Background(), tenant, strings.NewReader(`{"customerId": 9, "thirdId": "crm-9"}`)); !errors.Is(err, boom) {
		t.Fatalf("load with a failing hook: %v", err)
	}
	var n int
	if err := db.QueryRow(context.Background(), `SELECT count(*) FROM customers WHERE tenant_id = $1 AND customer_id = 9`, tenant).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the chunk before the failing hook: %d rows, %v; want committed", n, err)
	}
}
