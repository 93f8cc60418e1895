package matcher

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// Email is a kind of exact matching and of isMatching=false creation, not
// of either fuzzy order: its rules all come from identity.Kinds.
func TestEmailNormalize(t *testing.T) {
	tests := []struct {
		name        string
		p           pipeline.Params
		r           pipeline.RawRecord
		wantInvalid pipeline.Reason
		wantValue   string
		wantRef     string
	}{
		{"exact email", exactParams, pipeline.RawRecord{IdentityType: "email", Email: " Alice@Example.COM ", Groups: "g"},
			"", "alice@example.com", "a***@example.com"},
		{"exact EMAIL any case", exactParams, pipeline.RawRecord{IdentityType: " EMAIL ", Email: "bob@example.org", Groups: "g"},
			"", "bob@example.org", "b***@example.org"},
		{"exact email malformed", exactParams, pipeline.RawRecord{IdentityType: "email", Email: "alice@example", Groups: "g"},
			pipeline.ReasonInvalidEmail, "", "a***@example"},
		{"exact email blocked", exactParams, pipeline.RawRecord{IdentityType: "email", Email: "null", Phone: "13800000000", Groups: "g"},
			pipeline.ReasonMissingIdentity, "", ""},
		{"exact email missing", exactParams, pipeline.RawRecord{IdentityType: "email", Phone: "13800000000", Groups: "g"},
			pipeline.ReasonMissingIdentity, "", ""},
		{"email too long in every mode", fuzzyParams, pipeline.RawRecord{UnionID: "u1", Email: strings.Repeat("a", 250) + "@x.cn", Groups: "g"},
			pipeline.ReasonValueTooLong, "", ""},
		{"email at the limit", exactParams, pipeline.RawRecord{IdentityType: "email", Email: strings.Repeat("a", 249) + "@x.cn", Groups: "g"},
			"", strings.Repeat("a", 249) + "@x.cn", "a***@x.cn"},
		{"fuzzy ignores email: only an email", fuzzyParams, pipeline.RawRecord{Email: "alice@example.com", Groups: "g"},
			pipeline.ReasonMissingIdentity, "alice@example.com", "a***@example.com"},
		{"fuzzy way 2 ignores email", fuzzy2Params, pipeline.RawRecord{Email: "alice@example.com", Groups: "g"},
			pipeline.ReasonMissingIdentity, "alice@example.com", "a***@example.com"},
		{"fuzzy malformed email counts as lacking", fuzzyParams, pipeline.RawRecord{Email: "nope", Groups: "g"},
			pipeline.ReasonMissingIdentity, "", identity.MaskID("nope")},
		{"fuzzy malformed email beside a malformed phone", fuzzyParams, pipeline.RawRecord{Email: "nope", Phone: "123", Groups: "g"},
			pipeline.ReasonInvalidPhone, "", identity.MaskID("nope")},
		{"no matching: malformed email dropped", noMatchParams, pipeline.RawRecord{ThirdID: "crm-1", Email: "nope", Groups: "g"},
			"", "", identity.MaskID("nope")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			if n.Invalid != tt.wantInvalid {
				t.Errorf("Invalid = %q, want %q", n.Invalid, tt.wantInvalid)
			}
			if tt.wantInvalid != pipeline.ReasonValueTooLong {
				if got := n.Value(pipeline.KindEmail); got != tt.wantValue {
					t.Errorf("Value(email) = %q, want %q", got, tt.wantValue)
				}
				if n.Ref.Email != tt.wantRef {
					t.Errorf("Ref.Email = %q, want %q", n.Ref.Email, tt.wantRef)
				}
			}
		})
	}
}

func TestEmailLookupsAndChain(t *testing.T) {
	r := pipeline.RawRecord{IdentityType: "email", Email: "alice@example.com", Phone: "13800000000", Groups: "g"}
	exact := Normalize(exactParams, r)
	if got := exact.Lookups(exactParams); !slices.Equal(got, []pipeline.IdentityKind{pipeline.KindEmail}) {
		t.Errorf("exact Lookups = %v, want [email]", got)
	}
	for _, p := range []pipeline.Params{fuzzyParams, fuzzy2Params} {
		n := Normalize(p, r)
		if got := n.Lookups(p); !slices.Equal(got, []pipeline.IdentityKind{pipeline.KindPhone}) {
			t.Errorf("fuzzy way %d Lookups = %v, want [phone]", p.IdentifyWay, got)
		}
		for _, res := range Chain(p, "") {
			if res.Kind == pipeline.KindEmail {
				t.Errorf("fuzzy way %d chain names email", p.IdentifyWay)
			}
		}
	}
	scoped := scopedExact("gzh", "wx1")
	if got := Chain(scoped, pipeline.KindEmail); !slices.Equal(got, []Resolver{{Kind: pipeline.KindEmail, AppType: "gzh", AppID: "wx1"}}) {
		t.Errorf("scoped exact chain = %+v", got)
	}
	noMatch := Normalize(noMatchParams, pipeline.RawRecord{ThirdID: "crm-1", Email: "Alice@Example.com", Groups: "g"})
	if got := noMatch.values[pipeline.KindOrdinal(pipeline.KindEmail)]; got != "alice@example.com" {
		t.Errorf("isMatching=false keeps email %q for creation", got)
	}
}

