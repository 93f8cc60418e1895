package matcher

// The randomized equivalence test: generated directories are loaded with
// the Loader into PostgreSQL, generated records are resolved chunk by chunk
// exactly as the stage does (Normalize, one PGDirectory.Lookup, Resolve,
// FindOrCreate: resolveChunk), and every verdict is compared with a plain
// reference written from SPEC §5 over the generator's own model of the
// directory and of each record's meaning. The reference never calls
// Normalize or Resolve: it knows what each rendered value means because it
// rendered it.
//
// Fixed seeds run in `go test`; explore others with
//
//	go test ./matcher/ -run TestEquivalence -equivalence.seed=12345
//	GROUPMATCH_EQUIVALENCE_SEED=12345 go test ./matcher/ -run TestEquivalence

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

var equivalenceSeed = flag.Uint64("equivalence.seed", 0, "run TestEquivalence with this seed only (also GROUPMATCH_EQUIVALENCE_SEED)")

// equivalenceSeeds are the seeds `go test` runs.
var equivalenceSeeds = []uint64{1, 2, 3}

func TestEquivalence(t *testing.T) {
	seeds := equivalenceSeeds
	if s := os.Getenv("GROUPMATCH_EQUIVALENCE_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("GROUPMATCH_EQUIVALENCE_SEED: %v", err)
		}
		seeds = []uint64{n}
	}
	if *equivalenceSeed != 0 {
		seeds = []uint64{*equivalenceSeed}
	}
	for _, seed := range seeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runEquivalence(t, seed, 4000)
		})
	}
}

// refApp is an application identities are bound through; the zero value is
// none.
type refApp struct{ typ, id string }

var (
	refApps = []refApp{{"gzh", "wx1"}, {"gzh", "wx2"}, {"workwechat", "ww1"}, {"YOUZAN", "shop1"}, {"EZR", "ezr1"}}
	// A scope no identity is bound through.
	refAppNobody = refApp{"contenthome", "home9"}
)

// refBound is an identity value with its binding.
type refBound struct {
	value string
	app   refApp
}

// refCustomer is a directory customer as the reference knows it:
// canonical values only.
type refCustomer struct {
	id      int64
	third   string // "" for none
	union   refBound
	phones  []refBound
	openids []refBound
}

// refTenant is one tenant's directory, as a plain list.
type refTenant struct {
	id        int64
	customers []*refCustomer
	byID      map[int64]*refCustomer
	// Value pools records draw their identities from.
	thirds, unions, phones, openids []string
	// Identities of customers created by isMatching=false records, which
	// later records name often.
	created []*refCustomer
}

// holders returns, in increasing order, the customers holding value as an
// identity of kind k; with a scope, only bindings through that application
// count (SPEC §5), except for a thirdId, which belongs to the enterprise.
func (t *refTenant) holders(k pipeline.IdentityKind, value string, scope refApp) []int64 {
	counts := func(b refBound) bool {
		return b.value == value && (scope == refApp{} || b.app == scope)
	}
	var out []int64
	for _, c := range t.customers {
		has := false
		switch k {
		case pipeline.KindThirdID:
			has = c.third == value
		case pipeline.KindUnionID:
			has = counts(c.union)
		case pipeline.KindPhone:
			has = slices.ContainsFunc(c.phones, counts)
		case pipeline.KindOpenID:
			has = slices.ContainsFunc(c.openids, counts)
		}
		if has && !slices.Contains(out, c.id) {
			out = append(out, c.id)
		}
	}
	slices.Sort(out)
	return out
}

// A generated field is in one of these states.
type fieldState int

const (
	fieldAbsent    fieldState = iota // "" or left out
	fieldBlocked                     // a blocked spelling: null, 0, …
	fieldMalformed                   // phones only
	fieldOK                          // a usable value
)

// genField is a record field: what was sent and what it means.
type genField struct {
	state fieldState
	value string // canonical, when fieldOK
	sent  string
}

