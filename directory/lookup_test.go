package directory

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// loadLines loads directory lines into the tenant and fails the test on any
// error or bad line.
func loadLines(t testing.TB, db *pgxpool.Pool, tenantID int64, lines ...string) {
	t.Helper()
	p, err := NewLoader(db).Load(context.Background(), tenantID, strings.NewReader(strings.Join(lines, "\n")))
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if len(p.Bad) > 0 {
		t.Fatalf("load: bad lines %v", p.Bad)
	}
}

func TestLookup(t *testing.T) {
	db, _ := schematest.NewPool(t)
	a, b := ensureTenant(t, db, "a"), ensureTenant(t, db, "b")
	loadLines(t, db, a,
		`{"customerId": 1, "thirdId": "crm-1", "unionid": "u1", "phones": ["13800000001"], "openids": [{"openid": "oSame", "appType": "gzh", "appId": "wx1"}]}`,
		`{"customerId": 2, "thirdId": "crm-2", "unionid": {"unionid": "u2", "appType": "gzh", "appId": "wx1"}, "phones": ["13800000001", {"phone": "13800000002", "appType": "YOUZAN", "appId": "shop1"}, "13800000002"], "openids": [{"openid": "oSame", "appType": "gzh", "appId": "wx2"}]}`,
		`{"customerId": 3, "phones": ["+44 20 7946 0958"]}`,
	)
	loadLines(t, db, b, `{"customerId": 1, "thirdId": "crm-1", "phones": ["13800000001"]}`)
	dir := NewPGDirectory(db)
	key := func(tenant int64, kind pipeline.IdentityKind, v string) Key { return Key{tenant, kind, v} }
	tests := []struct {
		name string
		keys []Key
		want map[Key][]identity.Binding
	}{
		{"nothing", nil, map[Key][]identity.Binding{}},
		{"phone shared by two customers", []Key{key(a, pipeline.KindPhone, "13800000001")},
			map[Key][]identity.Binding{key(a, pipeline.KindPhone, "13800000001"): {{CustomerID: 1}, {CustomerID: 2}}}},
		{"phone bound and unbound on one customer", []Key{key(a, pipeline.KindPhone, "13800000002")},
			map[Key][]identity.Binding{key(a, pipeline.KindPhone, "13800000002"): {{CustomerID: 2}, {CustomerID: 2, AppType: "YOUZAN", AppID: "shop1"}}}},
		{"e164 phone stored canonical", []Key{key(a, pipeline.KindPhone, "+442079460958")},
			map[Key][]identity.Binding{key(a, pipeline.KindPhone, "+442079460958"): {{CustomerID: 3}}}},
		{"openid under two apps", []Key{key(a, pipeline.KindOpenID, "oSame")},
			map[Key][]identity.Binding{key(a, pipeline.KindOpenID, "oSame"): {{CustomerID: 1, AppType: "gzh", AppID: "wx1"}, {CustomerID: 2, AppType: "gzh", AppID: "wx2"}}}},
		{"unionid bound and not", []Key{key(a, pipeline.KindUnionID, "u1"), key(a, pipeline.KindUnionID, "u2")},
			map[Key][]identity.Binding{key(a, pipeline.KindUnionID, "u1"): {{CustomerID: 1}}, key(a, pipeline.KindUnionID, "u2"): {{CustomerID: 2, AppType: "gzh", AppID: "wx1"}}}},
		{"thirdId", []Key{key(a, pipeline.KindThirdID, "crm-2")},
			map[Key][]identity.Binding{key(a, pipeline.KindThirdID, "crm-2"): {{CustomerID: 2}}}},
		{"tenants apart, in one call", []Key{key(a, pipeline.KindThirdID, "crm-1"), key(b, pipeline.KindThirdID, "crm-1"), key(b, pipeline.KindPhone, "13800000001")},
			map[Key][]identity.Binding{
				key(a, pipeline.KindThirdID, "crm-1"):     {{CustomerID: 1}},
				key(b, pipeline.KindThirdID, "crm-1"):     {{CustomerID: 1}},
				key(b, pipeline.KindPhone, "13800000001"): {{CustomerID: 1}},
			}},
		{"not found and other tenant absent", []Key{key(a, pipeline.KindUnionID, "nobody"), key(b, pipeline.KindUnionID, "u1"), key(3, pipeline.KindPhone, "13800000001")},
			map[Key][]identity.Binding{}},
		{"values are exact", []Key{key(a, pipeline.KindThirdID, "CRM-1"), key(a, pipeline.KindUnionID, "U1"), key(a, pipeline.KindThirdID, " crm-1")},
			map[Key][]identity.Binding{}},
		{"repeated keys answered once", []Key{key(a, pipeline.KindThirdID, "crm-1"), key(a, pipeline.KindThirdID, "crm-1")},
			map[Key][]identity.Binding{key(a, pipeline.KindThirdID, "crm-1"): {{CustomerID: 1}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits, err := dir.Lookup(context.Background(), tt.keys)
			if err != nil {
				t.Fatal(err)
			}
			got := hits.Map()
			for k, bs := range got {
				sortBindings(bs)
				got[k] = bs
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("Lookup = %v\nwant %v", got, tt.want)
			}
		})
	}
	t.Run("unknown kind", func(t *testing.T) {
		if _, err := dir.Lookup(context.Background(), []Key{{a, "mobile", "x"}}); err == nil {
			t.Error("Lookup of an unknown kind succeeded")
		}
	})
	t.Run("observed queries", func(t *testing.T) {
		var seen []string
		dir := NewPGDirectory(db)
		dir.ObserveQuery = func(kind pipeline.IdentityKind, values int) { seen = append(seen, fmt.Sprintf("%s:%d", kind, values)) }
		_, err := dir.Lookup(context.Background(), []Key{key(a, pipeline.KindPhone, "1"), key(a, pipeline.KindThirdID, "x"),
			key(a, pipeline.KindPhone, "2"), key(a, pipeline.KindPhone, "1"), key(b, pipeline.KindPhone, "1")})
		if err != nil {
			t.Fatal(err)
		}
		// One query per tenant and kind, with its distinct values.
		if want := []string{"phone:2", "id:1", "phone:1"}; !slices.Equal(seen, want) {
			t.Errorf("observed %v, want %v", seen, want)
		}
	})
}

func sortBindings(bs []identity.Binding) {
	slices.SortFunc(bs, func(x, y identity.Binding) int {
		if c := x.CustomerID - y.CustomerID; c != 0 {
			return int(c)
		}
		return strings.Compare(x.AppType+"/"+x.AppID, y.AppType+"/"+y.AppID)
	})
}

// TestDirectoryQueriesUseIndexes checks, with and without planner
// statistics, that every batched query of the matcher and of the loader
// probes an index rather than scanning a table.
//
// The matcher's look-ups are cached statements: after five executions on a
// connection PostgreSQL runs them with a generic plan, which must probe the
// index whatever the table's size. Their first, custom plans are cost-based
// choices between probing the index per value and reading the tenant's
// whole directory, which does win for small tenants; TestLoad1M checks them
// on a million customers. The loader's statements and the find of
// find-or-create are pinned to index probes whatever the plan.
func TestDirectoryQueriesUseIndexes(t *testing.T) {
	db, _ := schematest.NewPool(t)
	schematest.SkipOnCitus(t, db, "it pins PostgreSQL plan shapes, and Citus plans distributed tables its own way")
	ctx := context.Background()
	tenant := ensureTenant(t, db, "big")
	const customers = 60000
	// Loads of fewer than analyzeAfter new customers leave the statistics
	// to autovacuum.
	for from := 0; from < customers; from += analyzeAfter - 1 {
		var file strings.Builder
		if err := matchertest.WriteBig(&file, from, min(from+analyzeAfter-1, customers)); err != nil {
			t.Fatal(err)
		}
		loadLines(t, db, tenant, file.String())
	}

	// Chunk-sized arrays of values, half of them present.
	const n = 1000
	values := map[pipeline.IdentityKind][]string{}
	tenants := make([]int64, n)
	ids := make([]int64, n)
	empty := make([]string, n)
	for i := range n {
		c := i * (customers / n)
		if i%2 == 1 {
			c += customers // absent
		}
		values[pipeline.KindPhone] = append(values[pipeline.KindPhone], matchertest.BigPhone(c, 0))
		values[pipeline.KindOpenID] = append(values[pipeline.KindOpenID], matchertest.BigOpenID(c, 0))
		values[pipeline.KindUnionID] = append(values[pipeline.KindUnionID], matchertest.BigUnionID(c)+"x")
		values[pipeline.KindThirdID] = append(values[pipeline.KindThirdID], fmt.Sprintf("crm-%d", c))
		tenants[i], ids[i] = tenant, int64(c+1)
	}
	queries := []planQuery{
		{"lookup phone", lookupSQL[pipeline.KindPhone], "customer_phones_pkey", []any{tenant, values[pipeline.KindPhone]}, true},
		{"lookup openid", lookupSQL[pipeline.KindOpenID], "customer_openids_pkey", []any{tenant, values[pipeline.KindOpenID]}, true},
		{"lookup unionid", lookupSQL[pipeline.KindUnionID], "customers_unionid", []any{tenant, values[pipeline.KindUnionID]}, true},
		{"lookup id", lookupSQL[pipeline.KindThirdID], "customers_third_id", []any{tenant, values[pipeline.KindThirdID]}, true},
		{"load: loaded customers", findLoadedSQL, "customers_pkey", []any{tenant, ids}, true},
		{"load: update customer", updateCustomerSQL, "customers_pkey", []any{tenant, ids[0], "crm-0", "u", "", ""}, false},
		{"load: upsert customers", upsertCustomersSQL, "", []any{tenant, ids, values[pipeline.KindThirdID], empty, empty, empty}, false},
		{"load: insert phones", insertIdentitiesSQL(kindStore(pipeline.KindPhone)), "", []any{tenant, values[pipeline.KindPhone], ids, empty, empty}, false},
		{"load: insert openids", insertIdentitiesSQL(kindStore(pipeline.KindOpenID)), "", []any{tenant, values[pipeline.KindOpenID], ids, empty, empty}, false},
	}
	check := func(t *testing.T, stats string) {
		for _, q := range queries {
			for _, generic := range []bool{false, true} {
				if !generic && q.costBased {
					continue
				}
				t.Run(fmt.Sprintf("%s/%s/generic=%v", q.name, stats, generic), func(t *testing.T) {
					checkPlan(t, db, q, generic)
				})
			}
		}
	}
	check(t, "unanalyzed")

	// A load that adds analyzeAfter customers refreshes the statistics.
	var file strings.Builder
	if err := matchertest.WriteBig(&file, customers, customers+analyzeAfter); err != nil {
		t.Fatal(err)
	}
	p, err := NewLoader(db).Load(ctx, tenant, strings.NewReader(file.String()))
	if err != nil || !p.Analyzed || p.New != analyzeAfter {
		t.Fatalf("load: %v, %d new, analyzed %v; want %d new, analyzed", err, p.New, p.Analyzed, analyzeAfter)
	}
	check(t, "analyzed")

	// Once vacuumed, as a directory in use is, every look-up's generic
	// plan reads its index alone (migration 5: the thirdId and unionid
	// indexes carry what a look-up returns). Custom plans may rightly scan
	// a tenant this small.
	if _, err := db.Exec(ctx, "VACUUM customers, customer_phones, customer_openids"); err != nil {
		t.Fatal(err)
	}
	for _, q := range queries[:4] {
		plan := strings.Join(explainPlan(t, db, q, true, ""), "\n")
		if !strings.Contains(plan, "Index Only Scan using "+q.index+" ") {
			t.Errorf("%s: generic plan is not an index-only scan of %s:\n%s", q.name, q.index, plan)
		}
	}
}

// planQuery is a statement whose plan a test checks.
type planQuery struct {
	name, sql string
	index     string // the only index it may scan; "" for none
	args      []any
	costBased bool // its custom plan may rightly scan a small tenant
}

// checkPlan fails the test unless q's custom (or generic) plan reads the
// directory only through q.index, by its conditions: no table scan, no
// filter, no hash, merge or materialised join. It returns the plan.
func checkPlan(t *testing.T, db *pgxpool.Pool, q planQuery, generic bool) string {
	t.Helper()
	plan := explainPlan(t, db, q, generic, "")
	p := strings.Join(plan, "\n")
	for _, l := range plan {
		l = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(l), "->"))
		switch {
		case strings.HasPrefix(l, "Filter:"):
			t.Errorf("plan filters rows it read:\n%s", p)
			return p
		case strings.Contains(l, "Hash") || strings.Contains(l, "Merge") || strings.Contains(l, "Materialize"):
			t.Errorf("plan hashes, merges or materialises:\n%s", p)
			return p
		case strings.Contains(l, " Scan ") && !strings.HasPrefix(l, "Function Scan") && !strings.HasPrefix(l, "Subquery Scan") &&
			!strings.HasPrefix(l, "Bitmap Heap Scan") && // fetches what its Bitmap Index Scan found
			(q.index == "" || !strings.Contains(l, " using "+q.index+" ") && !strings.Contains(l, " on "+q.index+" ")):
			t.Errorf("plan scans other than by %q:\n%s", q.index, p)
			return p
		}
	}
	return p
}

