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
// Lookup asks about.
type lookupGroup struct {
	tenant int64
	kind   pipeline.IdentityKind
	values []string
	index  map[string]int32 // value -> its position in values
}

// Lookup sends one query per identity kind and tenant present, all in one
// round trip, and decodes the rows without allocating a string per row.
// The slices of the map share one backing array per query; the caller must
// not append to them.
func (d *PGDirectory) Lookup(ctx context.Context, keys []Key) (map[Key][]identity.Binding, error) {
	type groupKey struct {
		tenant int64
		kind   pipeline.IdentityKind
	}
	groups := make(map[groupKey]*lookupGroup, 4)
	var order []*lookupGroup
	var last *lookupGroup // keys of one group tend to come together
	for _, k := range keys {
		g := last
		if g == nil || g.tenant != k.TenantID || g.kind != k.Kind {
			gk := groupKey{k.TenantID, k.Kind}
			g = groups[gk]
			if g == nil {
				if _, ok := lookupSQL[k.Kind]; !ok {
					return nil, fmt.Errorf("directory: lookup: unknown identity kind %q", k.Kind)
				}
				g = &lookupGroup{tenant: k.TenantID, kind: k.Kind, index: make(map[string]int32, len(keys)/len(lookupSQL)+1)}
				groups[gk] = g
				order = append(order, g)
			}
			last = g
		}
		if _, dup := g.index[k.Value]; !dup {
			g.index[k.Value] = int32(len(g.values))
			g.values = append(g.values, k.Value)
		}
	}
	out := make(map[Key][]identity.Binding, len(keys))
	if len(order) == 0 {
		return out, nil
	}
	intern := make(map[string]string, 8)
	batch := &pgx.Batch{}
	for _, g := range order {
		g.sortValues()
		if d.ObserveQuery != nil {
			d.ObserveQuery(g.kind, len(g.values))
		}
		batch.Queue(lookupSQL[g.kind], g.tenant, g.values).Query(func(rows pgx.Rows) error {
			return g.collect(rows, out, intern)
		})
	}
	if err := d.db.SendBatch(ctx, batch).Close(); err != nil {
		return nil, fmt.Errorf("directory: lookup: %w", err)
	}
	return out, nil
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

// collect reads the rows of g's query into out. intern holds the
// application names seen so far, so that each is allocated once.
func (g *lookupGroup) collect(rows pgx.Rows, out map[Key][]identity.Binding, intern map[string]string) error {
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
	for rows.Next() {
		raw := rows.RawValues()
		i, ok := g.index[string(raw[0])]
		if !ok {
			return errors.New("directory returned a value it was not asked about")
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
		out[Key{TenantID: g.tenant, Kind: g.kind, Value: g.values[at[j]]}] = bs[j:e:e]
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