// genRecord is a generated record and its meaning.
type genRecord struct {
	tenant                      *refTenant
	p                           pipeline.Params
	identityType                string // as sent
	third, union, phone, openid genField
	groups                      groupCase
}

func (r *genRecord) field(k pipeline.IdentityKind) genField {
	switch k {
	case pipeline.KindThirdID:
		return r.third
	case pipeline.KindUnionID:
		return r.union
	case pipeline.KindPhone:
		return r.phone
	}
	return r.openid
}

type groupCase struct {
	raw    string
	want   []string
	reason pipeline.Reason
}

var groupCases = []groupCase{
	{"vip", []string{"vip"}, ""},
	{"vip,new", []string{"vip", "new"}, ""},
	{" a ，b,a ,", []string{"a", "b"}, ""},
	{strings.Repeat("组", 64), []string{strings.Repeat("组", 64)}, ""},
	{" , ，", nil, pipeline.ReasonNoGroups},
	{"", nil, pipeline.ReasonNoGroups},
	{"ok," + strings.Repeat("组", 65), nil, pipeline.ReasonGroupNameTooLong},
}

var blockedSpellings = []string{"null", "NULL", "undefined", "Undefined", "0", "000", "-1", " ", " null "}

// malformedPhones fail NormalizePhone and are not blocked.
var malformedPhones = []string{"1380000000", "12800000000", "138-0000-000", "+1234567", "abc", "1390000000011", "86 1280000 0000"}

type gen struct {
	rng *rand.Rand
}

func (g *gen) pick(s []string) string { return s[g.rng.IntN(len(s))] }

// chance reports true with probability p percent.
func (g *gen) chance(p int) bool { return g.rng.IntN(100) < p }

func (g *gen) app() refApp { return refApps[g.rng.IntN(len(refApps))] }

// pad surrounds s with white space sometimes; normalisation trims it.
func (g *gen) pad(s string) string {
	switch g.rng.IntN(6) {
	case 0:
		return " " + s
	case 1:
		return s + "\t"
	}
	return s
}

// renderPhone writes a canonical phone in one of the spellings that mean
// it.
func (g *gen) renderPhone(c string) string {
	if strings.HasPrefix(c, "+") {
		switch g.rng.IntN(3) {
		case 0:
			return c
		case 1:
			return c[:3] + " " + c[3:5] + " " + c[5:9] + " " + c[9:]
		}
		return "00" + c[1:]
	}
	switch g.rng.IntN(8) {
	case 0:
		return "+86" + c
	case 1:
		return "+86 " + c[:3] + "-" + c[3:7] + "-" + c[7:]
	case 2:
		return "0086 " + c
	case 3:
		return "86" + c
	case 4:
		return "(" + c[:3] + ") " + c[3:7] + " " + c[7:]
	case 5:
		return " " + c + " "
	}
	return c
}

// newTenant generates a tenant's directory: customers drawing identities
// from small pools, so that phones, unionids, openids (also under two
// applications) and even thirdIds are shared.
func (g *gen) newTenant(id int64, customers int) *refTenant {
	t := &refTenant{id: id, byID: map[int64]*refCustomer{}}
	for i := range customers * 3 / 4 {
		t.thirds = append(t.thirds, fmt.Sprintf("crm-%d", i))
	}
	for i := range customers * 2 / 3 {
		if i%10 == 9 {
			t.phones = append(t.phones, fmt.Sprintf("+4420794%05d", i))
		} else {
			t.phones = append(t.phones, fmt.Sprintf("13%d%08d", 5+i%5, i))
		}
	}
	for i := range customers * 4 / 5 {
		t.unions = append(t.unions, fmt.Sprintf("o6_u%d", i))
	}
	for i := range customers * 2 / 3 {
		t.openids = append(t.openids, fmt.Sprintf("oA_%d", i))
	}
	for i := range customers {
		c := &refCustomer{id: int64(i+1) * 7}
		switch {
		case g.chance(5):
		case g.chance(3):
			c.third = g.pick(t.thirds) // maybe shared
		default:
			c.third = t.thirds[i%len(t.thirds)]
		}
		if g.chance(75) {
			c.union = refBound{value: g.pick(t.unions)}
			if g.chance(30) {
				c.union.app = g.app()
			}
		}
		for range g.rng.IntN(4) {
			b := refBound{value: g.pick(t.phones)}
			if g.chance(30) {
				b.app = g.app()
			}
			if !slices.Contains(c.phones, b) {
				c.phones = append(c.phones, b)
			}
		}
		for range g.rng.IntN(4) {
			b := refBound{value: g.pick(t.openids), app: g.app()}
			if !slices.Contains(c.openids, b) {
				c.openids = append(c.openids, b)
			}
		}
		t.customers = append(t.customers, c)
		t.byID[c.id] = c
	}
	return t
}

