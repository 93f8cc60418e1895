package identity

import (
	"slices"
	"testing"

	"github.com/groupmatch/groupmatch/pipeline"
)

// TestKindsTable holds the table to the vocabulary: ordinals follow
// pipeline.IdentityKinds, Field and Raw name the same record member, Ref
// points into a RecordRef.
func TestKindsTable(t *testing.T) {
	for o, k := range Kinds() {
		if k.Name != pipeline.IdentityKinds[o] {
			t.Errorf("ordinal %d: Name %q, pipeline says %q", o, k.Name, pipeline.IdentityKinds[o])
		}
		var r pipeline.RawRecord
		found := false
		for _, m := range r.Members() {
			if m.Name == k.Field {
				*m.Value = "x"
				found = true
			}
		}
		if !found || r.Member(k.Field) != "x" {
			t.Errorf("%s: Field %q is no record member", k.Name, k.Field)
		}
		var ref pipeline.RecordRef
		ref.Set(k.Field, "y")
		if ref == (pipeline.RecordRef{}) {
			t.Errorf("%s: Field %q is no record reference member", k.Name, k.Field)
		}
		if k.Normalize == nil || k.MaxLen <= 0 || k.Directory.Table == "" || k.Directory.Column == "" {
			t.Errorf("%s: incomplete entry", k.Name)
		}
		if k.AppScoped != (k.Directory.AppType != "") {
			t.Errorf("%s: AppScoped %v but application columns %q", k.Name, k.AppScoped, k.Directory.AppType)
		}
		if got, ok := Of(k.Name); !ok || got.Name != k.Name {
			t.Errorf("Of(%q) = %q, %v", k.Name, got.Name, ok)
		}
	}
}

// TestFuzzyOrders pins the platform's two documented identifyWay orders.
func TestFuzzyOrders(t *testing.T) {
	tests := []struct {
		way  int
		want []pipeline.IdentityKind
	}{
		{pipeline.IdentifyUnionIDFirst, []pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}},
		{pipeline.IdentifyThirdIDFirst, []pipeline.IdentityKind{pipeline.KindThirdID, pipeline.KindPhone, pipeline.KindOpenID, pipeline.KindUnionID}},
		{0, []pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}},
		{7, []pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}},
	}
	for _, tt := range tests {
		order, n := FuzzyOrder(tt.way)
		var got []pipeline.IdentityKind
		for _, o := range order[:n] {
			got = append(got, pipeline.IdentityKinds[o])
			if !InFuzzyOrder(tt.way, o) {
				t.Errorf("InFuzzyOrder(%d, %d) = false", tt.way, o)
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("FuzzyOrder(%d) = %v, want %v", tt.way, got, tt.want)
		}
	}
}