// explainPlan returns the lines of EXPLAIN <options> of q's custom or
// generic plan, long lines cut. The statement runs (with ANALYZE) in a
// transaction that is rolled back.
func explainPlan(t *testing.T, db *pgxpool.Pool, q planQuery, generic bool, options string) []string {
	t.Helper()
	ctx := context.Background()
	var plan []string
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		mode := "force_custom_plan"
		if generic {
			mode = "force_generic_plan"
		}
		if _, err := tx.Exec(ctx, "SET LOCAL plan_cache_mode = "+mode); err != nil {
			return err
		}
		// EXPLAIN EXECUTE of a prepared statement shows the plans that
		// pgx's cached statements get.
		name := fmt.Sprintf("explain_%d", rand.Uint64())
		if _, err := tx.Exec(ctx, "PREPARE "+name+" AS "+q.sql); err != nil {
			return err
		}
		lits := make([]string, len(q.args))
		for i, a := range q.args {
			lits[i] = sqlLiteral(a)
		}
		rows, err := tx.Query(ctx, "EXPLAIN "+options+" EXECUTE "+name+"("+strings.Join(lits, ", ")+")")
		if err != nil {
			return err
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return err
		}
		for _, l := range lines {
			// Conditions quote the arrays: keep their start.
			if len(l) > 120 {
				l = l[:120] + "…"
			}
			plan = append(plan, l)
		}
		return errRollback
	})
	if err != nil && err != errRollback {
		t.Fatalf("explain: %v", err)
	}
	return plan
}

