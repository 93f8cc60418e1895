package matcher

// The re-matcher's randomized equivalence test: a tenant's directory is
// loaded in two parts; records resolved NOT_FOUND against the first part
// become pending bindings (stored as the sink stores them); the second part
// is loaded, and its customers' identities, with random rechecks, are
// handed to Rematch in random chunks. Every late verdict must equal a naive
// re-resolution (the reference of equivalence_test.go) against the whole
// directory, and every binding waiting for an announced identity that the
// reference matches must get one.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

func TestRematchEquivalence(t *testing.T) {
	for _, seed := range equivalenceSeeds {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runRematchEquivalence(t, seed, 1500)
		})
	}
}

// bindingOf pairs a stored binding with the record it came from.
type bindingOf struct {
	fb  fixtureBinding
	rec genRecord
}

func runRematchEquivalence(t *testing.T, seed uint64, records int) {
	g := &gen{rng: rand.New(rand.NewPCG(seed, 0x72656d61))}
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	checkGenerator(t)

	full := g.newTenant(ensureTenant(t, db, "t"), 200+g.rng.IntN(100))
	// The directory's two parts: the one known when records arrive, the
	// one learned later.
	split := len(full.customers) / 2
	first := &refTenant{id: full.id, customers: slices.Clone(full.customers[:split]), byID: map[int64]*refCustomer{}}
	later := &refTenant{id: full.id, customers: slices.Clone(full.customers[split:]), byID: map[int64]*refCustomer{}}
	for _, part := range []*refTenant{first, later} {
		for _, c := range part.customers {
			part.byID[c.id] = c
		}
	}
	load := func(part *refTenant) {
		file, _ := g.directoryFile(part) // drops the customers of bad lines from part
		l := directory.NewLoader(db)
		l.ChunkLines = 20 + g.rng.IntN(40)
		if _, err := l.Load(ctx, full.id, strings.NewReader(file)); err != nil {
			t.Fatal(err)
		}
	}
	load(first)
	full.customers = append(slices.Clone(first.customers), later.customers...)

	// Pending bindings: the matching records NOT_FOUND against the first
	// part, as the matcher defers them.
	var pending []bindingOf
	for n := 0; n < records; n++ {
		p := g.params()
		if !p.IsMatching {
			continue
		}
		p.DeferUnmatched = true
		r := g.record(full, p, n)
		r.tenant = first
		if reference(&r).outcome != pipeline.OutcomeNotFound {
			continue
		}
		norm := Normalize(p, r.raw())
		fb := fixtureBinding{tenant: full.id, batch: int64(1 + n/500), index: n % 500, op: p.OptType, pending: testPending(p, &norm)}
		if g.chance(5) {
			fb.ttl = -1 // expired: never rechecked
		}
		pending = append(pending, bindingOf{fb, r})
	}
	fbs := make([]fixtureBinding, len(pending))
	for i := range pending {
		fbs[i] = pending[i].fb
	}
	insertPending(t, db, fbs...)

	load(later)
	full.customers = append(slices.Clone(first.customers), later.customers...)

	// The directory messages: every identity of the later customers, and
	// rechecks of random bindings' identities.
	var msgs []pipeline.DirectoryMessage
	announce := func(typ string, k pipeline.IdentityKind, v string, c int64) {
		msgs = append(msgs, pipeline.DirectoryMessage{Type: typ, TenantID: full.id, Kind: k, Value: v, CustomerID: c})
	}
	for _, c := range later.customers {
		if c.third != "" {
			announce(pipeline.DirectoryIdentity, pipeline.KindThirdID, c.third, c.id)
		}
		if c.union.value != "" {
			announce(pipeline.DirectoryIdentity, pipeline.KindUnionID, c.union.value, c.id)
		}
		for _, p := range c.phones {
			announce(pipeline.DirectoryIdentity, pipeline.KindPhone, p.value, c.id)
		}
		for _, o := range c.openids {
			announce(pipeline.DirectoryIdentity, pipeline.KindOpenID, o.value, c.id)
		}
	}
	for _, b := range pending {
		if g.chance(10) {
			for k, v := range b.fb.pending.Identities {
				announce(pipeline.DirectoryRecheck, k, v, 0)
			}
		}
	}
	g.rng.Shuffle(len(msgs), func(i, j int) { msgs[i], msgs[j] = msgs[j], msgs[i] })

	// Rematch in random chunks, as the consumer hands them out.
	store := NewPGStore(db)
	got := map[[2]int64][]pipeline.ResolvedMessage{}
	for rest := msgs; len(rest) > 0; {
		n := min(len(rest), 1+g.rng.IntN(200))
		late, _, err := Rematch(ctx, store, rest[:n], direct)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range late {
			k := [2]int64{v.BatchID, int64(v.Index)}
			got[k] = append(got[k], v)
		}
		rest = rest[n:]
	}

	announced := map[directory.Key]bool{}
	for _, m := range msgs {
		announced[directory.Key{TenantID: m.TenantID, Kind: m.Kind, Value: m.Value}] = true
	}
	counts := map[string]int{}
	for i := range pending {
		b := &pending[i]
		k := [2]int64{b.fb.batch, int64(b.fb.index)}
		waits := false
		for kind, v := range b.fb.pending.Identities {
			waits = waits || announced[directory.Key{TenantID: full.id, Kind: kind, Value: v}]
		}
		b.rec.tenant = full
		w := reference(&b.rec)
		describe := func() string {
			return fmt.Sprintf("seed %d, binding %v, params %+v, record %+v: want %s by %q customer %d conflict %v; got %+v",
				seed, k, b.rec.p, b.rec.raw(), w.outcome, w.matchedBy, w.customer, w.conflict, got[k])
		}
		if b.fb.ttl < 0 || !waits || w.outcome != pipeline.OutcomeMatched {
			counts["pending/"+string(w.outcome)]++
			if len(got[k]) > 0 {
				t.Fatalf("late verdict for a binding that stays pending (expired %v, waits %v): %s", b.fb.ttl < 0, waits, describe())
			}
			continue
		}
		counts["late/"+string(w.matchedBy)]++
		if w.conflict {
			counts["conflict"]++
		}
		if len(got[k]) == 0 {
			t.Fatalf("no late verdict: %s", describe())
		}
		for _, v := range got[k] { // a binding announced in several chunks is judged again each time, alike
			if v.MatchedBy != w.matchedBy || v.CustomerID != w.customer || v.Conflict != w.conflict || v.OptType != b.rec.p.OptType ||
				!slices.Equal(v.Groups, b.rec.groups.want) || !v.Late || v.TenantID != full.id {
				t.Fatalf("late verdict differs: %s", describe())
			}
		}
	}
	t.Logf("seed %d: %d bindings, %d messages: %v", seed, len(pending), len(msgs), counts)
	for _, k := range []string{"late/phone", "late/id", "late/unionid", "late/openid", "pending/NOT_FOUND", "pending/AMBIGUOUS", "conflict"} {
		if counts[k] == 0 {
			t.Errorf("seed %d exercised no %s", seed, k)
		}
	}
}