// directoryFile renders the tenant's directory as directory lines, some
// customers split over two lines far apart, blocked spellings for absent
// fields, and bad lines whose customers the reference then drops. It
// returns the file and the numbers of the bad lines.
func (g *gen) directoryFile(t *refTenant) (string, []int) {
	type line struct {
		c   matchertest.Customer
		bad bool
	}
	var lines []line
	type deferred struct {
		after int // index of the customer's first line
		l     line
	}
	var seconds []deferred
	var keep []*refCustomer
	for _, c := range t.customers {
		mc := matchertest.Customer{ID: c.id}
		if c.third != "" {
			mc.ThirdID = g.pad(c.third)
		} else if g.chance(30) {
			mc.ThirdID = g.pick(blockedSpellings)
		}
		if c.union.value != "" {
			mc.UnionID = matchertest.Bound{Value: g.pad(c.union.value), AppType: c.union.app.typ, AppID: c.union.app.id}
		} else if g.chance(30) {
			mc.UnionID = matchertest.Bound{Value: g.pick(blockedSpellings)}
		}
		for _, p := range c.phones {
			mc.Phones = append(mc.Phones, matchertest.Bound{Value: g.renderPhone(p.value), AppType: p.app.typ, AppID: p.app.id})
		}
		if g.chance(10) {
			mc.Phones = append(mc.Phones, matchertest.Bound{Value: g.pick(blockedSpellings)})
		}
		for _, o := range c.openids {
			mc.OpenIDs = append(mc.OpenIDs, matchertest.OpenID{OpenID: g.pad(o.value), AppType: o.app.typ, AppID: g.pad(o.app.id)})
		}
		if g.chance(3) {
			// A malformed phone makes the whole line bad.
			bad := mc
			bad.Phones = append(slices.Clone(bad.Phones), matchertest.Bound{Value: g.pick(malformedPhones)})
			lines = append(lines, line{bad, true})
			delete(t.byID, c.id)
			continue
		}
		keep = append(keep, c)
		if g.chance(15) {
			// Split: identities on a second line, later in the file.
			second := matchertest.Customer{ID: c.id, Phones: mc.Phones, OpenIDs: mc.OpenIDs}
			mc.Phones, mc.OpenIDs = nil, nil
			seconds = append(seconds, deferred{len(lines), line{second, false}})
		}
		lines = append(lines, line{mc, false})
	}
	// Second lines go anywhere after their first; inserting from the last
	// first line back keeps the earlier indexes valid.
	for i := len(seconds) - 1; i >= 0; i-- {
		d := seconds[i]
		at := d.after + 1 + g.rng.IntN(len(lines)-d.after)
		lines = slices.Insert(lines, at, d.l)
	}
	t.customers = keep
	var b strings.Builder
	var bad []int
	for i, l := range lines {
		if l.bad {
			bad = append(bad, i+1)
		}
		b.Write(l.c.AppendLine(nil))
		b.WriteByte('\n')
	}
	return b.String(), bad
}

