package matcher

import (
	"bytes"
	"slices"
	"testing"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Every isMatching=false record that found or created its customer tells
// the directory topic each of its normalised identities; matching
// records, and records that did not reach a customer, tell nothing. Keys
// name no value.
func TestLearnedIdentities(t *testing.T) {
	noMatch := pipeline.Params{OptType: pipeline.OptAdd, AppType: "gzh", AppID: "wx1"}
	fuzzy := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyUnionIDFirst, OptType: pipeline.OptAdd}
	rec := pipeline.RawRecord{ThirdID: " crm-1 ", Phone: "+86 138 0000 0001", OpenID: "oA", UnionID: "null", Groups: "vip"}
	mk := func(p pipeline.Params, outcome pipeline.Outcome, customer int64) item {
		it := item{msg: pipeline.RecordMessage{TenantID: 3, BatchID: 9, Params: p, Record: rec}, norm: Normalize(p, rec)}
		it.out = pipeline.ResolvedMessage{Outcome: outcome, CustomerID: customer}
		return it
	}
	items := []item{
		mk(noMatch, pipeline.OutcomeMatched, 1<<52+5), // created (or found again)
		mk(noMatch, pipeline.OutcomeAmbiguous, 0),
		mk(noMatch, pipeline.OutcomeFailed, 0), // a closed batch
		mk(fuzzy, pipeline.OutcomeMatched, 77),
	}
	msgs, err := learnedIdentities(items)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		d, err := pipeline.DecodeDirectory(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(m.Key, pipeline.DirectoryKey(d)) || bytes.Contains(m.Key, []byte(d.Value)) {
			t.Errorf("key %q of %+v", m.Key, d)
		}
		if d.Type != pipeline.DirectoryIdentity || d.TenantID != 3 || d.CustomerID != 1<<52+5 {
			t.Errorf("message %+v", d)
		}
		got = append(got, string(d.Kind)+"/"+d.Value)
	}
	slices.Sort(got)
	want := []string{"id/crm-1", "openid/oA", "phone/13800000001"}
	if !slices.Equal(got, want) {
		t.Fatalf("identities %q, want %q", got, want)
	}
}
