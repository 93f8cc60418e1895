package directory

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// MaxLoadedCustomerID is the largest customerId `directory load` accepts:
// ids from 2^52 up are reserved for customers that isMatching=false imports
// create, so the two never collide.
const MaxLoadedCustomerID = 1<<52 - 1

// LoadProgress is reported while a directory loads.
type LoadProgress struct {
	// Lines and Bytes count the input up to the end of the chunks loaded so
	// far (at the end: all of it); Loaded counts the good lines among them,
	// and New the customers among them that the tenant did not have.
	Lines, Loaded, New int
	// Bad lists the bad lines found so far, in line order; it may name
	// lines beyond Lines. The slice's elements are never changed once
	// reported, so a receiver may keep it.
	Bad     []LineError
	Bytes   int64
	Elapsed time.Duration
	// Analyzed is set at the end when the load added so many customers
	// that it refreshed the planner's statistics of the directory tables.
	Analyzed bool
}

// Loader bulk-loads customers into a tenant's directory.
//
// Lines are parsed and normalised in Go (identity values trimmed, blocked
// values dropped, phones in canonical form) and grouped in chunks; a
// customerId given twice in a chunk is merged there. Each chunk is one
// transaction: customers that the tenant does not have yet are written with
// COPY straight into the directory tables, sorted by index key; customers it
// has are compared with their stored rows, and only what changes is
// written. Up to Workers chunks load at once, each on its own connection; a
// chunk naming a customerId of a chunk still loading waits for it, so the
// file's order decides. No index is dropped or rebuilt: the directory stays
// live and consistent throughout, one committed chunk at a time.
//
// Loading is an upsert by customerId: a later line's thirdId and unionid
// replace the stored ones, a field the line leaves out keeps its stored
// value, and phones and openids are only ever added. Loading the same file
// again therefore changes no row (not even its xmin).
//
// Load may be called concurrently, also for one tenant: the directory stays
// correct (a chunk whose COPY meets a row another writer added is merged
// instead), but which of two concurrent loads' values wins is undefined,
// and Progress must then be safe for concurrent use.
type Loader struct {
	db *pgxpool.Pool
	// ChunkLines is how many lines one transaction loads; default 50000.
	// Bigger chunks sort better against the indexes and cost memory
	// (about 1 KiB per line in flight, Workers+1 chunks in flight).
	ChunkLines int
	// Workers is how many chunks load at once, on as many connections;
	// default 2.
	Workers int
	// Progress, if set, is called after each chunk commits; the calls of
	// one Load never overlap.
	Progress func(LoadProgress)
	// OnCommitted, if set, is called after each chunk commits, before its
	// Progress, with the chunk's identities (`directory load` publishes
	// them on the directory topic, SPEC §13). Calls for different chunks
	// may overlap (one per worker). An error ends the Load.
	OnCommitted CommitHook
}

// NewLoader returns a loader on db with the default settings.
func NewLoader(db *pgxpool.Pool) *Loader { return &Loader{db: db} }

type stagedCustomer struct {
	id                   int64
	thirdID              string // "" when absent
	unionid, uType, uApp string // unionid "" when absent
}

type stagedIdentity struct {
	value, appType, app string
	id                  int64
}

// loadChunk is a run of lines loaded in one transaction. The reader fills
// it; after it is handed to a worker it is read-only until done is closed.
type loadChunk struct {
	customers []stagedCustomer
	byID      map[int64]int // customerId -> index in customers
	// bound holds, by ordinal, the identities of the kinds the directory
	// keeps in tables of their own (identity.Store.Multi).
	bound [pipeline.NumKinds][]stagedIdentity
	lines int   // input lines the chunk spans, bad and blank ones included
	good  int   // good lines among them
	bytes int64 // input bytes the chunk spans
	done  chan struct{}
}

func newLoadChunk(size int) *loadChunk {
	return &loadChunk{
		customers: make([]stagedCustomer, 0, size),
		byID:      make(map[int64]int, size),
		done:      make(chan struct{}),
	}
}