// field draws a field of a record from a pool: usable (present in the
// directory or not), blocked or absent.
func (g *gen) field(pool []string, miss string) genField {
	switch n := g.rng.IntN(100); {
	case n < 60:
		v := g.pick(pool)
		return genField{fieldOK, v, g.pad(v)}
	case n < 75:
		return genField{fieldOK, miss, miss}
	case n < 85:
		return genField{fieldBlocked, "", g.pick(blockedSpellings)}
	}
	return genField{fieldAbsent, "", ""}
}

func (g *gen) phoneField(pool []string) genField {
	switch n := g.rng.IntN(100); {
	case n < 55:
		v := g.pick(pool)
		return genField{fieldOK, v, g.renderPhone(v)}
	case n < 65:
		return genField{fieldOK, "13000000000", "130 0000 0000"}
	case n < 78:
		return genField{fieldMalformed, "", g.pick(malformedPhones)}
	case n < 88:
		return genField{fieldBlocked, "", g.pick(blockedSpellings)}
	}
	return genField{fieldAbsent, "", ""}
}

// params draws a batch's params, as ingest hands them over.
func (g *gen) params() pipeline.Params {
	p := pipeline.Params{IsMatching: true, OptType: pipeline.OptAdd}
	if g.chance(50) {
		p.OptType = pipeline.OptDelete
	}
	scope := func() {
		switch n := g.rng.IntN(10); {
		case n < 4:
			a := g.app()
			if n == 0 {
				a = refAppNobody
			}
			p.AppType, p.AppID = a.typ, a.id
		}
	}
	switch n := g.rng.IntN(10); {
	case n < 4:
		p.MatchingType = pipeline.MatchingExact
		scope()
	case n < 6:
		p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyUnionIDFirst
	case n < 8:
		p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyThirdIDFirst
	default:
		p.IsMatching = false
		scope()
	}
	return p
}

var identityTypeSpellings = []string{"phone", "PHONE", "id", "ID", "thirdId", "openid", "openId", "unionid", " UnionID "}

func (g *gen) record(t *refTenant, p pipeline.Params, n int) genRecord {
	r := genRecord{tenant: t, p: p}
	r.third = g.field(t.thirds, fmt.Sprintf("crm-miss-%d", n))
	r.union = g.field(t.unions, fmt.Sprintf("o6_miss_%d", n))
	r.openid = g.field(t.openids, fmt.Sprintf("oA_miss_%d", n))
	r.phone = g.phoneField(t.phones)
	if len(t.created) > 0 && g.chance(25) {
		// Name a created customer's identities.
		c := t.created[g.rng.IntN(len(t.created))]
		r.third = genField{fieldOK, c.third, c.third}
		if c.union.value != "" {
			r.union = genField{fieldOK, c.union.value, c.union.value}
		}
		if len(c.phones) > 0 {
			r.phone = genField{fieldOK, c.phones[0].value, g.renderPhone(c.phones[0].value)}
		}
		if len(c.openids) > 0 {
			r.openid = genField{fieldOK, c.openids[0].value, c.openids[0].value}
		}
	}
	switch n := g.rng.IntN(100); {
	case n < 85:
		r.identityType = g.pick(identityTypeSpellings)
	case n < 90:
		r.identityType = g.pick(blockedSpellings)
	case n < 95:
		r.identityType = "mobile" // unknown ("email" is a kind)
	}
	r.groups = groupCases[0]
	if g.chance(15) {
		r.groups = groupCases[g.rng.IntN(len(groupCases))]
	}
	return r
}

func (r *genRecord) raw() pipeline.RawRecord {
	return pipeline.RawRecord{
		IdentityType: r.identityType, ThirdID: r.third.sent, OpenID: r.openid.sent,
		UnionID: r.union.sent, Phone: r.phone.sent, Groups: r.groups.raw,
	}
}

// refVerdict is what the reference expects of a record.
type refVerdict struct {
	outcome   pipeline.Outcome
	reason    pipeline.Reason
	matchedBy pipeline.IdentityKind
	customer  int64 // 0 when the customer is created (isMatching=false)
	create    bool  // a customer with the record's thirdId is to be created
	conflict  bool
}

