package pipeline

import (
	"encoding/json"
	"testing"
)

// TestMembersMatchTags holds Members to the struct tags encoding/json reads:
// the hand-written codecs go through Members, the fallback through the tags.
func TestMembersMatchTags(t *testing.T) {
	check := func(t *testing.T, v any, members []RecordMember) {
		t.Helper()
		for i, m := range members {
			*m.Value = "v" + m.Name
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]string
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if len(got) != i+1 || got[m.Name] != "v"+m.Name {
				t.Errorf("member %q: json.Marshal wrote %s", m.Name, b)
			}
			if r, ok := v.(*RawRecord); ok && r.Member(m.Name) != "v"+m.Name {
				t.Errorf("Member(%q) = %q", m.Name, r.Member(m.Name))
			}
			if _, ok := v.(*RawRecord); ok && MemberIndex([]byte(m.Name)) != i {
				t.Errorf("MemberIndex(%q) = %d, want %d", m.Name, MemberIndex([]byte(m.Name)), i)
			}
			if r, ok := v.(*RecordRef); ok {
				r.Set(m.Name, "w")
				if *m.Value != "w" {
					t.Errorf("Set(%q) did not set it", m.Name)
				}
				*m.Value = "v" + m.Name
			}
		}
	}
	t.Run("record", func(t *testing.T) {
		var r RawRecord
		m := r.Members()
		check(t, &r, m[:])
	})
	t.Run("ref", func(t *testing.T) {
		var r RecordRef
		m := r.Members()
		check(t, &r, m[:])
	})
}

func TestKindOrdinal(t *testing.T) {
	for i, k := range IdentityKinds {
		if got := KindOrdinal(k); got != i {
			t.Errorf("KindOrdinal(%q) = %d, want %d", k, got, i)
		}
	}
	if got := KindOrdinal("mobile"); got != -1 {
		t.Errorf("KindOrdinal(mobile) = %d", got)
	}
}