// add merges one parsed line into the chunk.
func (c *loadChunk) add(sc stagedCustomer, bound *[pipeline.NumKinds][]stagedIdentity) {
	if i, ok := c.byID[sc.id]; ok {
		prev := &c.customers[i]
		if sc.thirdID != "" {
			prev.thirdID = sc.thirdID
		}
		if sc.unionid != "" {
			prev.unionid, prev.uType, prev.uApp = sc.unionid, sc.uType, sc.uApp
		}
	} else {
		c.byID[sc.id] = len(c.customers)
		c.customers = append(c.customers, sc)
	}
	for o := range bound {
		c.bound[o] = append(c.bound[o], bound[o]...)
	}
}

// seal sorts the chunk's rows by the keys of the indexes they go into and
// drops duplicate identities.
func (c *loadChunk) seal() {
	slices.SortFunc(c.customers, func(a, b stagedCustomer) int {
		return cmp.Or(strings.Compare(a.unionid, b.unionid), cmp.Compare(a.id, b.id))
	})
	for o := range c.bound {
		c.bound[o] = sortIdentities(c.bound[o])
	}
}

func sortIdentities(s []stagedIdentity) []stagedIdentity {
	slices.SortFunc(s, func(a, b stagedIdentity) int {
		return cmp.Or(strings.Compare(a.value, b.value), strings.Compare(a.appType, b.appType),
			strings.Compare(a.app, b.app), cmp.Compare(a.id, b.id))
	})
	return slices.Compact(s)
}

// overlaps reports whether c and d name a common customerId.
func (c *loadChunk) overlaps(d *loadChunk) bool {
	small, big := c, d
	if len(small.byID) > len(big.byID) {
		small, big = big, small
	}
	for id := range small.byID {
		if _, ok := big.byID[id]; ok {
			return true
		}
	}
	return false
}

// Load reads JSON lines from r into the tenant's directory and returns when
// all of them are loaded or on the first error that is not a bad line. Bad
// lines are reported in the result's Bad and skipped. On an error, the
// chunks already committed stay loaded; loading the file again completes
// the rest.
func (l *Loader) Load(ctx context.Context, tenantID int64, r io.Reader) (LoadProgress, error) {
	chunkLines := cmp.Or(max(l.ChunkLines, 0), 50000)
	workers := cmp.Or(max(l.Workers, 0), 2)
	start := time.Now()

	var mu sync.Mutex // guards prog and serialises Progress calls
	var prog LoadProgress

	g, gctx := errgroup.WithContext(ctx)
	work := make(chan *loadChunk) // unbuffered: a chunk waits for an idle worker
	for range workers {
		g.Go(func() error {
			for c := range work {
				added, err := l.loadChunk(gctx, tenantID, c)
				if err != nil {
					return err
				}
				if l.OnCommitted != nil {
					if err := l.OnCommitted(gctx, tenantID, c.identities()); err != nil {
						return fmt.Errorf("directory: after a committed chunk: %w", err)
					}
				}
				close(c.done)
				mu.Lock()
				prog.Lines += c.lines
				prog.Loaded += c.good
				prog.New += added
				prog.Bytes += c.bytes
				prog.Elapsed = time.Since(start)
				if l.Progress != nil {
					l.Progress(prog)
				}
				mu.Unlock()
			}
			return nil
		})
	}

	// The reader: parses lines into chunks and hands them out in order.
	var total struct {
		lines int
		bytes int64
	}
	g.Go(func() error {
		defer close(work)
		lr := newLineReader(r)
		var inflight []*loadChunk
		c := newLoadChunk(chunkLines)
		var chunkStart int64
		dispatch := func() error {
			c.bytes = lr.n - chunkStart
			chunkStart = lr.n
			c.seal()
			// Wait for chunks in flight that name a customer of c.
			kept := inflight[:0]
			for _, d := range inflight {
				select {
				case <-d.done:
					continue
				default:
				}
				if d.overlaps(c) {
					select {
					case <-d.done:
						continue
					case <-gctx.Done():
						return gctx.Err()
					}
				}
				kept = append(kept, d)
			}
			inflight = append(kept, c)
			select {
			case work <- c:
			case <-gctx.Done():
				return gctx.Err()
			}
			c = newLoadChunk(chunkLines)
			return nil
		}
		lineNo := 0
		for {
			line, tooLong, err := lr.next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("directory: read line %d: %w", lineNo+1, err)
			}
			lineNo++
			c.lines++
			var bad error
			switch line = bytes.TrimSpace(line); {
			case tooLong:
				bad = fmt.Errorf("longer than %d bytes", MaxLineBytes)
			case len(line) == 0:
				continue
			default:
				bad = stageLine(c, line)
			}
			if bad != nil {
				mu.Lock()
				prog.Bad = append(prog.Bad, LineError{Line: lineNo, Err: bad})
				mu.Unlock()
				continue
			}
			c.good++
			if c.good >= chunkLines {
				if err := dispatch(); err != nil {
					return err
				}
			}
		}
		total.lines, total.bytes = lineNo, lr.n
		if c.good > 0 {
			return dispatch()
		}
		return nil
	})

	err := g.Wait()
	mu.Lock()
	defer mu.Unlock()
	if err == nil {
		prog.Lines, prog.Bytes = total.lines, total.bytes
		if prog.New >= analyzeAfter {
			prog.Analyzed = l.analyze(ctx)
		}
	}
	prog.Elapsed = time.Since(start)
	return prog, err
}