// reference judges a record by SPEC §5 against the directory as it stood
// when the record's chunk began.
func reference(r *genRecord) refVerdict {
	invalid := func(reason pipeline.Reason) refVerdict {
		return refVerdict{outcome: pipeline.OutcomeInvalid, reason: reason}
	}
	// The identity first, then the groups.
	var exactKind pipeline.IdentityKind
	switch {
	case !r.p.IsMatching:
		if r.third.state != fieldOK {
			return invalid(pipeline.ReasonMissingIdentity)
		}
	case r.p.MatchingType == pipeline.MatchingExact:
		it := strings.ToLower(strings.TrimSpace(r.identityType))
		switch it {
		case "phone":
			exactKind = pipeline.KindPhone
		case "id", "thirdid":
			exactKind = pipeline.KindThirdID
		case "openid":
			exactKind = pipeline.KindOpenID
		case "unionid":
			exactKind = pipeline.KindUnionID
		}
		f := r.field(exactKind)
		switch {
		case slices.Contains(blockedSpellings, r.identityType) || r.identityType == "":
			return invalid(pipeline.ReasonMissingIdentity)
		case exactKind == "":
			return invalid(pipeline.ReasonInvalidIdentityType)
		case f.state == fieldMalformed:
			return invalid(pipeline.ReasonInvalidPhone)
		case f.state != fieldOK:
			return invalid(pipeline.ReasonMissingIdentity)
		}
	default:
		if r.third.state != fieldOK && r.union.state != fieldOK && r.phone.state != fieldOK && r.openid.state != fieldOK {
			if r.phone.state == fieldMalformed {
				return invalid(pipeline.ReasonInvalidPhone)
			}
			return invalid(pipeline.ReasonMissingIdentity)
		}
	}
	if r.groups.reason != "" {
		return invalid(r.groups.reason)
	}

	t := r.tenant
	switch {
	case !r.p.IsMatching:
		switch h := t.holders(pipeline.KindThirdID, r.third.value, refApp{}); len(h) {
		case 0:
			return refVerdict{outcome: pipeline.OutcomeMatched, matchedBy: pipeline.KindThirdID, create: true}
		case 1:
			return refVerdict{outcome: pipeline.OutcomeMatched, matchedBy: pipeline.KindThirdID, customer: h[0]}
		}
		return refVerdict{outcome: pipeline.OutcomeAmbiguous, reason: pipeline.ReasonAmbiguous}

	case r.p.MatchingType == pipeline.MatchingExact:
		scope := refApp{r.p.AppType, r.p.AppID}
		if exactKind == pipeline.KindThirdID {
			scope = refApp{}
		}
		switch h := t.holders(exactKind, r.field(exactKind).value, scope); len(h) {
		case 0:
			return refVerdict{outcome: pipeline.OutcomeNotFound, reason: pipeline.ReasonNotFound}
		case 1:
			return refVerdict{outcome: pipeline.OutcomeMatched, matchedBy: exactKind, customer: h[0]}
		}
		return refVerdict{outcome: pipeline.OutcomeAmbiguous, reason: pipeline.ReasonAmbiguous}
	}

	// Fuzzy: the first identifier naming exactly one customer wins; one
	// naming several is skipped and is a conflict; a lower one naming
	// exactly one other customer is a conflict. Openids are looked up
	// across all applications.
	order := []pipeline.IdentityKind{pipeline.KindUnionID, pipeline.KindOpenID, pipeline.KindPhone, pipeline.KindThirdID}
	if r.p.IdentifyWay == pipeline.IdentifyThirdIDFirst {
		order = []pipeline.IdentityKind{pipeline.KindThirdID, pipeline.KindPhone, pipeline.KindOpenID, pipeline.KindUnionID}
	}
	var v refVerdict
	skipped := false
	for _, k := range order {
		f := r.field(k)
		if f.state != fieldOK {
			continue
		}
		h := t.holders(k, f.value, refApp{})
		switch {
		case v.customer == 0 && len(h) == 1:
			v = refVerdict{outcome: pipeline.OutcomeMatched, matchedBy: k, customer: h[0], conflict: skipped}
		case v.customer == 0 && len(h) > 1:
			skipped = true
		case v.customer != 0 && len(h) == 1 && h[0] != v.customer:
			v.conflict = true
		}
	}
	switch {
	case v.customer != 0:
		return v
	case skipped:
		return refVerdict{outcome: pipeline.OutcomeAmbiguous, reason: pipeline.ReasonAmbiguous}
	}
	return refVerdict{outcome: pipeline.OutcomeNotFound, reason: pipeline.ReasonNotFound}
}

