package matcher

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"encoding/json"
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

	"github.com/groupmatch/groupmatch/internal/jsonscan"
	"github.com/groupmatch/groupmatch/retry"
)

// MaxLoadedCustomerID is the largest customerId `directory load` accepts:
// ids from 2^52 up are reserved for customers that isMatching=false imports
// create, so the two never collide.
const MaxLoadedCustomerID = 1<<52 - 1

// MaxLineBytes is the longest directory line the loader reads; a longer one
// is reported as bad and skipped.
const MaxLineBytes = 4 << 20

// DirectoryLine is one JSON line of a directory file (SPEC §9). The loader
// reads lines with its own parser, decodeLine; the type decodes the same
// way with encoding/json (FuzzDecodeLine holds the two to it).
type DirectoryLine struct {
	CustomerID int64           `json:"customerId"`
	ThirdID    string          `json:"thirdId"`
	UnionID    BoundIdentity   `json:"unionid"`
	Phones     []BoundIdentity `json:"phones"`
	OpenIDs    []AppOpenID     `json:"openids"`
}

// BoundIdentity is a phone or unionid, given either as a plain string or as
// {"phone"|"unionid": "…", "appType": "…", "appId": "…"}, binding it to the
// application it came through.
type BoundIdentity struct {
	Value   string
	AppType string
	AppID   string
}

// UnmarshalJSON accepts a string, null or an object.
func (b *BoundIdentity) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' || bytes.Equal(data, []byte("null")) {
		return json.Unmarshal(data, &b.Value)
	}
	var o struct {
		Phone   *string `json:"phone"`
		UnionID *string `json:"unionid"`
		AppType string  `json:"appType"`
		AppID   string  `json:"appId"`
	}
	if err := json.Unmarshal(data, &o); err != nil {
		return err
	}
	switch {
	case o.Phone != nil:
		b.Value = *o.Phone
	case o.UnionID != nil:
		b.Value = *o.UnionID
	default:
		return lineProblem("an identity object names neither phone nor unionid")
	}
	b.AppType, b.AppID = strings.TrimSpace(o.AppType), strings.TrimSpace(o.AppID)
	if (b.AppType == "") != (b.AppID == "") {
		return lineProblem("an identity's appType and appId go together")
	}
	return nil
}

// lineProblem is what is wrong with a directory line, in words that name
// fields and never values.
type lineProblem string

func (p lineProblem) Error() string { return string(p) }

// AppOpenID is an openid with the application that issued it.
type AppOpenID struct {
	OpenID  string `json:"openid"`
	AppType string `json:"appType"`
	AppID   string `json:"appId"`
}

// LineError is a bad directory line; the load skips it and goes on. Err
// names the problem and the field, never a value of the line.
type LineError struct {
	Line int // counted from 1
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

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
	phones    []stagedIdentity
	openids   []stagedIdentity
	lines     int   // input lines the chunk spans, bad and blank ones included
	good      int   // good lines among them
	bytes     int64 // input bytes the chunk spans
	done      chan struct{}
}

func newLoadChunk(size int) *loadChunk {
	return &loadChunk{
		customers: make([]stagedCustomer, 0, size),
		byID:      make(map[int64]int, size),
		done:      make(chan struct{}),
	}
}

// add merges one parsed line into the chunk.
func (c *loadChunk) add(sc stagedCustomer, phones, openids []stagedIdentity) {
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
	c.phones = append(c.phones, phones...)
	c.openids = append(c.openids, openids...)
}

// seal sorts the chunk's rows by the keys of the indexes they go into and
// drops duplicate identities.
func (c *loadChunk) seal() {
	slices.SortFunc(c.customers, func(a, b stagedCustomer) int {
		return cmp.Or(strings.Compare(a.unionid, b.unionid), cmp.Compare(a.id, b.id))
	})
	c.phones = sortIdentities(c.phones)
	c.openids = sortIdentities(c.openids)
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
				return fmt.Errorf("matcher: read directory line %d: %w", lineNo+1, err)
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
	_, err := l.db.Exec(ctx, `ANALYZE customers, customer_phones, customer_openids`)
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
	sc := stagedCustomer{id: d.CustomerID, thirdID: usableValue(d.ThirdID)}
	if u := usableValue(d.UnionID.Value); u != "" {
		sc.unionid, sc.uType, sc.uApp = u, d.UnionID.AppType, d.UnionID.AppID
	}
	var phones, openids []stagedIdentity
	for i, p := range d.Phones {
		if IsBlocked(p.Value) {
			continue
		}
		norm, ok := NormalizePhone(p.Value)
		if !ok {
			return fmt.Errorf("phones[%d] is not a valid phone number", i)
		}
		phones = append(phones, stagedIdentity{norm, p.AppType, p.AppID, d.CustomerID})
	}
	for i, o := range d.OpenIDs {
		v := usableValue(o.OpenID)
		if v == "" {
			continue
		}
		at, app := strings.TrimSpace(o.AppType), strings.TrimSpace(o.AppID)
		if at == "" || app == "" {
			return fmt.Errorf("openids[%d] needs appType and appId", i)
		}
		openids = append(openids, stagedIdentity{v, at, app, d.CustomerID})
	}
	c.add(sc, phones, openids)
	return nil
}

