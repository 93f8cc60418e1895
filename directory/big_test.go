//go:build linux

package directory

// The million-customer load measurement of docs/identity.md. It is gated by
// an environment variable, so that `go test ./...` (and make test) never
// runs it:
//
//	GROUPMATCH_LOAD_1M=1 go test ./directory/ -run '^TestLoad1M$' -count=1 -v -timeout 20m
//
// It uses a fresh database of the test server (schematest). The look-up
// benchmark on the same directory is matcher's BenchmarkResolveChunk.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

const bigCustomers = 1000000

// writeBigFile writes the first n customers of the Big directory to a file
// of the test's temporary directory.
func writeBigFile(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "directory.jsonl")
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if err := matchertest.WriteBig(f, 0, n); err != nil {
		tb.Fatal(err)
	}
	return path
}

func loadFile(tb testing.TB, l *Loader, tenantID int64, path string) LoadProgress {
	tb.Helper()
	f, err := os.Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	p, err := l.Load(context.Background(), tenantID, f)
	if err != nil {
		tb.Fatalf("load: %v", err)
	}
	if len(p.Bad) > 0 {
		tb.Fatalf("load: bad lines %v", p.Bad)
	}
	return p
}

// TestLoad1M measures `directory load` of a million generated customers
// into an empty tenant, then loads the same file again and checks that
// nothing changed.
func TestLoad1M(t *testing.T) {
	if os.Getenv("GROUPMATCH_LOAD_1M") == "" {
		t.Skip("set GROUPMATCH_LOAD_1M=1 to load a million customers (about a minute)")
	}
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "big")
	path := writeBigFile(t, bigCustomers)
	st, _ := os.Stat(path)
	t.Logf("file: %d customers, %d MB", bigCustomers, st.Size()>>20)

	l := NewLoader(db)
	goCPU := processCPU()
	start := time.Now()
	p := loadFile(t, l, tenant, path)
	first := time.Since(start)
	goFirst := processCPU() - goCPU
	d1 := directoryDigest(t, db, tenant)
	rows := d1["customers"].Rows + d1["customer_phones"].Rows + d1["customer_openids"].Rows
	t.Logf("first load: %d customers (%d rows: %+v) in %.1f s: %.0f customers/s, %.0f rows/s; loader CPU %.1f s",
		p.Loaded, rows, d1, first.Seconds(), float64(p.Loaded)/first.Seconds(), float64(rows)/first.Seconds(), goFirst.Seconds())
	if p.Loaded != bigCustomers || d1["customers"].Rows != bigCustomers {
		t.Errorf("loaded %d customers, table has %d; want %d", p.Loaded, d1["customers"].Rows, bigCustomers)
	}
	if first > time.Minute {
		t.Errorf("first load took %v, want under a minute", first)
	}

	// The look-ups' plans on a million customers, right after the load.
	if !p.Analyzed {
		t.Errorf("the load of a million new customers did not refresh the statistics")
	}
	lookupPlans(t, db, tenant, "after the load")

	start = time.Now()
	loadFile(t, l, tenant, path)
	again := time.Since(start)
	d2 := directoryDigest(t, db, tenant)
	t.Logf("same file again: %.1f s", again.Seconds())
	for table, d := range d1 {
		if d2[table] != d {
			t.Errorf("%s changed by the re-run: %+v, was %+v", table, d2[table], d)
		}
	}
}

// lookupPlans checks and logs the custom and generic plans of the
// matcher's look-ups for chunk-sized arrays of values (half of them held by
// a customer) on the Big directory.
func lookupPlans(t *testing.T, db *pgxpool.Pool, tenant int64, stats string) {
	values := map[pipeline.IdentityKind][]string{}
	for i := range 1000 {
		c := i * 997 % (2 * bigCustomers)
		values[pipeline.KindPhone] = append(values[pipeline.KindPhone], matchertest.BigPhone(c, 0))
		values[pipeline.KindOpenID] = append(values[pipeline.KindOpenID], matchertest.BigOpenID(c, 0))
		values[pipeline.KindUnionID] = append(values[pipeline.KindUnionID], matchertest.BigUnionID(c))
		values[pipeline.KindThirdID] = append(values[pipeline.KindThirdID], fmt.Sprintf("crm-%d", c))
	}
	index := map[pipeline.IdentityKind]string{
		pipeline.KindPhone: "customer_phones_pkey", pipeline.KindOpenID: "customer_openids_pkey",
		pipeline.KindUnionID: "customers_unionid", pipeline.KindThirdID: "customers_third_id",
	}
	for _, k := range pipeline.IdentityKinds {
		q := planQuery{name: "lookup " + string(k), sql: lookupSQL[k], index: index[k], args: []any{tenant, values[k]}}
		for _, generic := range []bool{false, true} {
			checkPlan(t, db, q, generic)
			plan := explainPlan(t, db, q, generic, "(ANALYZE, BUFFERS)")
			t.Logf("%s, %s, generic=%v, 1000 values:\n%s", q.name, stats, generic, strings.Join(plan, "\n"))
		}
	}
}

// processCPU is the CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
