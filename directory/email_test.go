package directory

import (
	"context"
	"slices"
	"testing"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// Emails travel like phones: loaded from the "emails" line field in
// canonical form (COPY for new customers, merged for known ones), looked
// up in one query per chunk, and given to customers isMatching=false
// creates, bound through the application.
func TestEmails(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	a := ensureTenant(t, db, "a")
	loadLines(t, db, a,
		`{"customerId": 1, "thirdId": "crm-1", "emails": [" Alice@Example.com "]}`,
		`{"customerId": 2, "thirdId": "crm-2", "emails": [{"email": "shared@example.com", "appType": "gzh", "appId": "wx1"}]}`,
	)
	// Merged into a known customer.
	loadLines(t, db, a, `{"customerId": 1, "emails": ["shared@example.com"]}`)
	dir := NewPGDirectory(db)
	res, err := dir.FindOrCreate(ctx, []CreateRequest{{TenantID: a, ThirdID: "crm-new",
		Values: kindValues(map[pipeline.IdentityKind]string{pipeline.KindEmail: "new@example.com"}), AppType: "YOUZAN", AppID: "shop1"}})
	if err != nil || !res[0].Created {
		t.Fatalf("FindOrCreate = %+v, %v", res, err)
	}
	hits, err := dir.Lookup(ctx, []Key{
		{a, pipeline.KindEmail, "alice@example.com"},
		{a, pipeline.KindEmail, "shared@example.com"},
		{a, pipeline.KindEmail, "new@example.com"},
		{a, pipeline.KindEmail, "Alice@Example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	sortBindings := func(bs []identity.Binding) []identity.Binding {
		bs = slices.Clone(bs)
		slices.SortFunc(bs, func(x, y identity.Binding) int { return int(x.CustomerID - y.CustomerID) })
		return bs
	}
	for _, tt := range []struct {
		value string
		want  []identity.Binding
	}{
		{"alice@example.com", []identity.Binding{{CustomerID: 1}}},
		{"shared@example.com", []identity.Binding{{CustomerID: 1}, {CustomerID: 2, AppType: "gzh", AppID: "wx1"}}},
		{"new@example.com", []identity.Binding{{CustomerID: res[0].CustomerID, AppType: "YOUZAN", AppID: "shop1"}}},
		{"Alice@Example.com", nil},
	} {
		if b := sortBindings(hits.Bindings(a, pipeline.KindEmail, tt.value)); !slices.Equal(b, tt.want) {
			t.Errorf("Lookup(%q) = %v, want %v", tt.value, b, tt.want)
		}
	}
}