// hasNUL reports whether a text of d holds a NUL character.
func hasNUL(d *DirectoryLine) bool {
	nul := func(ss ...string) bool {
		for _, s := range ss {
			if strings.IndexByte(s, 0) >= 0 {
				return true
			}
		}
		return false
	}
	if nul(d.ThirdID, d.UnionID.Value, d.UnionID.AppType, d.UnionID.AppID) {
		return true
	}
	for _, p := range d.Phones {
		if nul(p.Value, p.AppType, p.AppID) {
			return true
		}
	}
	for _, o := range d.OpenIDs {
		if nul(o.OpenID, o.AppType, o.AppID) {
			return true
		}
	}
	return false
}

// usableValue trims s and returns "" for a blocked value.
func usableValue(s string) string {
	if IsBlocked(s) {
		return ""
	}
	return strings.TrimSpace(s)
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
		return 0, fmt.Errorf("matcher: load directory chunk: %w", err)
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

	// insertPhonesSQL and insertOpenIDsSQL add identities from arrays; one
	// already stored is left alone (not even locked).
	insertPhonesSQL = `INSERT INTO customer_phones (tenant_id, phone, customer_id, app_type, app_id)
		SELECT $1, v, id, t, a FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[]) AS s(v, id, t, a)
		ON CONFLICT DO NOTHING`
	insertOpenIDsSQL = `INSERT INTO customer_openids (tenant_id, openid, app_type, app_id, customer_id)
		SELECT $1, v, t, a, id FROM unnest($2::text[], $3::bigint[], $4::text[], $5::text[]) AS s(v, id, t, a)
		ON CONFLICT DO NOTHING`
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
	newPhones, oldPhones := splitBy(c.phones, func(s stagedIdentity) bool { return isOld(s.id) })
	newOpen, oldOpen := splitBy(c.openids, func(s stagedIdentity) bool { return isOld(s.id) })
	if len(newCust) > 0 {
		if err := copyRows(ctx, tx, tenantID, newCust, newPhones, newOpen); err != nil {
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
	queueIdentities(b, tenantID, oldPhones, oldOpen)
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
func copyRows(ctx context.Context, tx pgx.Tx, tenantID int64, cust []stagedCustomer, phones, openids []stagedIdentity) error {
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{"customers"},
		[]string{"tenant_id", "customer_id", "third_id", "unionid", "unionid_app_type", "unionid_app_id"},
		pgx.CopyFromSlice(len(cust), func(i int) ([]any, error) {
			s := &cust[i]
			return []any{tenantID, s.id, nullable(s.thirdID), nullable(s.unionid), s.uType, s.uApp}, nil
		})); err != nil {
		return fmt.Errorf("copy customers: %w", err)
	}
	if len(phones) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"customer_phones"},
			[]string{"tenant_id", "phone", "customer_id", "app_type", "app_id"},
			pgx.CopyFromSlice(len(phones), func(i int) ([]any, error) {
				s := &phones[i]
				return []any{tenantID, s.value, s.id, s.appType, s.app}, nil
			})); err != nil {
			return fmt.Errorf("copy phones: %w", err)
		}
	}
	if len(openids) > 0 {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"customer_openids"},
			[]string{"tenant_id", "openid", "app_type", "app_id", "customer_id"},
			pgx.CopyFromSlice(len(openids), func(i int) ([]any, error) {
				s := &openids[i]
				return []any{tenantID, s.value, s.appType, s.app, s.id}, nil
			})); err != nil {
			return fmt.Errorf("copy openids: %w", err)
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
	queueIdentities(b, tenantID, c.phones, c.openids)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("upsert customers: %w", err)
	}
	return nil
}