// analyzeAfter is how many new customers make a load refresh the planner's
// statistics. Until autovacuum gets to it, the planner believes a freshly
// loaded tenant tiny and, for the look-ups' first executions on each
// connection, reads the whole tenant instead of probing the indexes: half
// a second per query on a million customers instead of ten milliseconds.
const analyzeAfter = 10000

// analyze refreshes the statistics of the directory tables and reports
// whether it could. It is best effort: a role that does not own the
// tables may not, and autovacuum will do it soon.
func (l *Loader) analyze(ctx context.Context) bool {
	_, err := l.db.Exec(ctx, "ANALYZE "+strings.Join(directoryTables(), ", "))
	return err == nil
}

// stageLine parses and normalises one line and merges it into the chunk.
// Its errors name fields, never values.
func stageLine(c *loadChunk, line []byte) error {
	var d DirectoryLine
	if err := decodeLine(line, &d); err != nil {
		return fmt.Errorf("not a directory record: %w", err)
	}
	if d.CustomerID <= 0 || d.CustomerID > MaxLoadedCustomerID {
		return fmt.Errorf("customerId must be from 1 to %d", int64(MaxLoadedCustomerID))
	}
	if hasNUL(&d) {
		return lineProblem("a value holds the character U+0000, which PostgreSQL cannot store")
	}
	sc := stagedCustomer{id: d.CustomerID, thirdID: identity.Usable(d.ThirdID)}
	if u := identity.Usable(d.UnionID.Value); u != "" {
		sc.unionid, sc.uType, sc.uApp = u, d.UnionID.AppType, d.UnionID.AppID
	}
	var bound [pipeline.NumKinds][]stagedIdentity
	kinds := identity.Kinds()
	for o, list := range lineIdentities(&d) {
		k := &kinds[o]
		for i, b := range list {
			v := identity.Usable(b.Value)
			if v == "" {
				continue
			}
			if v, _ = k.Normalize(v); v == "" {
				return fmt.Errorf("%s[%d] is not a valid %s", k.Directory.LineField, i, k.Noun)
			}
			bound[o] = append(bound[o], stagedIdentity{v, b.AppType, b.AppID, d.CustomerID})
		}
	}
	for i, o := range d.OpenIDs {
		if identity.Usable(o.OpenID) != "" && (strings.TrimSpace(o.AppType) == "" || strings.TrimSpace(o.AppID) == "") {
			return fmt.Errorf("openids[%d] needs appType and appId", i)
		}
	}
	c.add(sc, &bound)
	return nil
}

