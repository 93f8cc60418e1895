package directory

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
)

// Key names one normalised identity value of a tenant.
type Key struct {
	TenantID int64
	Kind     pipeline.IdentityKind
	Value    string
}

// PGDirectory is the customer directory in PostgreSQL: its look-ups
// (Lookup) and the customers isMatching=false imports create
// (FindOrCreate). It is safe for concurrent use once its fields are set.
type PGDirectory struct {
	db *pgxpool.Pool
	// ObserveQuery, when set before use, is told the distinct values of
	// every look-up query sent (matcher.Metrics.ObserveLookup fits).
	ObserveQuery func(kind pipeline.IdentityKind, values int)
}

// NewPGDirectory returns a directory on db.
func NewPGDirectory(db *pgxpool.Pool) *PGDirectory {
	return &PGDirectory{db: db}
}

// lookupSQL answers one identity kind for one tenant ($1) and an array of
// values ($2): each row is a value found, a customer holding it and, for a
// kind bound through applications, the application it was bound through.
// The "= ANY" index scans descend each index once per distinct value, in
// index order; the explicit IS NOT NULL on the customers table lets a
// generic plan use the partial indexes. Built from identity.Kinds; never
// modified.
var lookupSQL = lookupQueries()

// lookupQueries returns the look-up statement of each kind, from where
// identity.Kinds says the directory keeps it.
func lookupQueries() map[pipeline.IdentityKind]string {
	m := make(map[pipeline.IdentityKind]string, pipeline.NumKinds)
	for _, k := range identity.Kinds() {
		d := k.Directory
		cols := d.Column + ", customer_id"
		if d.AppType != "" {
			cols += ", " + d.AppType + ", " + d.AppID
		}
		q := "SELECT " + cols + " FROM " + d.Table + "\n\t\tWHERE tenant_id = $1 AND " + d.Column + " = ANY($2::text[])"
		if !d.Multi() {
			q += " AND " + d.Column + " IS NOT NULL"
		}
		m[k.Name] = q
	}
	return m
}

// lookupGroup is the distinct values of one kind of one tenant that a
// Lookup asks about, and once answered their bindings.
type lookupGroup struct {
	tenant int64
	kind   pipeline.IdentityKind
	values []string
	index  map[string]int32 // value -> its position in values
	// found[i] is the bindings of values[i], nil when none.
	found [][]identity.Binding
}

// Hits is a Lookup's answer: the bindings of every value it was asked
// about. Read-only once returned, so safe for concurrent readers.
type Hits struct {
	groups []*lookupGroup
	byKey  map[groupKey]*lookupGroup // only when there are many groups
}

// groupKey names a lookupGroup.
type groupKey struct {
	tenant int64
	kind   pipeline.IdentityKind
}

// manyGroups is the number of groups above which Hits finds a group by
// map instead of by a scan: a chunk of one tenant has at most one group per
// kind.
const manyGroups = 8

// Bindings returns the bindings of the tenant's value of kind, in any order
// and possibly naming one customer several times (bound through several
// applications); nil when it has none or was not asked about. The caller
// must not modify the slice. A nil Hits has none.
func (h *Hits) Bindings(tenant int64, kind pipeline.IdentityKind, value string) []identity.Binding {
	if h == nil {
		return nil
	}
	var g *lookupGroup
	if h.byKey != nil {
		g = h.byKey[groupKey{tenant, kind}]
	} else {
		for _, c := range h.groups {
			if c.tenant == tenant && c.kind == kind {
				g = c
				break
			}
		}
	}
	if g == nil {
		return nil
	}
	i, ok := g.index[value]
	if !ok {
		return nil
	}
	return g.found[i]
}

// HitsOf returns the Hits holding m's bindings: what a Directory that is
// not PostgreSQL (a test's) answers.
func HitsOf(m map[Key][]identity.Binding) *Hits {
	b := newHitsBuilder(len(m))
	for k, bs := range m {
		g := b.add(k) // each key once: found stays in step with values
		g.found = append(g.found, bs)
	}
	return b.hits()
}

// hitsBuilder groups keys by tenant and kind.
type hitsBuilder struct {
	groups map[groupKey]*lookupGroup
	order  []*lookupGroup
	last   *lookupGroup // keys of one group tend to come together
	hint   int          // expected keys, to size the groups' indexes
}

func newHitsBuilder(keys int) *hitsBuilder {
	return &hitsBuilder{groups: make(map[groupKey]*lookupGroup, 4), hint: keys/len(lookupSQL) + 1}
}

// add adds k's value to its group, once, and returns the group.
func (b *hitsBuilder) add(k Key) *lookupGroup {
	g := b.last
	if g == nil || g.tenant != k.TenantID || g.kind != k.Kind {
		gk := groupKey{k.TenantID, k.Kind}
		g = b.groups[gk]
		if g == nil {
			g = &lookupGroup{tenant: k.TenantID, kind: k.Kind, index: make(map[string]int32, b.hint)}
			b.groups[gk] = g
			b.order = append(b.order, g)
		}
		b.last = g
	}
	if _, dup := g.index[k.Value]; !dup {
		g.index[k.Value] = int32(len(g.values))
		g.values = append(g.values, k.Value)
	}
	return g
}

func (b *hitsBuilder) hits() *Hits {
	h := &Hits{groups: b.order}
	if len(b.order) > manyGroups {
		h.byKey = b.groups
	}
	return h
}