func TestEmailResolve(t *testing.T) {
	h := fakeHits{
		{pipeline.KindEmail, "alice@example.com"}: {{CustomerID: 1, AppType: "gzh", AppID: "wx1"}},
		{pipeline.KindEmail, "shared@example.com"}: {
			{CustomerID: 2, AppType: "gzh", AppID: "wx1"},
			{CustomerID: 3},
		},
		{pipeline.KindPhone, "13800000000"}: {{CustomerID: 4}},
	}
	rec := func(it, email string) pipeline.RawRecord {
		return pipeline.RawRecord{IdentityType: it, Email: email, Phone: "13800000000", Groups: "g"}
	}
	tests := []struct {
		name string
		p    pipeline.Params
		r    pipeline.RawRecord
		want Verdict
	}{
		{"exact email", exactParams, rec("email", "ALICE@example.com"), matched(pipeline.KindEmail, 1)},
		{"exact email shared", exactParams, rec("email", "shared@example.com"), ambiguous},
		{"exact email scoped", scopedExact("gzh", "wx1"), rec("email", "shared@example.com"), matched(pipeline.KindEmail, 2)},
		{"exact email scoped elsewhere", scopedExact("gzh", "wx2"), rec("email", "alice@example.com"), notFound},
		{"exact email unknown", exactParams, rec("email", "bob@example.com"), notFound},
		{"exact email malformed", exactParams, rec("email", "bob"), invalid(pipeline.ReasonInvalidEmail)},
		{"fuzzy ignores the email", fuzzyParams, rec("", "alice@example.com"), matched(pipeline.KindPhone, 4)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := Normalize(tt.p, tt.r)
			if got := Resolve(tt.p, &n, h); got != tt.want {
				t.Errorf("Resolve = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// A pending binding by email resolves once the directory learns the email
// (directory load with an "emails" line field), within its application
// filter; pending bindings store identities by kind, so nothing in the
// re-matcher names email.
func TestRematchEmail(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	a := ensureTenant(t, db, "a")
	lines := strings.Join([]string{
		`{"customerId": 1, "thirdId": "crm-1", "emails": ["Alice@Example.com"]}`,
		`{"customerId": 2, "thirdId": "crm-2", "emails": [{"email": "bob@example.com", "appType": "gzh", "appId": "wx1"}]}`,
	}, "\n")
	var learned []directory.Identity
	loader := directory.NewLoader(db)
	loader.OnCommitted = func(_ context.Context, _ int64, ids []directory.Identity) error {
		learned = append(learned, ids...)
		return nil
	}
	if _, err := loader.Load(ctx, a, strings.NewReader(lines)); err != nil {
		t.Fatal(err)
	}
	var emails []string
	for _, id := range learned {
		if id.Kind == pipeline.KindEmail {
			emails = append(emails, fmt.Sprintf("%s→%d", id.Value, id.CustomerID))
		}
	}
	slices.Sort(emails)
	if want := []string{"alice@example.com→1", "bob@example.com→2"}; !slices.Equal(emails, want) {
		t.Errorf("load published emails %v, want %v", emails, want)
	}
	insertPending(t, db,
		fixtureBinding{tenant: a, batch: 20, index: 0, op: pipeline.OptAdd, pending: exactPending(pipeline.KindEmail, "alice@example.com")},
		fixtureBinding{tenant: a, batch: 20, index: 1, op: pipeline.OptAdd, pending: exactPending(pipeline.KindEmail, "bob@example.com", "gzh", "wx2")},
		fixtureBinding{tenant: a, batch: 20, index: 2, op: pipeline.OptAdd, pending: exactPending(pipeline.KindEmail, "bob@example.com", "GZH", "wx1")},
	)
	msgs := []pipeline.DirectoryMessage{
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindEmail, Value: "alice@example.com", CustomerID: 1},
		{Type: pipeline.DirectoryIdentity, TenantID: a, Kind: pipeline.KindEmail, Value: "bob@example.com", CustomerID: 2},
	}
	late, _, err := Rematch(ctx, NewPGStore(db), msgs, func(op func() error) error { return op() })
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, v := range late {
		got = append(got, fmt.Sprintf("%d/%d %s→%d", v.BatchID, v.Index, v.MatchedBy, v.CustomerID))
	}
	slices.Sort(got)
	if want := []string{"20/0 email→1", "20/2 email→2"}; !slices.Equal(got, want) {
		t.Fatalf("late verdicts %v, want %v", got, want)
	}
}