func runEquivalence(t *testing.T, seed uint64, records int) {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0x6571756976))}
	db, _ := schematest.NewPool(t)
	ctx := context.Background()

	// Two tenants with the same customer ids and value pools: nothing may
	// cross between them.
	var tenants []*refTenant
	for _, name := range []string{"t1", "t2"} {
		tn := g.newTenant(ensureTenant(t, db, name), 150+g.rng.IntN(100))
		file, wantBad := g.directoryFile(tn)
		l := directory.NewLoader(db)
		l.ChunkLines, l.Workers = 20+g.rng.IntN(40), 2
		p, err := l.Load(ctx, tn.id, strings.NewReader(file))
		if err != nil {
			t.Fatalf("load %s: %v", name, err)
		}
		var gotBad []int
		for _, b := range p.Bad {
			gotBad = append(gotBad, b.Line)
		}
		if !slices.Equal(gotBad, wantBad) {
			t.Fatalf("load %s: bad lines %v, want %v", name, p.Bad, wantBad)
		}
		tenants = append(tenants, tn)
	}
	checkGenerator(t)

	dir := NewPGStore(db)
	direct := func(op func() error) error { return op() }
	var batch int64
	counts := map[string]int{}
	for done := 0; done < records; {
		// A chunk: several batches of both tenants, as the records topic
		// interleaves them.
		var recs []genRecord
		var items []item
		for n := 100 + g.rng.IntN(300); n > 0 && done < records; {
			batch++
			tn := tenants[g.rng.IntN(len(tenants))]
			acceptBatches(t, db, tn.id, batch)
			p := g.params()
			for i := range min(1+g.rng.IntN(60), n, records-done) {
				r := g.record(tn, p, done)
				msg := pipeline.RecordMessage{V: pipeline.Version, TenantID: tn.id, BatchID: batch, Index: i, Params: p, Record: r.raw()}
				recs = append(recs, r)
				items = append(items, item{msg: msg, norm: Normalize(p, msg.Record)})
				n--
				done++
			}
		}
		want := make([]refVerdict, len(recs))
		for i := range recs {
			want[i] = reference(&recs[i])
		}
		if err := resolveChunk(ctx, dir, items, direct); err != nil {
			t.Fatal(err)
		}
		created := map[string]int64{} // tenant/thirdId -> created id, within the chunk
		for i := range recs {
			r, got, w := &recs[i], items[i].out, want[i]
			describe := func() string {
				return fmt.Sprintf("seed %d, batch %d index %d, tenant %d, params %+v, record %+v:\n got %s %s by %q customer %d conflict %v created %v\nwant %s %s by %q customer %d conflict %v create %v",
					seed, got.BatchID, got.Index, r.tenant.id, r.p, items[i].msg.Record,
					got.Outcome, got.Reason, got.MatchedBy, got.CustomerID, got.Conflict, got.Created,
					w.outcome, w.reason, w.matchedBy, w.customer, w.conflict, w.create)
			}
			counts[string(w.outcome)+"/"+string(w.reason)+string(w.matchedBy)]++
			if w.conflict {
				counts["conflict"]++
			}
			if got.Outcome != w.outcome || got.Reason != w.reason || got.MatchedBy != w.matchedBy || got.Conflict != w.conflict {
				t.Fatalf("verdict differs: %s", describe())
			}
			if got.OptType != r.p.OptType || got.TenantID != r.tenant.id {
				t.Fatalf("message header differs: %s", describe())
			}
			if w.outcome != pipeline.OutcomeMatched {
				if got.CustomerID != 0 || got.Groups != nil || got.Ref == nil || got.Ref.ThirdID != strings.TrimSpace(r.third.sent) {
					t.Fatalf("unmatched record carries customer %d, groups %q, ref %+v: %s", got.CustomerID, got.Groups, got.Ref, describe())
				}
				continue
			}
			if !slices.Equal(got.Groups, r.groups.want) {
				t.Fatalf("groups %q, want %q: %s", got.Groups, r.groups.want, describe())
			}
			if !w.create {
				if got.CustomerID != w.customer || got.Created {
					t.Fatalf("customer differs: %s", describe())
				}
				continue
			}
			// Created: the first record of the chunk naming the thirdId
			// creates, the others find the same customer.
			key := fmt.Sprintf("%d/%s", r.tenant.id, r.third.value)
			if id, ok := created[key]; ok {
				if got.CustomerID != id || got.Created {
					t.Fatalf("second record of a created thirdId: customer %d created %v, want %d found: %s", got.CustomerID, got.Created, id, describe())
				}
				continue
			}
			if !got.Created || got.CustomerID < 1<<52 || got.CustomerID > pipeline.MaxBatchID || r.tenant.byID[got.CustomerID] != nil {
				t.Fatalf("created customer %d (created %v) not fresh in [2^52, 2^53): %s", got.CustomerID, got.Created, describe())
			}
			created[key] = got.CustomerID
			// The reference directory grows as SPEC §5 says: the record's
			// identities, bound to the batch's application when given.
			app := refApp{r.p.AppType, r.p.AppID}
			c := &refCustomer{id: got.CustomerID, third: r.third.value}
			if r.union.state == fieldOK {
				c.union = refBound{r.union.value, app}
			}
			if r.phone.state == fieldOK {
				c.phones = []refBound{{r.phone.value, app}}
			}
			if r.openid.state == fieldOK {
				c.openids = []refBound{{r.openid.value, app}}
			}
			r.tenant.customers = append(r.tenant.customers, c)
			r.tenant.byID[c.id] = c
			r.tenant.created = append(r.tenant.created, c)
			counts["created"]++
		}
	}
	t.Logf("seed %d: %d records: %v", seed, records, counts)
	// Every rule must have been exercised, or the generator has drifted.
	for _, k := range []string{"MATCHED/unionid", "MATCHED/openid", "MATCHED/phone", "MATCHED/id", "NOT_FOUND/NOT_FOUND", "AMBIGUOUS/AMBIGUOUS", "INVALID/MISSING_IDENTITY",
		"INVALID/INVALID_PHONE", "INVALID/INVALID_IDENTITY_TYPE", "INVALID/NO_GROUPS", "INVALID/GROUP_NAME_TOO_LONG", "conflict", "created"} {
		if counts[k] == 0 {
			t.Errorf("seed %d exercised no %s", seed, k)
		}
	}
}

// checkGenerator makes sure the generator's spellings mean what it thinks.
func checkGenerator(t *testing.T) {
	g := &gen{rng: rand.New(rand.NewPCG(9, 9))}
	for _, c := range []string{"13512345678", "+442079400009"} {
		for range 20 {
			if got, ok := identity.NormalizePhone(g.renderPhone(c)); !ok || got != c {
				t.Fatalf("generator: phone spelling of %s normalises to %q, %v", c, got, ok)
			}
		}
	}
	for _, m := range malformedPhones {
		if _, ok := identity.NormalizePhone(m); ok || identity.IsBlocked(m) {
			t.Fatalf("generator: %q is not a malformed phone", m)
		}
	}
	for _, b := range blockedSpellings {
		if !identity.IsBlocked(b) {
			t.Fatalf("generator: %q is not blocked", b)
		}
	}
}