// queueIdentities queues the inserts of identities that may exist already.
func queueIdentities(b *pgx.Batch, tenantID int64, phones, openids []stagedIdentity) {
	for _, t := range []struct {
		sql  string
		rows []stagedIdentity
	}{{insertPhonesSQL, phones}, {insertOpenIDsSQL, openids}} {
		if len(t.rows) == 0 {
			continue
		}
		m := len(t.rows)
		vs, ids, types, apps := make([]string, m), make([]int64, m), make([]string, m), make([]string, m)
		for i, s := range t.rows {
			vs[i], ids[i], types[i], apps[i] = s.value, s.id, s.appType, s.app
		}
		b.Queue(t.sql, tenantID, vs, ids, types, apps)
	}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// lineReader splits its input into lines of at most MaxLineBytes and
// counts the bytes it consumed.
type lineReader struct {
	br   *bufio.Reader
	long []byte // a line longer than the buffer, being assembled
	n    int64  // bytes consumed
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 256<<10)}
}

// next returns the next line without its end of line; the slice is valid
// until the next call. tooLong reports a line longer than MaxLineBytes,
// whose bytes are dropped. At the end of the input it returns io.EOF (a last
// line without a newline is returned first).
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	lr.long = lr.long[:0]
	for {
		frag, err := lr.br.ReadSlice('\n')
		lr.n += int64(len(frag))
		switch {
		case err == bufio.ErrBufferFull:
			if !tooLong && len(lr.long)+len(frag) <= MaxLineBytes {
				lr.long = append(lr.long, frag...)
			} else {
				tooLong, lr.long = true, lr.long[:0]
			}
			continue
		case err == io.EOF && len(frag) == 0 && len(lr.long) == 0 && !tooLong:
			return nil, false, io.EOF
		case err != nil && err != io.EOF:
			return nil, false, err
		}
		frag = bytes.TrimSuffix(frag, []byte{'\n'})
		if len(lr.long) > 0 || tooLong {
			if !tooLong && len(lr.long)+len(frag) <= MaxLineBytes {
				return append(lr.long, frag...), false, nil
			}
			return nil, true, nil
		}
		if len(frag) > MaxLineBytes {
			return nil, true, nil
		}
		return frag, false, nil
	}
}

// decodeLine parses a directory line into d as json.Unmarshal would (see
// DirectoryLine and BoundIdentity), five to ten times faster, with two
// differences: member names match exactly or ignoring ASCII letter case
// (encoding/json also folds the Kelvin sign and the long s), and a member
// the line gives twice is an error rather than a quiet merge. Unknown
// members are skipped, whatever valid JSON they hold; invalid UTF-8 in a
// string reads as U+FFFD. Errors are lineProblems that name fields, never
// values.
func decodeLine(line []byte, d *DirectoryLine) error {
	p := lineParser{s: jsonscan.New(line)}
	err := p.line(d)
	if err == nil {
		return nil
	}
	if se := (*jsonscan.Error)(nil); errors.As(err, &se) {
		return lineProblem(se.Error()) // an offset, or "nested too deeply"
	}
	return err
}

// line reads a whole line into d.
func (p *lineParser) line(d *DirectoryLine) error {
	if p.s.Literal("null") {
		// json.Unmarshal leaves d as it was.
		return p.s.End()
	}
	if p.s.Peek() != '{' {
		if err := p.skipValue(0); err != nil {
			return err
		}
		return lineProblem("not a JSON object")
	}
	var seen uint8
	err := p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "customerId", "thirdId", "unionid", "phones", "openids")
		if err != nil || bit < 0 {
			if err != nil {
				return err
			}
			return p.skipValue(1)
		}
		switch bit {
		case 0:
			return p.int64Field(&d.CustomerID, "customerId")
		case 1:
			return p.stringField(&d.ThirdID, "thirdId")
		case 2:
			return p.bound(&d.UnionID, "unionid")
		case 3:
			return p.array("phones", func() error {
				d.Phones = append(d.Phones, BoundIdentity{})
				return p.bound(&d.Phones[len(d.Phones)-1], "phones")
			}, func() { d.Phones = nil })
		default:
			return p.array("openids", func() error {
				d.OpenIDs = append(d.OpenIDs, AppOpenID{})
				return p.openID(&d.OpenIDs[len(d.OpenIDs)-1])
			}, func() { d.OpenIDs = nil })
		}
	})
	if err != nil {
		return err
	}
	return p.s.End()
}

// memberBit returns the index of name among names, ignoring ASCII case, or
// -1; a name seen before (recorded in seen) is an error.
func memberBit(name []byte, seen *uint8, names ...string) (int, error) {
	for i, n := range names {
		if jsonscan.EqualFoldASCII(name, n) {
			if *seen&(1<<i) != 0 {
				return -1, lineProblem("member " + n + " is given twice")
			}
			*seen |= 1 << i
			return i, nil
		}
	}
	return -1, nil
}