// hasNUL reports whether a text of d holds a NUL character.
func hasNUL(d *DirectoryLine) bool {
	nul := func(ss ...string) bool {
		for _, s := range ss {
			if identity.HasNUL(s) {
				return true
			}
		}
		return false
	}
	if nul(d.ThirdID, d.UnionID.Value, d.UnionID.AppType, d.UnionID.AppID) {
		return true
	}
	for _, list := range lineIdentities(d) {
		for _, b := range list {
			if nul(b.Value, b.AppType, b.AppID) {
				return true
			}
		}
	}
	return false
}

// chunkRetry bounds the retries of a chunk that failed transiently (a lost
// connection, a deadlock with a concurrent writer): a chunk is one
// idempotent transaction.
var chunkRetry = retry.Policy{MaxElapsed: time.Minute}

// loadChunk writes one chunk in one transaction: by COPY for the customers
// the tenant lacks, by merging for the others. When the COPY fails (it may
// have met a row a concurrent writer added), the whole chunk is merged in a
// new transaction.
// It returns how many customers it COPYed.
func (l *Loader) loadChunk(ctx context.Context, tenantID int64, c *loadChunk) (int, error) {
	var copied int
	err := retry.Do(ctx, chunkRetry, func() error {
		err := pgx.BeginFunc(ctx, l.db, func(tx pgx.Tx) error {
			var err error
			copied, err = copyNewMergeRest(ctx, tx, tenantID, c)
			return err
		})
		// A row a concurrent writer added makes the COPY fail: with a
		// unique violation (23505) on PostgreSQL, with XX000 on Citus. So
		// any error PostgreSQL reported that a retry cannot mend merges
		// the chunk instead (upserts cannot meet that conflict); an error
		// of another cause fails the merge too and is returned.
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !retry.Transient(err) {
			copied = 0
			err = pgx.BeginFunc(ctx, l.db, func(tx pgx.Tx) error { return upsertAll(ctx, tx, tenantID, c) })
		}
		return err
	}, nil)
	if err != nil {
		return 0, fmt.Errorf("directory: load chunk: %w", err)
	}
	return copied, nil
}

// The loader's statements. None joins the chunk to the directory: every
// row is found by an "= ANY" index scan, a primary key or an insert's
// conflict check, so no planner estimate (stale right after a bulk load)
// can turn a chunk into a scan of the tenant's directory per row.
const (
	// findLoadedSQL returns the stored fields of those of the customer ids
	// $2 that tenant $1 has.
	findLoadedSQL = `SELECT customer_id, coalesce(third_id, ''), coalesce(unionid, ''), unionid_app_type, unionid_app_id
		FROM customers WHERE tenant_id = $1 AND customer_id = ANY($2::bigint[])`

	// updateCustomerSQL sets one customer's merged fields.
	updateCustomerSQL = `UPDATE customers SET third_id = $3, unionid = $4, unionid_app_type = $5, unionid_app_id = $6
		WHERE tenant_id = $1 AND customer_id = $2`

	// upsertCustomersSQL merges customers from arrays by the rule of
	// stagedCustomer.mergeInto, touching only rows that change.
	upsertCustomersSQL = `INSERT INTO customers AS c (tenant_id, customer_id, third_id, unionid, unionid_app_type, unionid_app_id)
		SELECT $1, id, nullif(third_id, ''), nullif(unionid, ''), u_type, u_app
		FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[]) AS s(id, third_id, unionid, u_type, u_app)
		ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
			third_id = coalesce(excluded.third_id, c.third_id),
			unionid = coalesce(excluded.unionid, c.unionid),
			unionid_app_type = CASE WHEN excluded.unionid IS NULL THEN c.unionid_app_type ELSE excluded.unionid_app_type END,
			unionid_app_id = CASE WHEN excluded.unionid IS NULL THEN c.unionid_app_id ELSE excluded.unionid_app_id END
		WHERE (c.third_id, c.unionid, c.unionid_app_type, c.unionid_app_id) IS DISTINCT FROM
			(coalesce(excluded.third_id, c.third_id), coalesce(excluded.unionid, c.unionid),
			 CASE WHEN excluded.unionid IS NULL THEN c.unionid_app_type ELSE excluded.unionid_app_type END,
			 CASE WHEN excluded.unionid IS NULL THEN c.unionid_app_id ELSE excluded.unionid_app_id END)`
)