var errRollback = fmt.Errorf("rollback")

// sqlLiteral writes an int64, string, []int64 or []string as an SQL
// literal.
func sqlLiteral(v any) string {
	switch v := v.(type) {
	case int64:
		return fmt.Sprint(v)
	case string:
		return "'" + strings.ReplaceAll(v, "'", "''") + "'"
	case []int64:
		s := make([]string, len(v))
		for i, x := range v {
			s[i] = fmt.Sprint(x)
		}
		return "'{" + strings.Join(s, ",") + "}'"
	case []string:
		s := make([]string, len(v))
		for i, x := range v {
			x = strings.ReplaceAll(strings.ReplaceAll(x, `\`, `\\`), `"`, `\"`)
			s[i] = `"` + strings.ReplaceAll(x, "'", "''") + `"`
		}
		return "'{" + strings.Join(s, ",") + "}'"
	}
	panic(fmt.Sprintf("sqlLiteral: %T", v))
}

func TestFindOrCreateConcurrent(t *testing.T) {
	db, url := schematest.NewPool(t)
	ctx := context.Background()
	a, b := ensureTenant(t, db, "a"), ensureTenant(t, db, "b")
	// Loaded customers hold crm-0 … crm-19; one has the largest loaded id.
	var lines []string
	for i := range 20 {
		id := int64(i + 1)
		if i == 19 {
			id = MaxLoadedCustomerID
		}
		lines = append(lines, fmt.Sprintf(`{"customerId": %d, "thirdId": "crm-%d"}`, id, i))
	}
	loadLines(t, db, a, lines...)
	loaded := map[string]int64{}
	for i := range 20 {
		loaded[fmt.Sprintf("crm-%d", i)] = int64(i + 1)
	}
	loaded["crm-19"] = MaxLoadedCustomerID

	// Each goroutine has its own pool, so they really race on separate
	// connections, and asks for crm-0 … crm-99 in both tenants, in its own
	// order and chunking, some thirdIds twice in one call.
	const goroutines = 12
	type answer struct {
		tenant  int64
		third   string
		id      int64
		created bool
	}
	answers := make([][]answer, goroutines)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	for g := range goroutines {
		pool, err := pgxpool.New(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		if err := pool.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := NewPGDirectory(pool)
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			var reqs []CreateRequest
			for _, i := range rng.Perm(100) {
				for _, tenant := range []int64{a, b} {
					reqs = append(reqs, CreateRequest{
						TenantID: tenant, ThirdID: fmt.Sprintf("crm-%d", i),
						Values: kindValues(map[pipeline.IdentityKind]string{pipeline.KindPhone: fmt.Sprintf("139%08d", i),
							pipeline.KindOpenID: fmt.Sprintf("o-%d", i), pipeline.KindUnionID: fmt.Sprintf("u-%d", i)}),
						AppType: "gzh", AppID: "wx1",
					})
					if rng.IntN(5) == 0 {
						reqs = append(reqs, reqs[len(reqs)-1])
					}
				}
			}
			<-start
			for len(reqs) > 0 {
				n := min(len(reqs), 1+rng.IntN(60))
				res, err := dir.FindOrCreate(ctx, reqs[:n])
				if err != nil {
					errs <- err
					return
				}
				for i, r := range res {
					answers[g] = append(answers[g], answer{reqs[i].TenantID, reqs[i].ThirdID, r.CustomerID, r.Created})
					if r.Ambiguous {
						errs <- fmt.Errorf("ambiguous answer")
					}
				}
				reqs = reqs[n:]
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	type tk struct {
		tenant int64
		third  string
	}
	ids := map[tk]int64{}
	creations := map[tk]int{}
	for _, as := range answers {
		for _, x := range as {
			k := tk{x.tenant, x.third}
			if prev, ok := ids[k]; ok && prev != x.id {
				t.Errorf("%v answered %d and %d", k, prev, x.id)
			}
			ids[k] = x.id
			if x.created {
				creations[k]++
			}
		}
	}
	if len(ids) != 200 {
		t.Fatalf("%d (tenant, thirdId) answered, want 200", len(ids))
	}
	seen := map[int64]tk{}
	for k, id := range ids {
		if other, dup := seen[id]; dup && k.tenant == other.tenant {
			t.Errorf("%v and %v share customer %d", k, other, id)
		}
		seen[id] = k
		want, wasLoaded := loaded[k.third]
		switch {
		case k.tenant == a && wasLoaded:
			if id != want || creations[k] != 0 {
				t.Errorf("%v: id %d created %d times, want loaded %d, never created", k, id, creations[k], want)
			}
		default:
			if id < 1<<52 || id > pipeline.MaxBatchID {
				t.Errorf("%v: created id %d outside [2^52, 2^53)", k, id)
			}
			if creations[k] != 1 {
				t.Errorf("%v: created %d times, want once", k, creations[k])
			}
		}
	}
	if ids[tk{a, "crm-50"}] == ids[tk{b, "crm-50"}] {
		t.Errorf("tenants a and b share a created id for crm-50")
	}

	// Exactly one row per (tenant, thirdId), and the created customers
	// carry the first request's identities, bound to its application.
	var rowsPerThird int
	if err := db.QueryRow(ctx, `SELECT max(n) FROM (SELECT count(*) n FROM customers GROUP BY tenant_id, third_id) s`).Scan(&rowsPerThird); err != nil {
		t.Fatal(err)
	}
	if rowsPerThird != 1 {
		t.Errorf("some (tenant, thirdId) has %d customers", rowsPerThird)
	}
	var count int
	if err := db.QueryRow(ctx, `SELECT count(*) FROM customers`).Scan(&count); err != nil {
		t.Fatal(err)
	}
	if count != 200 {
		t.Errorf("%d customers, want 200 (20 loaded, 80 + 100 created)", count)
	}
	hits, err := NewPGDirectory(db).Lookup(ctx, []Key{
		{b, pipeline.KindPhone, "13900000050"}, {b, pipeline.KindOpenID, "o-50"}, {b, pipeline.KindUnionID, "u-50"},
		{a, pipeline.KindPhone, "13900000005"}, // crm-5 was loaded: found, not enriched
	})
	if err != nil {
		t.Fatal(err)
	}
	got := hits.Map()
	bound := []identity.Binding{{CustomerID: ids[tk{b, "crm-50"}], AppType: "gzh", AppID: "wx1"}}
	for _, k := range []Key{{b, pipeline.KindPhone, "13900000050"}, {b, pipeline.KindOpenID, "o-50"}, {b, pipeline.KindUnionID, "u-50"}} {
		if !slices.Equal(got[k], bound) {
			t.Errorf("%s of created crm-50 = %v, want %v", k.Kind, got[k], bound)
		}
	}
	if bs := got[Key{a, pipeline.KindPhone, "13900000005"}]; bs != nil {
		t.Errorf("loaded crm-5 gained phone bindings %v", bs)
	}
}

func TestFindOrCreate(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	a := ensureTenant(t, db, "a")
	loadLines(t, db, a,
		`{"customerId": 1, "thirdId": "twin"}`,
		`{"customerId": 2, "thirdId": "twin"}`,
		`{"customerId": 3, "thirdId": "crm-3"}`,
	)
	dir := NewPGDirectory(db)
	res, err := dir.FindOrCreate(ctx, []CreateRequest{
		{TenantID: a, ThirdID: "twin"},
		{TenantID: a, ThirdID: "crm-3", Values: kindValues(map[pipeline.IdentityKind]string{pipeline.KindPhone: "13900000003"})},
		{TenantID: a, ThirdID: "new", Values: kindValues(map[pipeline.IdentityKind]string{pipeline.KindPhone: "13900000009", pipeline.KindOpenID: "o9"})},
		{TenantID: a, ThirdID: "new", Values: kindValues(map[pipeline.IdentityKind]string{pipeline.KindPhone: "13900000010"})},
	})
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Ambiguous || res[0].CustomerID != 0 {
		t.Errorf("shared thirdId: %+v, want ambiguous", res[0])
	}
	if res[1] != (CreateResult{CustomerID: 3}) {
		t.Errorf("loaded thirdId: %+v, want customer 3 found", res[1])
	}
	if !res[2].Created || res[2].CustomerID < 1<<52 || res[3] != (CreateResult{CustomerID: res[2].CustomerID}) {
		t.Errorf("new thirdId twice: %+v, %+v; want one created, then found", res[2], res[3])
	}
	hits, err := dir.Lookup(ctx, []Key{{a, pipeline.KindPhone, "13900000009"}, {a, pipeline.KindPhone, "13900000010"}, {a, pipeline.KindOpenID, "o9"}})
	if err != nil {
		t.Fatal(err)
	}
	got := hits.Map()
	want := map[Key][]identity.Binding{
		{a, pipeline.KindPhone, "13900000009"}: {{CustomerID: res[2].CustomerID}},
		{a, pipeline.KindOpenID, "o9"}:         {{CustomerID: res[2].CustomerID}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("created identities %v, want the first request's %v (unbound without an application)", got, want)
	}
}

// failedRows is what pgx hands a queued query's callback when the batch
// failed (the connection died mid-batch, as in a PostgreSQL shutdown): it
// has an error and no result, so describing it panics, as pgx's does.
type failedRows struct{ pgx.Rows }

func (failedRows) Err() error { return errors.New("FATAL: terminating connection (SQLSTATE 57P01)") }
func (failedRows) FieldDescriptions() []pgconn.FieldDescription {
	panic("described a failed result")
}
func (failedRows) Next() bool { return false }
func (failedRows) Close()     {}

// A look-up whose queries failed returns the error instead of crashing the
// matcher (seen when PostgreSQL was stopped under load).
func TestCollectFailedRows(t *testing.T) {
	g := &lookupGroup{kind: pipeline.KindPhone, tenant: 1, index: map[string]int32{}}
	if err := g.collect(failedRows{}, map[string]string{}); err == nil {
		t.Fatal("collect of a failed result returned no error")
	}
}

// fakeRows replays raw rows as a pgx.Rows, as a query of a look-up would.
type fakeRows struct {
	pgx.Rows // unused methods panic
	fields   []pgconn.FieldDescription
	rows     [][][]byte
	i        int
}

func (r *fakeRows) Next() bool                                   { r.i++; return r.i <= len(r.rows) }
func (r *fakeRows) RawValues() [][]byte                          { return r.rows[r.i-1] }
func (r *fakeRows) Err() error                                   { return nil }
func (r *fakeRows) FieldDescriptions() []pgconn.FieldDescription { return r.fields }

func TestLookupGroupCollect(t *testing.T) {
	bin := func(n int64) []byte { return binary.BigEndian.AppendUint64(nil, uint64(n)) }
	row := func(v string, id []byte, app ...string) [][]byte {
		r := [][]byte{[]byte(v), id}
		for _, a := range app {
			r = append(r, []byte(a))
		}
		return r
	}
	fields := func(idFormat int16, n int) []pgconn.FieldDescription {
		f := make([]pgconn.FieldDescription, n)
		f[1].Format = idFormat
		return f
	}
	tests := []struct {
		name    string
		fields  []pgconn.FieldDescription
		rows    [][][]byte
		want    map[string][]identity.Binding // by value
		wantErr string
	}{
		{"runs of one value together", fields(pgx.BinaryFormatCode, 4),
			[][][]byte{row("a", bin(1), "", ""), row("a", bin(2), "gzh", "wx1"), row("b", bin(3), "", "")},
			map[string][]identity.Binding{"a": {{CustomerID: 1}, {CustomerID: 2, AppType: "gzh", AppID: "wx1"}}, "b": {{CustomerID: 3}}}, ""},
		{"scattered rows, as from a bitmap heap scan", fields(pgx.BinaryFormatCode, 4),
			[][][]byte{row("a", bin(1), "", ""), row("b", bin(3), "", ""), row("a", bin(2), "gzh", "wx1"), row("b", bin(4), "", "")},
			map[string][]identity.Binding{"a": {{CustomerID: 1}, {CustomerID: 2, AppType: "gzh", AppID: "wx1"}}, "b": {{CustomerID: 3}, {CustomerID: 4}}}, ""},
		{"text format ids, no application columns", fields(pgx.TextFormatCode, 2),
			[][][]byte{row("b", []byte("42"))},
			map[string][]identity.Binding{"b": {{CustomerID: 42}}}, ""},
		{"a value not asked about", fields(pgx.BinaryFormatCode, 2), [][][]byte{row("zzz", bin(1))}, nil, "not asked about"},
		{"a bad id", fields(pgx.BinaryFormatCode, 2), [][][]byte{row("a", []byte{1, 2})}, nil, "bad bigint"},
	}
	// The values in index order (sortValues), read with a cursor, and in
	// another order, read through the index map.
	for _, values := range [][]string{{"a", "b"}, {"b", "a"}} {
		for _, tt := range tests {
			t.Run(fmt.Sprintf("%s/values %v", tt.name, values), func(t *testing.T) {
				collectCase(t, values, tt.fields, tt.rows, tt.want, tt.wantErr)
			})
		}
	}
}

// collectCase collects rows into a group asking about values and checks
// the bindings found against want (by value), or the error against wantErr.
func collectCase(t *testing.T, values []string, fields []pgconn.FieldDescription, rows [][][]byte,
	want map[string][]identity.Binding, wantErr string) {
	t.Helper()
	g := &lookupGroup{tenant: 7, kind: pipeline.KindPhone, values: values, index: map[string]int32{},
		found: make([][]identity.Binding, len(values))}
	for i, v := range values {
		g.index[v] = int32(i)
	}
	err := g.collect(&fakeRows{fields: fields, rows: rows}, map[string]string{})
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("err = %v, want %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatal(err)
	}
	got := (&Hits{groups: []*lookupGroup{g}}).Map()
	wantKeys := map[Key][]identity.Binding{}
	for v, bs := range want {
		wantKeys[Key{7, pipeline.KindPhone, v}] = bs
	}
	if fmt.Sprint(got) != fmt.Sprint(wantKeys) {
		t.Errorf("collected %v, want %v", got, wantKeys)
	}
}

// kindValues returns the values of m by ordinal, as CreateRequest.Values
// holds them.
func kindValues(m map[pipeline.IdentityKind]string) (v [pipeline.NumKinds]string) {
	for k, x := range m {
		v[pipeline.KindOrdinal(k)] = x
	}
	return v
}

// kindStore returns where the directory keeps kind k.
func kindStore(k pipeline.IdentityKind) identity.Store {
	e, _ := identity.Of(k)
	return e.Directory
}

// Hits answers each (tenant, kind, value) it holds and nothing else, by a
// scan of its groups or, with many groups, by map; a nil Hits answers
// nothing.
func TestHits(t *testing.T) {
	for _, tenants := range []int64{1, 5} { // 4 groups per tenant: scanned, then mapped
		m := map[Key][]identity.Binding{}
		for tenant := int64(1); tenant <= tenants; tenant++ {
			for i, kind := range []pipeline.IdentityKind{pipeline.KindPhone, pipeline.KindOpenID, pipeline.KindUnionID, pipeline.KindThirdID} {
				m[Key{tenant, kind, "v"}] = []identity.Binding{{CustomerID: tenant*10 + int64(i)}}
			}
		}
		h := HitsOf(m)
		if (h.byKey != nil) != (len(h.groups) > manyGroups) {
			t.Fatalf("%d groups: byKey set %t", len(h.groups), h.byKey != nil)
		}
		if h.Len() != len(m) || fmt.Sprint(h.Map()) != fmt.Sprint(m) {
			t.Errorf("%d tenants: Map() = %v, want %v", tenants, h.Map(), m)
		}
		for k, want := range m {
			if got := h.Bindings(k.TenantID, k.Kind, k.Value); !slices.Equal(got, want) {
				t.Errorf("Bindings(%v) = %v, want %v", k, got, want)
			}
		}
		for _, k := range []Key{{1, pipeline.KindPhone, "w"}, {tenants + 1, pipeline.KindPhone, "v"}, {1, pipeline.KindEmail, "v"}} {
			if got := h.Bindings(k.TenantID, k.Kind, k.Value); got != nil {
				t.Errorf("Bindings(%v) = %v, want none", k, got)
			}
		}
	}
	var none *Hits
	if none.Bindings(1, pipeline.KindPhone, "v") != nil || none.Len() != 0 || len(none.Map()) != 0 {
		t.Error("a nil Hits answers something")
	}
}

// A key of a kind the directory does not keep fails the whole Lookup with
// an error naming the kind, after the known kinds before it were grouped.
func TestLookupUnknownKind(t *testing.T) {
	db, _ := schematest.NewPool(t)
	a := ensureTenant(t, db, "a")
	hits, err := NewPGDirectory(db).Lookup(context.Background(), []Key{
		{a, pipeline.KindPhone, "13800000001"}, {a, "shoe-size", "42"}, {a, "shoe-size", "43"},
	})
	if err == nil || !strings.Contains(err.Error(), `unknown identity kind "shoe-size"`) || hits != nil {
		t.Fatalf("Lookup = %v, %v; want no hits and an error naming the kind", hits, err)
	}
	if strings.Contains(err.Error(), "42") {
		t.Errorf("error %q shows a value", err)
	}
}

// The look-ups run with their generic plans even in a session that forces
// custom plans (as the stages' do), and leave the session's setting as it
// was: pg_prepared_statements counts the plans of the connection's
// prepared look-ups.
func TestLookupUsesGenericPlans(t *testing.T) {
	_, url := schematest.NewPool(t)
	ctx := context.Background()
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 1 // one session, whose prepared statements we read
	cfg.ConnConfig.RuntimeParams["plan_cache_mode"] = "force_custom_plan"
	db, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	a := ensureTenant(t, db, "a")
	loadLines(t, db, a, `{"customerId": 1, "thirdId": "crm-1", "phones": ["13800000001"]}`)
	dir := NewPGDirectory(db)
	for range 3 {
		hits, err := dir.Lookup(ctx, []Key{{a, pipeline.KindPhone, "13800000001"}, {a, pipeline.KindThirdID, "crm-1"}})
		if err != nil {
			t.Fatal(err)
		}
		if hits.Len() != 2 {
			t.Fatalf("found %v, want both values", hits.Map())
		}
	}
	var generic, custom int64
	var mode string
	err = db.QueryRow(ctx, `SELECT coalesce(sum(generic_plans), 0), coalesce(sum(custom_plans), 0), current_setting('plan_cache_mode')
		FROM pg_prepared_statements WHERE statement = ANY($1)`, lookupStatements()).Scan(&generic, &custom, &mode)
	if err != nil {
		t.Fatal(err)
	}
	if generic != 6 || custom != 0 {
		t.Errorf("look-ups planned %d times generic, %d custom; want 6 generic (2 queries × 3), none custom", generic, custom)
	}
	if mode != "force_custom_plan" {
		t.Errorf("the session's plan_cache_mode is %q after Lookup, want force_custom_plan", mode)
	}
}

// lookupStatements returns the text of every look-up statement.
func lookupStatements() []string {
	var out []string
	for _, q := range lookupSQL {
		out = append(out, q)
	}
	return out
}