// lineParser fills a DirectoryLine from the JSON a jsonscan.Scanner reads.
type lineParser struct {
	s jsonscan.Scanner
}

// maxLineDepth bounds the nesting of skipped values.
const maxLineDepth = 1000

func wrongType(field string) error { return lineProblem("field " + field + " has the wrong type") }

// array reads null (calling null) or an array, calling elem before each
// element.
func (p *lineParser) array(field string, elem func() error, null func()) error {
	if p.s.Literal("null") {
		null()
		return nil
	}
	if p.s.Peek() != '[' {
		return p.typeErrorAfterSkip(field)
	}
	return p.s.Array(elem)
}

// typeErrorAfterSkip reports a value of the wrong type for field, or a
// syntax error if the value is not JSON at all.
func (p *lineParser) typeErrorAfterSkip(field string) error {
	if err := p.skipValue(1); err != nil {
		return err
	}
	return wrongType(field)
}

// stringField reads a string or null (which leaves *dst alone).
func (p *lineParser) stringField(dst *string, field string) error {
	switch {
	case p.s.Literal("null"):
		return nil
	case p.s.Peek() != '"':
		return p.typeErrorAfterSkip(field)
	}
	s, err := p.s.Text()
	if err != nil {
		return err
	}
	*dst = string(s)
	return nil
}

// optString reads a string or null (which sets *dst to nil).
func (p *lineParser) optString(dst **string, field string) error {
	if p.s.Literal("null") {
		*dst = nil
		return nil
	}
	var s string
	if err := p.stringField(&s, field); err != nil {
		return err
	}
	*dst = &s
	return nil
}

// int64Field reads an integer that fits an int64, or null.
func (p *lineParser) int64Field(dst *int64, field string) error {
	if p.s.Literal("null") {
		return nil
	}
	c := p.s.Peek()
	if c != '-' && (c < '0' || c > '9') {
		return p.typeErrorAfterSkip(field)
	}
	raw, err := p.s.Number()
	if err != nil {
		return err
	}
	n, ok := jsonscan.ParseInt(raw, 64)
	if !ok { // a fraction, an exponent or out of range
		return wrongType(field)
	}
	*dst = n
	return nil
}

// bound reads a BoundIdentity: a string, null or an object.
func (p *lineParser) bound(dst *BoundIdentity, field string) error {
	switch p.s.Peek() {
	case '"':
		return p.stringField(&dst.Value, field)
	case '{':
	default:
		if p.s.Literal("null") {
			return nil
		}
		return p.typeErrorAfterSkip(field)
	}
	var phone, union *string
	var appType, appID string
	var seen uint8
	err := p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "phone", "unionid", "appType", "appId")
		switch {
		case err != nil:
			return err
		case bit == 0:
			return p.optString(&phone, field)
		case bit == 1:
			return p.optString(&union, field)
		case bit == 2:
			return p.stringField(&appType, field)
		case bit == 3:
			return p.stringField(&appID, field)
		}
		return p.skipValue(2)
	})
	if err != nil {
		return err
	}
	switch {
	case phone != nil:
		dst.Value = *phone
	case union != nil:
		dst.Value = *union
	default:
		return lineProblem("an identity object names neither phone nor unionid")
	}
	dst.AppType, dst.AppID = strings.TrimSpace(appType), strings.TrimSpace(appID)
	if (dst.AppType == "") != (dst.AppID == "") {
		return lineProblem("an identity's appType and appId go together")
	}
	return nil
}

// openID reads an AppOpenID: an object or null.
func (p *lineParser) openID(dst *AppOpenID) error {
	if p.s.Literal("null") {
		return nil
	}
	if p.s.Peek() != '{' {
		return p.typeErrorAfterSkip("openids")
	}
	var seen uint8
	return p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "openid", "appType", "appId")
		switch {
		case err != nil:
			return err
		case bit == 0:
			return p.stringField(&dst.OpenID, "openids.openid")
		case bit == 1:
			return p.stringField(&dst.AppType, "openids.appType")
		case bit == 2:
			return p.stringField(&dst.AppID, "openids.appId")
		}
		return p.skipValue(2)
	})
}

// skipValue consumes any JSON value found depth levels down in the line;
// no value in the line may be more than maxLineDepth levels down.
func (p *lineParser) skipValue(depth int) error {
	_, err := p.s.Skip(maxLineDepth - depth)
	return err
}
