package matcher

import (
	"reflect"
	"testing"

	"github.com/groupmatch/groupmatch/pipeline"
)

// TestVerdictMessagePending checks which verdicts carry a pending binding
// (SPEC §13): only NOT_FOUND of a matching batch that defers, with the
// values looked up, the params and the normalised groups.
func TestVerdictMessagePending(t *testing.T) {
	fuzzy := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: 1, OptType: pipeline.OptAdd, DeferUnmatched: true}
	exact := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, AppType: "gzh", AppID: "wx1", OptType: pipeline.OptDelete, DeferUnmatched: true}
	rec := pipeline.RawRecord{IdentityType: "phone", Phone: "+86 138-0000-0000", UnionID: "u1", Groups: " vip ，vip,new"}
	notFound := Verdict{Outcome: pipeline.OutcomeNotFound, Reason: pipeline.ReasonNotFound}
	tests := []struct {
		name string
		p    pipeline.Params
		v    Verdict
		want *pipeline.Pending
	}{
		{"fuzzy", fuzzy, notFound, &pipeline.Pending{
			Identities: map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000000", pipeline.KindUnionID: "u1"},
			Params:     fuzzy, Groups: []string{"vip", "new"}}},
		{"exact", exact, notFound, &pipeline.Pending{
			Identities:   map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000000"},
			IdentityType: pipeline.KindPhone, Params: exact, Groups: []string{"vip", "new"}}},
		{"not deferring", func() pipeline.Params { p := fuzzy; p.DeferUnmatched = false; return p }(), notFound, nil},
		{"ambiguous", fuzzy, Verdict{Outcome: pipeline.OutcomeAmbiguous, Reason: pipeline.ReasonAmbiguous}, nil},
		{"invalid", fuzzy, Verdict{Outcome: pipeline.OutcomeInvalid, Reason: pipeline.ReasonMissingIdentity}, nil},
		{"matched", fuzzy, Verdict{Outcome: pipeline.OutcomeMatched, MatchedBy: pipeline.KindPhone, CustomerID: 7}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, rec)
			r := verdictMessage(pipeline.RecordMessage{TenantID: 1, BatchID: 2, Index: 3, Params: tt.p, Record: rec}, &n, tt.v)
			if !reflect.DeepEqual(r.Pending, tt.want) {
				t.Fatalf("pending %+v, want %+v", r.Pending, tt.want)
			}
			if tt.want != nil && (r.Ref == nil || r.Late) {
				t.Fatalf("deferred verdict %+v: want a ref and not late", r)
			}
		})
	}
}