// mergeInto applies a line's fields to the stored ones: a thirdId or
// unionid given replaces the stored one (the unionid with its binding), one
// left out keeps it. It reports whether anything changed.
func (s *stagedCustomer) mergeInto(stored *stagedCustomer) bool {
	merged := *stored
	if s.thirdID != "" {
		merged.thirdID = s.thirdID
	}
	if s.unionid != "" {
		merged.unionid, merged.uType, merged.uApp = s.unionid, s.uType, s.uApp
	}
	if merged == *stored {
		return false
	}
	*stored = merged
	return true
}

// copyNewMergeRest reads which of the chunk's customers the tenant has,
// COPYs the others with their identities, and merges the rest: an update
// per customer that changes, and the identities it lacks. It returns how
// many customers it COPYed.
func copyNewMergeRest(ctx context.Context, tx pgx.Tx, tenantID int64, c *loadChunk) (int, error) {
	ids := make([]int64, len(c.customers))
	for i, s := range c.customers {
		ids[i] = s.id
	}
	rows, err := tx.Query(ctx, findLoadedSQL, tenantID, ids)
	if err != nil {
		return 0, fmt.Errorf("find loaded customers: %w", err)
	}
	stored := make(map[int64]stagedCustomer)
	for rows.Next() {
		var s stagedCustomer
		if err := rows.Scan(&s.id, &s.thirdID, &s.unionid, &s.uType, &s.uApp); err != nil {
			return 0, fmt.Errorf("find loaded customers: %w", err)
		}
		stored[s.id] = s
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("find loaded customers: %w", err)
	}
	isOld := func(id int64) bool { _, ok := stored[id]; return ok }
	newCust, oldCust := splitBy(c.customers, func(s stagedCustomer) bool { return isOld(s.id) })
	var newBound, oldBound [pipeline.NumKinds][]stagedIdentity
	for o := range c.bound {
		newBound[o], oldBound[o] = splitBy(c.bound[o], func(s stagedIdentity) bool { return isOld(s.id) })
	}
	if len(newCust) > 0 {
		if err := copyRows(ctx, tx, tenantID, newCust, &newBound); err != nil {
			return 0, err
		}
	}
	b := &pgx.Batch{}
	for i := range oldCust {
		line := &oldCust[i]
		cur := stored[line.id]
		if line.mergeInto(&cur) {
			b.Queue(updateCustomerSQL, tenantID, cur.id, nullable(cur.thirdID), nullable(cur.unionid), cur.uType, cur.uApp)
		}
	}
	queueIdentities(b, tenantID, &oldBound)
	if b.Len() == 0 {
		return len(newCust), nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return 0, fmt.Errorf("merge customers: %w", err)
	}
	return len(newCust), nil
}

// splitBy returns the elements of s for which old is false, and those for
// which it is true, each in s's order.
func splitBy[T any](s []T, old func(T) bool) (fresh, stale []T) {
	for _, x := range s {
		if old(x) {
			stale = append(stale, x)
		} else {
			fresh = append(fresh, x)
		}
	}
	return fresh, stale
}

