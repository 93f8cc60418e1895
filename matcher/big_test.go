//go:build linux

package matcher

// The million-customer look-up measurement of docs/identity.md. It is gated
// by an environment variable, so that `go test ./...` (and make test) never
// runs it:
//
//	GROUPMATCH_BENCH_1M=1 go test ./matcher/ -run '^$' -bench '^BenchmarkResolveChunk$' -benchtime 200x -timeout 20m
//
// The load measurement is directory's TestLoad1M. The benchmark uses a
// fresh database of the test server (schematest). Setting
// GROUPMATCH_BENCH_DATABASE_URL to a migrated database makes the benchmark
// keep its directory there and reuse it on the next run.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/directory"
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

func loadFile(tb testing.TB, l *directory.Loader, tenantID int64, path string) directory.LoadProgress {
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

// processCPU is the CPU time this process used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU is the CPU time used so far by the PostgreSQL backends serving
// db's database (the server must run on this machine; 0 otherwise).
func backendCPU(tb testing.TB, db *pgxpool.Pool) time.Duration {
	tb.Helper()
	rows, err := db.Query(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND backend_type = 'client backend'`)
	if err != nil {
		tb.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		tb.Fatal(err)
	}
	var total time.Duration
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis; utime and stime
		// are fields 14 and 15 of the whole line, in clock ticks (100 Hz).
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
		if len(f) < 13 {
			continue
		}
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		total += time.Duration(u+s) * 10 * time.Millisecond
	}
	return total
}

var bigDir struct {
	once   sync.Once
	db     *pgxpool.Pool
	tenant int64
	err    error
}

// bigDirectory returns a pool on a database whose tenant "bench" holds the
// first million customers of the Big directory, loading them the first
// time.
func bigDirectory(b *testing.B) (*pgxpool.Pool, int64) {
	bigDir.once.Do(func() {
		url := os.Getenv("GROUPMATCH_BENCH_DATABASE_URL")
		if url == "" {
			url = schematest.NewDatabase(b)
		}
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			bigDir.err = err
			return
		}
		cfg.MaxConns = 8
		db, err := pgxpool.NewWithConfig(context.Background(), cfg)
		if err != nil {
			bigDir.err = err
			return
		}
		tenant := ensureTenant(b, db, "bench")
		var n int
		if err := db.QueryRow(context.Background(), `SELECT count(*) FROM customers WHERE tenant_id = $1`, tenant).Scan(&n); err != nil {
			bigDir.err = err
			return
		}
		if n < bigCustomers {
			start := time.Now()
			loadFile(b, directory.NewLoader(db), tenant, writeBigFile(b, bigCustomers))
			b.Logf("loaded %d customers in %v", bigCustomers, time.Since(start).Round(time.Millisecond))
		}
		// The planner's statistics as autovacuum would leave them.
		if _, err := db.Exec(context.Background(), `VACUUM ANALYZE customers, customer_phones, customer_openids`); err != nil {
			bigDir.err = err
			return
		}
		bigDir.db, bigDir.tenant = db, tenant
	})
	if bigDir.err != nil {
		b.Fatalf("big directory: %v", bigDir.err)
	}
	return bigDir.db, bigDir.tenant
}

const benchChunk = 2000

// BenchmarkResolveChunk measures the matcher's work apart from Kafka on a
// directory of a million customers: Normalize, one batched Lookup and
// Resolve for chunks of benchChunk records, as Stage.handle does, for the
// mixed, exact-only and fuzzy-only record mixes of matchertest.BigBatches.
// workers=2 runs two such loops at once, as two matcher consumers on 2
// cores would.
func BenchmarkResolveChunk(b *testing.B) {
	if os.Getenv("GROUPMATCH_BENCH_1M") == "" {
		b.Skip("set GROUPMATCH_BENCH_1M=1 to load a million customers and measure")
	}
	db, tenant := bigDirectory(b)
	dir := NewPGStore(db)
	for _, mix := range []struct {
		name  string
		modes []matchertest.BatchMode
	}{{"mixed", matchertest.MixedModes}, {"exact", matchertest.ExactModes}, {"fuzzy", matchertest.FuzzyModes}} {
		rng := rand.New(rand.NewPCG(1, 2))
		recs := matchertest.BigBatches(rng, bigCustomers, benchChunks*benchChunk/pipeline.MaxRecords, pipeline.MaxRecords, tenant, mix.modes)
		for _, r := range recs {
			if r.Index == 0 {
				acceptBatches(b, db, tenant, r.BatchID)
			}
		}
		for _, workers := range []int{1, 2} {
			b.Run(fmt.Sprintf("mix=%s/workers=%d", mix.name, workers), func(b *testing.B) {
				benchmarkChunks(b, db, dir, recs, workers)
			})
		}
	}
}

const benchChunks = 50

// benchmarkChunks resolves b.N chunks of benchChunk records, cycling
// through recs, on workers goroutines, and reports the throughput and the
// CPU time per record of this process and of its PostgreSQL backends.
func benchmarkChunks(b *testing.B, db *pgxpool.Pool, dir *PGStore, recs []pipeline.RecordMessage, workers int) {
	const chunks = benchChunks
	direct := func(op func() error) error { return op() }
	// resolveOne resolves chunk c and says how many keys it looked up in
	// how many queries (one per kind present), and how many records matched.
	resolveOne := func(c int) (keys, queries, matched int, err error) {
		msgs := recs[(c%chunks)*benchChunk : (c%chunks+1)*benchChunk]
		items := make([]item, len(msgs))
		var kinds [numKinds]bool
		for i := range msgs {
			items[i] = item{msg: msgs[i], norm: Normalize(msgs[i].Params, msgs[i].Record)}
			for _, k := range items[i].norm.Lookups(msgs[i].Params) {
				keys++
				kinds[kindIndex(k)] = true
			}
		}
		for _, k := range kinds {
			if k {
				queries++
			}
		}
		if err := resolveChunk(context.Background(), dir, items, direct); err != nil {
			return 0, 0, 0, err
		}
		for i := range items {
			if items[i].out.Outcome == pipeline.OutcomeMatched {
				matched++
			}
		}
		return keys, queries, matched, nil
	}
	// Warm the pool's connections and statement caches.
	for w := range workers * 2 {
		if _, _, _, err := resolveOne(w); err != nil {
			b.Fatal(err)
		}
	}
	var keys, queries, matched int64
	var mu sync.Mutex
	goCPU, pgCPU := processCPU(), backendCPU(b, db)
	start := time.Now()
	b.ResetTimer()
	var next int64
	g := errgroup.Group{}
	for range workers {
		g.Go(func() error {
			for {
				mu.Lock()
				c := next
				next++
				mu.Unlock()
				if c >= int64(b.N) {
					return nil
				}
				k, q, m, err := resolveOne(int(c))
				if err != nil {
					return err
				}
				mu.Lock()
				keys += int64(k)
				queries += int64(q)
				matched += int64(m)
				mu.Unlock()
			}
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	elapsed := time.Since(start)
	goUsed, pgUsed := processCPU()-goCPU, backendCPU(b, db)-pgCPU
	records := float64(b.N * benchChunk)
	b.ReportMetric(records/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(goUsed.Microseconds())/records, "go-µs/record")
	b.ReportMetric(float64(pgUsed.Microseconds())/records, "pg-µs/record")
	b.ReportMetric(float64((goUsed+pgUsed).Microseconds())/records, "cpu-µs/record")
	b.ReportMetric(float64(keys)/float64(queries), "keys/query")
	b.ReportMetric(float64(keys)/records, "keys/record")
	b.ReportMetric(100*float64(matched)/records, "%matched")
	b.ReportMetric(0, "ns/op")
}
