package sink

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"

	"github.com/groupmatch/groupmatch/bench"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/supervise"
)

// BenchmarkApply measures PGStore.Apply on chunks shaped like the
// pipeline's: 1,000 to 10,000 resolved records drawn from 16 batches in flight (a
// sink's chunk takes records of every partition), 92 % matched with two of
// 20 group names among a million customers, a tenth of the batches deletes.
// The batches belong to 1 or 8 tenants in turn: Apply writes each tenant's
// records in a transaction of its own, so tenants=8 measures what chunks
// that mix tenants cost (the resolved topic is keyed by tenant and
// customer, so a busy sink's chunks mix every tenant that is importing).
// Run it against a quiet server, e.g.
//
//	GROUPMATCH_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5499/postgres go test ./sink -run '^$' -bench Apply -benchtime 200x
func BenchmarkApply(b *testing.B) {
	for _, tenants := range []int{1, 8} {
		for _, chunk := range []int{1000, 2000, 5000, 10000} {
			b.Run("tenants="+strconv.Itoa(tenants)+"/chunk="+strconv.Itoa(chunk), func(b *testing.B) { benchmarkApply(b, chunk, tenants) })
		}
	}
}

func benchmarkApply(b *testing.B, chunk, tenants int) {
	db, _ := schematest.NewPool(b)
	s := NewPGStore(db)
	ctx := context.Background()
	const (
		batchSize = 500
		window    = 16
	)
	rng := rand.New(rand.NewPCG(1, 2))
	groups := make([]string, 20)
	for i := range groups {
		groups[i] = "bench-" + strconv.Itoa(i)
	}
	var pending []pipeline.ResolvedMessage
	next := int64(1)
	refill := func() {
		var recs []pipeline.ResolvedMessage
		for range window {
			id := next
			next++
			tenant := tenant + id%int64(tenants)
			if _, err := db.Exec(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
				VALUES ($1, $2, 'app', 'add', '{}', 'PROCESSING', $3)`, id, tenant, batchSize); err != nil {
				b.Fatal(err)
			}
			recs = appendBenchBatch(recs, rng, tenant, id, batchSize, groups)
		}
		rng.Shuffle(len(recs), func(i, j int) { recs[i], recs[j] = recs[j], recs[i] })
		pending = append(pending, recs...)
	}
	var dbName string
	if err := db.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		b.Fatal(err)
	}
	pg0, _, _ := bench.PostgresCPU(dbName)
	self0, _ := supervise.SampleProc(os.Getpid())
	b.ResetTimer()
	for range b.N {
		if len(pending) < chunk {
			b.StopTimer()
			for len(pending) < chunk {
				refill()
			}
			b.StartTimer()
		}
		c := append([]pipeline.ResolvedMessage(nil), pending[:chunk]...)
		pending = pending[chunk:]
		res, err := s.Apply(ctx, c)
		if err != nil {
			b.Fatal(err)
		}
		if res.Applied != chunk {
			b.Fatalf("applied %d of %d", res.Applied, chunk)
		}
	}
	pg1, _, pgOK := bench.PostgresCPU(dbName)
	self1, _ := supervise.SampleProc(os.Getpid())
	n := float64(b.N * chunk)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/n, "ns/record")
	// CPU per record is steadier than time on a shared machine. The
	// refills' inserts count too, a few per thousand records.
	if pgOK {
		b.ReportMetric(float64((pg1-pg0).Microseconds())/n, "pg-µs/record")
	}
	b.ReportMetric(float64((self1.CPU-self0.CPU).Microseconds())/n, "go-µs/record")
	b.ReportMetric(float64(b.N*chunk)/b.Elapsed().Seconds(), "records/s")
}

// appendBenchBatch appends to recs the resolved records of one batch shaped
// like groupmatch bench's workload: one batch in ten deletes; 92 % of the
// records matched (a random customer of a million, two distinct groups of
// groups), the rest NOT_FOUND with a masked ref.
func appendBenchBatch(recs []pipeline.ResolvedMessage, rng *rand.Rand, tenant, id int64, batchSize int, groups []string) []pipeline.ResolvedMessage {
	opt := pipeline.OptAdd
	if rng.IntN(10) == 0 {
		opt = pipeline.OptDelete
	}
	for j := range batchSize {
		r := pipeline.ResolvedMessage{V: 1, TenantID: tenant, BatchID: id, Index: j, OptType: opt}
		if rng.IntN(100) < 92 {
			g1 := rng.IntN(len(groups))
			g2 := (g1 + 1 + rng.IntN(len(groups)-1)) % len(groups)
			r.Outcome, r.MatchedBy, r.CustomerID = pipeline.OutcomeMatched, pipeline.KindPhone, 1+rng.Int64N(1000000)
			r.Groups = []string{groups[g1], groups[g2]}
		} else {
			r.Outcome, r.Reason = pipeline.OutcomeNotFound, pipeline.ReasonNotFound
			r.Ref = &pipeline.RecordRef{ThirdID: "crm-" + strconv.Itoa(j), Phone: "138****0000"}
		}
		recs = append(recs, r)
	}
	return recs
}