// copyRows COPYs customers the tenant does not have, and their identities,
// straight into the directory tables. It fails with a unique violation if
// some row exists after all.
func copyRows(ctx context.Context, tx pgx.Tx, tenantID int64, cust []stagedCustomer, bound *[pipeline.NumKinds][]stagedIdentity) error {
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"customers"},
		[]string{"tenant_id", "customer_id", "third_id", "unionid", "unionid_app_type", "unionid_app_id"},
		pgx.CopyFromSlice(len(cust), func(i int) ([]any, error) {
			s := &cust[i]
			return []any{tenantID, s.id, nullable(s.thirdID), nullable(s.unionid), s.uType, s.uApp}, nil
		})); err != nil {
		return fmt.Errorf("copy customers: %w", err)
	}
	kinds := identity.Kinds()
	for o, rows := range bound {
		if len(rows) == 0 {
			continue
		}
		d := kinds[o].Directory
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{d.Table},
			[]string{"tenant_id", d.Column, "customer_id", d.AppType, d.AppID},
			pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
				s := &rows[i]
				return []any{tenantID, s.value, s.id, s.appType, s.app}, nil
			})); err != nil {
			return fmt.Errorf("copy %s: %w", d.LineField, err)
		}
	}
	return nil
}

// upsertAll merges the whole chunk with set-based upserts, whoever else
// writes the tenant's directory meanwhile.
func upsertAll(ctx context.Context, tx pgx.Tx, tenantID int64, c *loadChunk) error {
	n := len(c.customers)
	ids, thirds, unions, uTypes, uApps := make([]int64, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, s := range c.customers {
		ids[i], thirds[i], unions[i], uTypes[i], uApps[i] = s.id, s.thirdID, s.unionid, s.uType, s.uApp
	}
	b := &pgx.Batch{}
	b.Queue(upsertCustomersSQL, tenantID, ids, thirds, unions, uTypes, uApps)
	queueIdentities(b, tenantID, &c.bound)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("upsert customers: %w", err)
	}
	return nil
}

// queueIdentities queues the inserts of identities that may exist already,
// by ordinal.
func queueIdentities(b *pgx.Batch, tenantID int64, bound *[pipeline.NumKinds][]stagedIdentity) {
	kinds := identity.Kinds()
	for o, rows := range bound {
		if len(rows) == 0 {
			continue
		}
		m := len(rows)
		vs, ids, types, apps := make([]string, m), make([]int64, m), make([]string, m), make([]string, m)
		for i, s := range rows {
			vs[i], ids[i], types[i], apps[i] = s.value, s.id, s.appType, s.app
		}
		b.Queue(insertIdentitiesSQL(kinds[o].Directory), tenantID, vs, ids, types, apps)
	}
}

// insertIdentitiesSQL adds identities kept in table d from arrays: values,
// customers, application types and ids ($2 to $5) of the tenant $1. One
// already stored is left alone (not even locked).
func insertIdentitiesSQL(d identity.Store) string {
	return `INSERT INTO ` + d.Table + ` (tenant_id, ` + d.Column + `, customer_id, ` + d.AppType + `, ` + d.AppID + `)
		SELECT $1, v, id, t, a FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[]) AS s(v, id, t, a)
		ON CONFLICT DO NOTHING`
}

// directoryTables lists the directory's tables: customers, then the table
// of each kind kept in one of its own.
func directoryTables() []string {
	tables := []string{"customers"}
	for _, k := range identity.Kinds() {
		if k.Directory.Multi() {
			tables = append(tables, k.Directory.Table)
		}
	}
	return tables
}

// lineIdentities returns, by ordinal, the identities a directory line gives
// of each kind the directory keeps in a table of its own (its LineField):
// phones and emails as sent, openids with their application trimmed.
func lineIdentities(d *DirectoryLine) [pipeline.NumKinds][]BoundIdentity {
	var out [pipeline.NumKinds][]BoundIdentity
	out[pipeline.KindOrdinal(pipeline.KindPhone)] = d.Phones
	out[pipeline.KindOrdinal(pipeline.KindEmail)] = d.Emails
	if len(d.OpenIDs) > 0 {
		open := make([]BoundIdentity, len(d.OpenIDs))
		for i, o := range d.OpenIDs {
			open[i] = BoundIdentity{o.OpenID, strings.TrimSpace(o.AppType), strings.TrimSpace(o.AppID)}
		}
		out[pipeline.KindOrdinal(pipeline.KindOpenID)] = open
	}
	return out
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}