// genericPlans makes the look-ups of one Lookup run with their generic
// plans: an index probe per value whatever the table's size
// (TestDirectoryQueriesUseIndexes), the plan a session with the default
// plan_cache_mode adopts after five executions. The stages' sessions
// force custom plans (cmd/groupmatch setPlanCacheMode) for the sink's
// sake, and a custom plan of a look-up estimates each of its 1,000-odd
// values: 0.4 ms of planning against 5 ms of execution, where the
// generic plan takes 0.1 ms.
const genericPlans = "SET LOCAL plan_cache_mode = force_generic_plan"

// Lookup sends one query per identity kind and tenant present, all in one
// round trip inside a read-only transaction (which makes the plans
// generic: genericPlans), and decodes the rows without allocating a
// string per row. The bindings of one query share one backing array.
func (d *PGDirectory) Lookup(ctx context.Context, keys []Key) (*Hits, error) {
	b := newHitsBuilder(len(keys))
	for _, k := range keys {
		b.add(k)
	}
	if len(b.order) == 0 {
		return b.hits(), nil
	}
	intern := make(map[string]string, 8)
	batch := &pgx.Batch{}
	batch.Queue(genericPlans)
	for _, g := range b.order {
		if _, ok := lookupSQL[g.kind]; !ok { // checked once per group, not per key
			return nil, fmt.Errorf("directory: lookup: unknown identity kind %q", g.kind)
		}
		g.sortValues()
		g.found = make([][]identity.Binding, len(g.values))
		if d.ObserveQuery != nil {
			d.ObserveQuery(g.kind, len(g.values))
		}
		batch.Queue(lookupSQL[g.kind], g.tenant, g.values).Query(func(rows pgx.Rows) error {
			return g.collect(rows, intern)
		})
	}
	err := pgx.BeginTxFunc(ctx, d.db, pgx.TxOptions{AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		return nil, fmt.Errorf("directory: lookup: %w", err)
	}
	return b.hits(), nil
}

// sortValues puts g's values in byte order, the order of the look-up
// indexes (C and C.UTF-8 collations; identity values are ASCII). The
// server sorts an "= ANY" array before it descends the index, and its sort
// returns at once on an input already in order: the chunk's distinct
// values cost it one pass of comparisons instead of n log n. Any other
// order is still answered correctly, only slower.
func (g *lookupGroup) sortValues() {
	if slices.IsSorted(g.values) {
		return
	}
	slices.Sort(g.values)
	for i, v := range g.values {
		g.index[v] = int32(i)
	}
}

// collect reads the rows of g's query into g.found. intern holds the
// application names seen so far, so that each is allocated once.
func (g *lookupGroup) collect(rows pgx.Rows, intern map[string]string) error {
	// A query that failed (the connection died, say) has no result to
	// describe: FieldDescriptions would dereference nil.
	if err := rows.Err(); err != nil {
		return err
	}
	fields := rows.FieldDescriptions()
	// Most values asked about are found once.
	at := make([]int32, 0, len(g.values)) // at[j] is the value of bs[j]
	bs := make([]identity.Binding, 0, len(g.values))
	var started []bool // started[i]: a run of rows of value i began
	scattered := false
	cur := 0 // the rows come in index order, which is the values' (sortValues)
	for rows.Next() {
		raw := rows.RawValues()
		for cur < len(g.values) && g.values[cur] < string(raw[0]) {
			cur++
		}
		i := int32(cur)
		if cur == len(g.values) || g.values[cur] != string(raw[0]) {
			// Another order (a collation other than C's): ask the index.
			var ok bool
			if i, ok = g.index[string(raw[0])]; !ok {
				return errors.New("directory returned a value it was not asked about")
			}
		}
		id, err := decodeInt8(raw[1], fields[1].Format)
		if err != nil {
			return err
		}
		b := identity.Binding{CustomerID: id}
		if len(raw) == 4 {
			b.AppType, b.AppID = internBytes(intern, raw[2]), internBytes(intern, raw[3])
		}
		if n := len(at); n == 0 || at[n-1] != i {
			if started == nil {
				started = make([]bool, len(g.values))
			}
			scattered = scattered || started[i]
			started[i] = true
		}
		at, bs = append(at, i), append(bs, b)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	if scattered {
		// An index scan returns the rows of one value together; another
		// plan may scatter them.
		perm := make([]int, len(at))
		for j := range perm {
			perm[j] = j
		}
		slices.SortStableFunc(perm, func(a, b int) int { return cmp.Compare(at[a], at[b]) })
		at2, bs2 := make([]int32, len(at)), make([]identity.Binding, len(bs))
		for j, p := range perm {
			at2[j], bs2[j] = at[p], bs[p]
		}
		at, bs = at2, bs2
	}
	for j := 0; j < len(at); {
		e := j + 1
		for e < len(at) && at[e] == at[j] {
			e++
		}
		g.found[at[j]] = bs[j:e:e]
		j = e
	}
	return nil
}

// decodeInt8 decodes a bigint column in either wire format.
func decodeInt8(b []byte, format int16) (int64, error) {
	if format == pgx.BinaryFormatCode {
		if len(b) != 8 {
			return 0, errors.New("bad bigint in directory row")
		}
		return int64(binary.BigEndian.Uint64(b)), nil
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return 0, errors.New("bad bigint in directory row")
	}
	return n, nil
}

func internBytes(intern map[string]string, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := intern[string(b)]; ok {
		return s
	}
	s := string(b)
	intern[s] = s
	return s
}
