package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/bench"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

// benchFlags are the settings of `groupmatch bench`.
type benchFlags struct {
	o               options
	w               bench.Workload
	mix             string
	via             string
	target          string
	single          bool
	clients         int
	rate            float64
	pipeline        bool
	backlog         bool
	stage           string
	instances       int
	baseline        bool
	baselineWorkers int
	baselineChunk   int
	jsonPath        string
	pprof           bool
	profileDir      string
	profileFor      time.Duration
	database        string
	workDir         string
	load            bool
	tenant          string
	timeout         time.Duration
	stall           time.Duration

	neighbour          bool
	neighbourTenant    string
	neighbourInterval  time.Duration
	neighbourBatch     int
	neighbourCustomers int
	tenantRate         float64

	rematch int // pending bindings of the re-matcher's measurement; 0: off
}

const benchSynopsis = `bench [--customers N] [--records N] [--via http|kafka] [--target URL | --single] [--rate R] [--baseline] [--json FILE]

Generates a directory and a workload of batchAdd requests, drives them through
a system and reports ingest and end-to-end throughput, batch latency and the
CPU and memory of every process; with --baseline it also applies the same
workload with plain PostgreSQL (COPY + set-based SQL) and reports
pipeline/baseline. Without --target it starts the system itself, each stage as
a separate process of this binary (broker, ingest, matcher, sink) or, with
--single, all in one dev process, on a fresh database --bench-database on the
server --database-url names (dropped and created again every run).
See docs/performance.md.`

func (f *benchFlags) register(fs *flag.FlagSet) {
	f.o.addKafka(fs)
	f.o.addGroups(fs)
	f.o.addDatabase(fs)
	f.o.addPartitions(fs)
	fs.IntVar(&f.o.matcherChunk, "matcher-chunk", matcher.DefaultMaxChunk, "most records the matcher resolves together, for a self-started system (MATCHER_CHUNK)")
	fs.IntVar(&f.o.matcherConsumers, "matcher-consumers", matcher.DefaultConsumers, "consumer-group members per matcher process, for a self-started system (MATCHER_CONSUMERS)")
	fs.IntVar(&f.o.sinkChunk, "sink-chunk", sink.DefaultMaxChunk, "most records the sink applies in one transaction, for a self-started system (SINK_CHUNK)")
	fs.IntVar(&f.w.Customers, "customers", 1000000, "customers in the generated directory (BENCH_CUSTOMERS)")
	fs.IntVar(&f.w.Records, "records", 2000000, "records to import in all (BENCH_RECORDS)")
	fs.IntVar(&f.w.BatchSize, "batch-size", 500, "records per batchAdd request, at most 500 (BENCH_BATCH_SIZE)")
	fs.StringVar(&f.mix, "mix", bench.DefaultMix.String(), "weights of the batch kinds: exact by phone, id, openid, unionid; fuzzy (identifyWay 1, every identifier) and fuzzy2 (identifyWay 2, thirdId and phone) (BENCH_MIX)")
	fs.Float64Var(&f.w.MatchRate, "match-rate", 0.92, "share of records naming a customer of the directory; the rest name nobody (BENCH_MATCH_RATE)")
	fs.Float64Var(&f.w.DeleteShare, "delete-share", 0.1, "share of batches with optType delete (BENCH_DELETE_SHARE)")
	fs.IntVar(&f.w.Groups, "groups", 2, "group names per record (BENCH_GROUPS)")
	fs.IntVar(&f.w.GroupNames, "group-names", 20, "distinct group names in the workload (BENCH_GROUP_NAMES)")
	fs.Uint64Var(&f.w.Seed, "seed", uint64(1), "seed of the workload; the same seed makes the same requests (BENCH_SEED)")
	fs.StringVar(&f.via, "via", "http", "http (the batchAdd API) or kafka (the requests topic) (BENCH_VIA)")
	fs.StringVar(&f.target, "target", "", "base URL of a running system's ingest, e.g. http://127.0.0.1:8080; --database-url and --kafka-brokers then name its database and Kafka (BENCH_TARGET)")
	fs.BoolVar(&f.single, "single", false, "start the system as one dev process instead of one process per stage (BENCH_SINGLE)")
	fs.IntVar(&f.clients, "clients", 8, "concurrent HTTP clients, or Kafka publishers (BENCH_CLIENTS)")
	fs.Float64Var(&f.rate, "rate", 0, "offered load in records per second; 0 offers as fast as the system accepts (BENCH_RATE)")
	fs.BoolVar(&f.backlog, "backlog", false, "start matcher and sink only once ingest has accepted every record: measures ingest alone, then the drain of the whole backlog (separate processes only) (BENCH_BACKLOG)")
	fs.StringVar(&f.stage, "stage", "", "measure this stage alone: \"matcher\" starts it only once ingest has put every record into Kafka, and ends when it has resolved them all; the sink never runs (BENCH_STAGE)")
	fs.IntVar(&f.instances, "instances", 1, "processes of the stage --stage measures (BENCH_INSTANCES)")
	fs.BoolVar(&f.pipeline, "pipeline", true, "drive the workload through the pipeline; false with --baseline measures the baseline alone (BENCH_PIPELINE)")
	fs.BoolVar(&f.baseline, "baseline", false, "also apply the workload with plain PostgreSQL, in schema bench_baseline, and report pipeline/baseline (BENCH_BASELINE)")
	fs.IntVar(&f.baselineWorkers, "baseline-workers", 2, "transactions the baseline runs at once (BENCH_BASELINE_WORKERS)")
	fs.IntVar(&f.baselineChunk, "baseline-chunk", 20000, "records per baseline transaction, rounded to whole requests (BENCH_BASELINE_CHUNK)")
	fs.StringVar(&f.jsonPath, "json", "", "write the full report as JSON to this file (BENCH_JSON)")
	fs.BoolVar(&f.pprof, "pprof", false, "start the stages with --pprof (PPROF)")
	fs.StringVar(&f.profileDir, "profile", "", "write a CPU profile of every stage process taken mid-run, its heap right after and at the end, to this folder; implies --pprof (BENCH_PROFILE)")
	fs.DurationVar(&f.profileFor, "profile-duration", 20*time.Second, "length of the CPU profiles (BENCH_PROFILE_DURATION)")
	fs.StringVar(&f.database, "bench-database", "groupmatch_bench", "database a self-started system uses, on the server of --database-url; dropped and created again every run (BENCH_DATABASE)")
	fs.StringVar(&f.workDir, "work", "", "folder for the processes' logs and the broker's data; default a temporary folder, removed after a successful run (BENCH_WORK)")
	fs.BoolVar(&f.load, "load", true, "load the directory; with --target, false reuses the tenant's directory of an earlier run (BENCH_LOAD)")
	fs.StringVar(&f.tenant, "tenant", "bench", "tenant the directory and the batches belong to (BENCH_TENANT)")
	fs.DurationVar(&f.timeout, "timeout", time.Hour, "give up when the run takes longer (BENCH_TIMEOUT)")
	fs.IntVar(&f.rematch, "rematch", 0, "measure the re-matcher instead: this many pending bindings, then a directory load of --customers with publishing, drained by a re-matcher; see docs/performance.md (BENCH_REMATCH)")
	fs.DurationVar(&f.stall, "stall", 2*time.Minute, "give up when no record is accepted or applied for this long (BENCH_STALL)")
	fs.BoolVar(&f.neighbour, "neighbour", false, "noisy neighbour: while the workload's backlog drains, a second tenant with its own application and directory sends a small batch every --neighbour-interval; reports that tenant's batch latency, accept → final (BENCH_NEIGHBOUR)")
	fs.StringVar(&f.neighbourTenant, "neighbour-tenant", "bench-neighbour", "tenant of the small batches (BENCH_NEIGHBOUR_TENANT)")
	fs.DurationVar(&f.neighbourInterval, "neighbour-interval", time.Second, "time between two of the neighbour's batches (BENCH_NEIGHBOUR_INTERVAL)")
	fs.IntVar(&f.neighbourBatch, "neighbour-batch", 10, "records per neighbour batch (BENCH_NEIGHBOUR_BATCH)")
	fs.IntVar(&f.neighbourCustomers, "neighbour-customers", 1000, "customers in the neighbour's directory (BENCH_NEIGHBOUR_CUSTOMERS)")
	fs.Float64Var(&f.tenantRate, "tenant-rate", 0, "per-tenant records quota of a self-started ingest, records/s, passed to the processes as TENANT_RATE; 0 is off (TENANT_RATE)")
}

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f benchFlags
	fs := newFlagSet(benchSynopsis, stderr)
	f.register(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if f.rematch > 0 {
		ctx, cancel := context.WithTimeout(ctx, f.timeout)
		defer cancel()
		return runRematchBench(ctx, &f, stdout, stderr)
	}
	mix, err := bench.ParseMix(f.mix)
	if err != nil {
		return err
	}
	f.w.Mix = mix
	if f.target != "" {
		// A running system keeps the groups of earlier runs: name this
		// run's groups apart.
		f.w.GroupPrefix = "bench-" + strconv.FormatInt(time.Now().Unix()%1e6, 36) + "-"
	}
	f.w = f.w.WithDefaults()
	if err := f.w.Validate(); err != nil {
		return err
	}
	switch {
	case f.via != "http" && f.via != "kafka":
		return errors.New("bench: --via must be http or kafka")
	case !f.pipeline && !f.baseline:
		return errors.New("bench: nothing to do: --pipeline=false without --baseline")
	case f.target != "" && f.single:
		return errors.New("bench: --target and --single exclude each other")
	case f.backlog && (f.target != "" || f.single):
		return errors.New("bench: --backlog needs the stages as separate processes (no --target, no --single)")
	case f.stage != "" && f.stage != stageMatcher:
		return errors.New("bench: --stage must be matcher")
	case f.stage != "" && (f.target != "" || f.single || f.baseline):
		return errors.New("bench: --stage needs the stages as separate processes and excludes --baseline (no --target, no --single)")
	case f.instances < 1:
		return errors.New("bench: --instances must be at least 1")
	case f.neighbour && (f.backlog || f.stage != "" || !f.pipeline):
		return errors.New("bench: --neighbour needs the pipeline draining while it sends (no --backlog, no --stage, no --pipeline=false)")
	case f.neighbour && (f.neighbourInterval <= 0 || f.neighbourBatch < 1 || f.neighbourBatch > 500):
		return errors.New("bench: --neighbour-interval must be positive and --neighbour-batch 1 to 500")
	case f.neighbour && f.neighbourTenant == f.tenant:
		return errors.New("bench: --neighbour-tenant must differ from --tenant")
	case f.tenantRate < 0:
		return errors.New("bench: --tenant-rate must be at least 0")
	case f.tenantRate > 0 && f.target != "":
		return errors.New("bench: --tenant-rate configures a self-started ingest; a --target has its own")
	}
	if f.neighbour {
		if err := neighbourWorkload(&f).Validate(); err != nil {
			return fmt.Errorf("%w (of the neighbour)", err)
		}
	}
	if f.stage != "" {
		f.backlog = true // the stage starts once its whole input waits in Kafka
	}
	if f.profileDir != "" {
		f.pprof = true
		if err := os.MkdirAll(f.profileDir, 0o755); err != nil {
			return fmt.Errorf("bench: --profile: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	return runBench(ctx, &f, stdout, stderr)
}

func runBench(ctx context.Context, f *benchFlags, stdout, stderr io.Writer) (err error) {
	live := bench.NewLive(stderr)
	report := &bench.Report{Version: 1, Date: time.Now().UTC().Truncate(time.Second)}
	report.Setup = bench.Setup{Via: f.via, Workload: f.w, Clients: f.clients, Rate: f.rate}
	load := bench.LoadAvg()

	dbURL := f.o.databaseURL
	var sys *benchSystem
	if f.target == "" {
		dbURL, err = freshDatabase(ctx, f.o.databaseURL, f.database)
		if err != nil {
			return err
		}
		dir := f.workDir
		if dir == "" {
			dir, err = os.MkdirTemp("", "groupmatch-bench-")
		} else {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return fmt.Errorf("bench: --work: %w", err)
		}
		defer func() {
			if err != nil || f.workDir != "" {
				fmt.Fprintf(stderr, "bench: logs of the processes are in %s\n", dir)
				return
			}
			os.RemoveAll(dir)
		}()
		report.Setup.Mode = "processes"
		if f.single {
			report.Setup.Mode = "single"
		}
		report.Setup.Partitions, report.Setup.MatcherChunk, report.Setup.SinkChunk, report.Setup.DBMaxConns =
			f.o.partitions, f.o.matcherChunk, f.o.sinkChunk, f.o.dbMaxConns
		report.Setup.MatcherConsumers = f.o.matcherConsumers
		report.Setup.TenantRate = f.tenantRate
		fmt.Fprintf(stderr, "bench: starting the system (%s) on database %s\n", report.Setup.Mode, f.database)
		sys, err = startBenchSystem(ctx, f, dbURL, dir)
		if err != nil {
			return err
		}
		defer sys.stop(stderr)
	} else {
		report.Setup.Mode = "target"
		sec, err := f.o.security()
		if err != nil {
			return err
		}
		sys = &benchSystem{base: strings.TrimRight(f.target, "/"), brokers: f.o.brokerList(), sec: sec}
	}

	poolCfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return fmt.Errorf("bench: --database-url: %w", err)
	}
	poolCfg.MaxConns = int32(max(4, f.baselineWorkers+2))
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "groupmatch-bench"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("bench: postgres: %w", err)
	}
	defer pool.Close()
	report.Machine = bench.DescribeMachine(ctx, pool)
	report.Machine.LoadAvgBefore = load

	store := apps.NewStore(pool)
	creds, err := store.Create(ctx, f.tenant, "bench", []string{apps.ScopeGroup})
	if err != nil {
		return err
	}
	tenantID, err := store.TenantID(ctx, f.tenant)
	if err != nil {
		return err
	}
	if f.load {
		secs, err := loadBenchDirectory(ctx, pool, tenantID, f.w.Customers, live)
		if err != nil {
			return err
		}
		report.DirectorySeconds = secs
	}

	var neighbour *benchNeighbour
	if f.neighbour {
		if neighbour, err = setupNeighbour(ctx, f, pool, store, live); err != nil {
			return err
		}
	}

	var batchIDs []int64
	if f.stage != "" {
		tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
		if err != nil {
			return err
		}
		if report.Stage, err = benchStage(ctx, f, sys, pool, tenantID, tok.Access, live, stderr); err != nil {
			return err
		}
	} else if f.pipeline {
		tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
		if err != nil {
			return err
		}
		res, ids, err := benchPipeline(ctx, f, sys, pool, tenantID, tok.Access, neighbour, live, stderr)
		if err != nil {
			return err
		}
		report.Pipeline, batchIDs = res, ids
	}
	if f.baseline {
		// The system is idle now; stop it so the baseline has the machine.
		sys.stop(stderr)
		res, err := benchBaseline(ctx, f, pool, tenantID, dbName(dbURL), batchIDs, live)
		if err != nil {
			return err
		}
		report.Baseline = res
		if report.Pipeline != nil {
			pm, err := bench.Memberships(ctx, pool, "public", tenantID, f.w.GroupPrefix)
			if err != nil {
				return err
			}
			bm, err := bench.Memberships(ctx, pool, "bench_baseline", tenantID, f.w.GroupPrefix)
			if err != nil {
				return err
			}
			report.Agreement = bench.Compare(report.Pipeline.Outcomes, res.Outcomes, pm, bm)
		}
	}
	report.Finish()
	if f.jsonPath != "" {
		if err := report.WriteJSON(f.jsonPath); err != nil {
			return fmt.Errorf("bench: --json: %w", err)
		}
	}
	if err := report.WriteText(stdout); err != nil {
		return err
	}
	if a := report.Agreement; a != nil && (!a.Outcomes || !a.Memberships) {
		return errors.New("bench: the pipeline and the baseline disagree")
	}
	return nil
}

// freshDatabase drops and creates the database name on the server that
// serverURL names, and returns its URL.
func freshDatabase(ctx context.Context, serverURL, name string) (string, error) {
	u, err := url.Parse(serverURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("bench: --database-url must be a postgres:// URL when bench starts the system")
	}
	admin := *u
	admin.Path = "/postgres"
	conn, err := pgx.Connect(ctx, admin.String())
	if err != nil {
		return "", fmt.Errorf("bench: postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	id := pgx.Identifier{name}.Sanitize()
	for _, q := range []string{"DROP DATABASE IF EXISTS " + id + " WITH (FORCE)", "CREATE DATABASE " + id} {
		if _, err := conn.Exec(ctx, q); err != nil {
			return "", fmt.Errorf("bench: fresh database: %w", err)
		}
	}
	u.Path = "/" + name
	return u.String(), nil
}

func dbName(dbURL string) string {
	if cfg, err := pgx.ParseConfig(dbURL); err == nil {
		return cfg.Database
	}
	return ""
}

// loadBenchDirectory loads the first n customers of the Big directory into
// the tenant, showing progress, and returns the seconds it took.
func loadBenchDirectory(ctx context.Context, pool *pgxpool.Pool, tenantID int64, n int, live *bench.Live) (float64, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(matchertest.WriteBig(pw, 0, n)) }()
	defer pr.Close()
	l := directory.NewLoader(pool)
	l.Progress = func(p directory.LoadProgress) {
		live.Update(fmt.Sprintf("directory: %s of %s customers loaded, %s/s",
			bench.Thousands(float64(p.Loaded)), bench.Thousands(float64(n)), bench.Thousands(float64(p.Loaded)/max(p.Elapsed.Seconds(), 1e-3))))
	}
	start := time.Now()
	p, err := l.Load(ctx, tenantID, pr)
	live.Done()
	if err != nil {
		return 0, fmt.Errorf("bench: load directory: %w", err)
	}
	if len(p.Bad) > 0 {
		return 0, fmt.Errorf("bench: load directory: %d bad lines", len(p.Bad))
	}
	// A directory in use has been vacuumed and analysed; a freshly loaded
	// one has neither until autovacuum (which may be off) gets to it, and
	// the planner may then scan whole tables for a chunk's look-ups.
	if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) customers, customer_phones, customer_openids"); err != nil {
		return 0, fmt.Errorf("bench: vacuum directory: %w", err)
	}
	return time.Since(start).Seconds(), nil
}

// checkpoint asks PostgreSQL to write its dirty buffers now, so that each
// measured phase starts from the same state; it needs a superuser (or
// pg_checkpoint) and is skipped otherwise.
func checkpoint(ctx context.Context, pool *pgxpool.Pool) {
	_, _ = pool.Exec(ctx, "CHECKPOINT")
}

// benchPipeline drives the workload through the system and measures it;
// with a neighbour, that tenant sends its small batches from the start of
// the drive until the workload's last batch is final. It returns the batch
// id of each batch index.
func benchPipeline(ctx context.Context, f *benchFlags, sys *benchSystem, pool *pgxpool.Pool, tenantID int64, token string,
	neighbour *benchNeighbour, live *bench.Live, stderr io.Writer) (*bench.PipelineResult, []int64, error) {
	obs, err := bench.NewObserver(ctx, pool, tenantID)
	if err != nil {
		return nil, nil, err
	}
	checkpoint(ctx, pool)
	nb := f.w.Batches()
	db := dbName(pool.Config().ConnString())
	before := sys.sample()
	pgBefore, _, pgOK := bench.PostgresCPU(db)
	self, _ := bench.SampleProc(os.Getpid())

	var sent atomic.Int64
	cfg := bench.DriveConfig{Clients: f.clients, Rate: f.rate, Token: token, Sent: &sent}
	keyPrefix := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	type driven struct {
		res bench.DriveResult
		err error
	}
	done := make(chan driven, 1) // the driver's goroutine never blocks on it
	dctx, stopDrive := context.WithCancel(ctx)
	var profiles sync.WaitGroup
	defer func() {
		stopDrive()
		profiles.Wait()
	}()
	go func() {
		var d driven
		if f.via == "kafka" {
			cfg.KeyPrefix, cfg.Security = keyPrefix, sys.sec
			d.res, d.err = bench.DriveKafka(dctx, sys.brokers, f.o.topics().Requests, f.w, cfg)
		} else {
			d.res, d.err = bench.DriveHTTP(dctx, sys.base, f.w, cfg)
		}
		done <- d
	}()
	if f.profileDir != "" {
		profiles.Go(func() { sys.profile(dctx, f.profileDir, f.profileFor, stderr) })
	}
	if neighbour != nil {
		if err := neighbour.start(dctx, f, pool, sys.base); err != nil {
			return nil, nil, err
		}
	}

	start := time.Now()
	var drive *driven
	var acceptedAll, drainStart time.Time
	var last bench.Progress
	lastChange, lastPrint, lastPoll := start, start, time.Time{}
	var prevApplied int64
	prevAt := start
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			live.Done()
			return nil, nil, fmt.Errorf("bench: %w", ctx.Err())
		case d := <-done:
			if d.err != nil {
				live.Done()
				return nil, nil, d.err
			}
			drive = &d
			if f.backlog {
				live.Update("pipeline: every record accepted; starting matcher and sink")
				if err := sys.startStages(ctx, stageMatcher, stageSink); err != nil {
					live.Done()
					return nil, nil, err
				}
				drainStart, lastChange = time.Now(), time.Now()
			}
			continue
		case <-tick.C:
		}
		// Reading progress costs the database a scan of the run's batches:
		// once a second, but four times while the moment every batch is
		// accepted is still to be caught (Kafka: it is ingest's end).
		if time.Since(lastPoll) < time.Second && (f.via != "kafka" || !acceptedAll.IsZero()) {
			continue
		}
		lastPoll = time.Now()
		p, err := obs.Progress(ctx)
		if err != nil {
			live.Done()
			return nil, nil, err
		}
		now := time.Now()
		if p.Accepted >= nb && acceptedAll.IsZero() {
			acceptedAll = now
		}
		if p != last {
			last, lastChange = p, now
		} else if now.Sub(lastChange) > f.stall {
			live.Done()
			return nil, nil, fmt.Errorf("bench: no progress for %s (%d of %d batches accepted, %d finished)", f.stall, p.Accepted, nb, p.Finished)
		}
		if now.Sub(lastPrint) >= time.Second || (drive != nil && p.Finished >= nb) {
			el := now.Sub(start).Seconds()
			live.Update(fmt.Sprintf("pipeline %5.0fs  sent %s/%s  accepted %s (%s/s)  applied %s (now %s/s, avg %s/s)  batches final %d/%d",
				el, bench.Thousands(float64(sent.Load())), bench.Thousands(float64(f.w.Records)),
				bench.Thousands(float64(p.Records)), bench.Thousands(float64(p.Records)/el),
				bench.Thousands(float64(p.Processed)), bench.Thousands(float64(p.Processed-prevApplied)/now.Sub(prevAt).Seconds()),
				bench.Thousands(float64(p.Processed)/el), p.Finished, nb) + neighbourProgress(neighbour))
			lastPrint, prevApplied, prevAt = now, p.Processed, now
		}
		if drive != nil && p.Finished >= nb {
			break
		}
	}
	live.Done()
	if neighbour != nil {
		neighbour.drive.Stop() // the backlog has drained: no more batches; finish reads the rest
	}
	after := sys.sample()
	pgAfter, backends, _ := bench.PostgresCPU(db)
	selfAfter, _ := bench.SampleProc(os.Getpid())
	profiles.Wait()
	if f.profileDir != "" {
		sys.heapProfiles(ctx, f.profileDir, stderr)
	}

	r, err := obs.Result(ctx)
	if err != nil {
		return nil, nil, err
	}
	res := &bench.PipelineResult{Records: f.w.Records, Batches: r.Batches, BatchLatency: r.Latency, Outcomes: r.Outcomes, Retried: drive.res.Retried}
	res.Chunks = sys.chunks(ctx)
	ingestEnd := drive.res.End
	if f.via == "kafka" {
		ingestEnd = acceptedAll
	} else {
		rl := drive.res.RequestLatency
		res.RequestLatency = &rl
	}
	res.IngestSeconds = ingestEnd.Sub(drive.res.Start).Seconds()
	res.IngestRecordsPerSec = float64(f.w.Records) / res.IngestSeconds
	res.EndToEndSeconds = r.LastFinished.Sub(r.FirstAccepted).Seconds()
	res.EndToEndRecordsPerSec = float64(f.w.Records) / res.EndToEndSeconds
	if !drainStart.IsZero() {
		res.DrainSeconds = r.LastFinished.Sub(drainStart).Seconds()
		res.DrainRecordsPerSec = float64(f.w.Records) / res.DrainSeconds
	}
	res.Processes = sys.costs(before, after, pgUse{pgBefore, pgAfter, pgOK, backends, db}, f.w.Records)
	c := bench.NewProcessCost("bench", os.Getpid(), self, selfAfter, f.w.Records)
	c.Note, c.PeakRSSMB = "the load generator", 0
	res.Processes = append(res.Processes, c)
	if neighbour != nil {
		if res.Neighbour, err = neighbour.finish(ctx, f, live, res.EndToEndRecordsPerSec); err != nil {
			return nil, nil, err
		}
	}
	ids := drive.res.BatchIDs
	if f.via == "kafka" {
		if ids, err = obs.BatchIDs(ctx, keyPrefix, nb); err != nil {
			return nil, nil, err
		}
	}
	return res, ids, nil
}

// benchBaseline applies the workload with plain PostgreSQL.
func benchBaseline(ctx context.Context, f *benchFlags, pool *pgxpool.Pool, tenantID int64, db string, batchIDs []int64, live *bench.Live) (*bench.BaselineResult, error) {
	if err := bench.PrepareBaseline(ctx, pool, "bench_baseline"); err != nil {
		return nil, err
	}
	checkpoint(ctx, pool)
	start := time.Now()
	res, err := bench.RunBaseline(ctx, pool, f.w, bench.BaselineConfig{
		Schema: "bench_baseline", Workers: f.baselineWorkers, ChunkRecords: f.baselineChunk, TenantID: tenantID, BatchIDs: batchIDs,
		Progress: func(n int) {
			el := time.Since(start).Seconds()
			live.Update(fmt.Sprintf("baseline %5.0fs  applied %s/%s (%s/s)", el,
				bench.Thousands(float64(n)), bench.Thousands(float64(f.w.Records)), bench.Thousands(float64(n)/el)))
		},
	})
	live.Done()
	if err != nil {
		return nil, err
	}
	return &res, nil
}

// benchSystem is the system under test: processes bench started, or a
// running one (--target), which has none.
type benchSystem struct {
	base    string           // ingest's base URL
	brokers []string         // Kafka
	sec     *stream.Security // nil for the broker bench starts itself
	procs   []*benchProc
	once    sync.Once

	// What starting a stage process takes (self-started systems).
	exe, dir  string
	stageArgs []string
	env       []string // added to the stages' environment
}

// startBenchSystem starts the broker and the stages as separate processes
// of this binary, or one dev process (--single), on dbURL.
func startBenchSystem(ctx context.Context, f *benchFlags, dbURL, dir string) (*benchSystem, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	sys := &benchSystem{}
	// Settings of one stage go in the environment: each stage process
	// reads those of its own flags and has no flag for the others'.
	stageEnvs := append([]string{
		"RATE_LIMIT=1e9", "RATE_BURST=1000000000",
		"MATCHER_CHUNK=" + strconv.Itoa(f.o.matcherChunk), "MATCHER_CONSUMERS=" + strconv.Itoa(f.o.matcherConsumers),
		"SINK_CHUNK=" + strconv.Itoa(f.o.sinkChunk),
	}, stageEnv(f)...)
	stageArgs := []string{
		"--admin-addr", "127.0.0.1:0",
		"--db-max-conns", strconv.Itoa(f.o.dbMaxConns), "--log-level", "info", "--log-format", "json",
	}
	if f.pprof {
		stageArgs = append(stageArgs, "--pprof")
	}
	fail := func(err error) (*benchSystem, error) {
		sys.stop(io.Discard)
		return nil, err
	}
	if f.single {
		p, err := startBenchProc(exe, dir, "dev", append(append([]string{"DATABASE_URL=" + dbURL}, plaintextKafkaEnv()...), stageEnvs...),
			append([]string{"dev", "--kafka-addr", "127.0.0.1:0", "--data", filepath.Join(dir, "dev"),
				"--partitions", strconv.Itoa(f.o.partitions), "--http-addr", "127.0.0.1:0"}, stageArgs...)...)
		if err != nil {
			return fail(err)
		}
		sys.procs = append(sys.procs, p)
		m, err := p.await(ctx, regexp.MustCompile(`HTTP API:\s+(\S+)`), time.Minute)
		if err != nil {
			return fail(err)
		}
		sys.base = m
		if p.admin, err = p.await(ctx, regexp.MustCompile(`admin:\s+(\S+)/metrics`), 10*time.Second); err != nil {
			return fail(err)
		}
		m, err = p.await(ctx, regexp.MustCompile(`KAFKA_BROKERS=(\S+)`), 10*time.Second)
		if err != nil {
			return fail(err)
		}
		sys.brokers = strings.Split(m, ",")
		return sys, nil
	}

	b, err := startBenchProc(exe, dir, "broker", nil, "broker", "--addr", "127.0.0.1:0",
		"--partitions", strconv.Itoa(f.o.partitions), "--data", filepath.Join(dir, "broker"), "--log-level", "warn")
	if err != nil {
		return fail(err)
	}
	sys.procs = append(sys.procs, b)
	m, err := b.await(ctx, regexp.MustCompile(`KAFKA_BROKERS=(\S+)`), 30*time.Second)
	if err != nil {
		return fail(err)
	}
	sys.brokers = strings.Split(m, ",")
	o := f.o
	o.brokers = m
	o.kafkaSecurity = stream.SecurityConfig{} // bench's own broker is plaintext
	if _, err := migrate(ctx, dbURL); err != nil {
		return fail(err)
	}
	if err := createTopics(ctx, &o); err != nil {
		return fail(err)
	}
	sys.exe, sys.dir, sys.env = exe, dir, append(plaintextKafkaEnv(), stageEnvs...)
	sys.stageArgs = append([]string{"--kafka-brokers", m, "--database-url", dbURL, "--topic-prefix", f.o.topicPrefix}, stageArgs...)
	stages := []string{stageIngest, stageMatcher, stageSink}
	if f.backlog {
		stages = stages[:1] // the consumers start once every record is accepted
	}
	if err := sys.startStages(ctx, stages...); err != nil {
		return fail(err)
	}
	return sys, nil
}

// startedRE finds, in a stage's "started" line, its public address (ingest
// only; else empty) and its admin address.
var startedRE = regexp.MustCompile(`"msg":"started"(?:.*"http_addr":"([^"]+)")?.*"admin_addr":"([^"]+)"`)

// startStages starts each stage as a process and waits until it serves.
func (s *benchSystem) startStages(ctx context.Context, stages ...string) error {
	for _, stage := range stages {
		if _, err := s.startStage(ctx, stage, stage); err != nil {
			return err
		}
	}
	return nil
}

// startInstances starts n processes of one stage, named stage-1, stage-2,
// … when there are several, and waits until they serve.
func (s *benchSystem) startInstances(ctx context.Context, stage string, n int) ([]*benchProc, error) {
	procs := make([]*benchProc, 0, n)
	for i := range n {
		name := stage
		if n > 1 {
			name = fmt.Sprintf("%s-%d", stage, i+1)
		}
		p, err := s.startStage(ctx, name, stage)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// startStage starts a process of stage, logging to <dir>/<name>.log, and
// waits until it serves.
func (s *benchSystem) startStage(ctx context.Context, name, stage string) (*benchProc, error) {
	args := append([]string{stage}, s.stageArgs...)
	if stage == stageIngest { // matcher and sink have no public address
		args = append(args, "--http-addr", "127.0.0.1:0")
	}
	p, err := startBenchProc(s.exe, s.dir, name, s.env, args...)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	m, err := p.awaitMatch(ctx, startedRE, time.Minute)
	if err != nil {
		return nil, err
	}
	p.admin = "http://" + m[2]
	if stage == stageIngest {
		s.base = "http://" + m[1]
	}
	return p, nil
}

// pgUse is what the bench database's PostgreSQL backends used between two
// readings of bench.PostgresCPU (ok false when they could not be read).
type pgUse struct {
	before, after time.Duration
	ok            bool
	backends      int
	db            string
}

// costs is the cost of each of the system's processes between two samples,
// then the PostgreSQL backends', per record of the workload. A process
// started between the samples had used nothing before.
func (s *benchSystem) costs(before, after map[*benchProc]bench.ProcSample, pg pgUse, records int) []bench.ProcessCost {
	var out []bench.ProcessCost
	for _, p := range s.procs {
		if a, ok := after[p]; ok {
			out = append(out, bench.NewProcessCost(p.name, p.pid(), before[p], a, records))
		}
	}
	if pg.ok {
		c := bench.NewProcessCost("postgres", 0, bench.ProcSample{CPU: pg.before}, bench.ProcSample{CPU: pg.after}, records)
		c.Note = fmt.Sprintf("%d backends of database %s", pg.backends, pg.db)
		out = append(out, c)
	}
	return out
}

// sample reads /proc for every process it can.
func (s *benchSystem) sample() map[*benchProc]bench.ProcSample {
	out := make(map[*benchProc]bench.ProcSample, len(s.procs))
	for _, p := range s.procs {
		if v, err := bench.SampleProc(p.pid()); err == nil {
			out[p] = v
		}
	}
	return out
}

// stop ends the processes, stages before the broker; later calls do
// nothing.
func (s *benchSystem) stop(stderr io.Writer) {
	s.once.Do(func() {
		for i := len(s.procs) - 1; i >= 0; i-- {
			if err := s.procs[i].stop(); err != nil {
				fmt.Fprintf(stderr, "bench: %s: %v\n", s.procs[i].name, err)
			}
		}
	})
}

// profile takes a CPU profile of every process that serves pprof, all at
// once, after letting the run warm up.
func (s *benchSystem) profile(ctx context.Context, dir string, d time.Duration, stderr io.Writer) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(3 * time.Second):
	}
	var wg sync.WaitGroup
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		wg.Go(func() {
			u := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", p.admin, int(d.Seconds()))
			if err := fetchTo(ctx, u, filepath.Join(dir, p.name+".cpu.pprof"), d+30*time.Second); err != nil {
				fmt.Fprintf(stderr, "bench: CPU profile of %s: %v\n", p.name, err)
			}
			// The heap in the middle of the run, when backlogs are largest.
			if err := fetchTo(ctx, p.admin+"/debug/pprof/heap", filepath.Join(dir, p.name+".heap-mid.pprof"), 30*time.Second); err != nil {
				fmt.Fprintf(stderr, "bench: heap profile of %s: %v\n", p.name, err)
			}
		})
	}
	wg.Wait()
}

// chunks reads the matcher's and the sink's chunk statistics from the
// processes' metrics.
func (s *benchSystem) chunks(ctx context.Context) map[string]bench.StageChunks {
	out := map[string]bench.StageChunks{}
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		m, err := scrapeMetrics(ctx, p.admin+"/metrics")
		if err != nil {
			continue
		}
		for _, st := range []string{stageMatcher, stageSink} {
			if c, ok := bench.ChunksOf(m, st); ok {
				out[st] = c
			}
		}
	}
	return out
}

func scrapeMetrics(ctx context.Context, u string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return bench.ParseMetrics(resp.Body)
}

// heapProfiles saves every process's heap profile.
func (s *benchSystem) heapProfiles(ctx context.Context, dir string, stderr io.Writer) {
	for _, p := range s.procs {
		if p.admin == "" {
			continue
		}
		if err := fetchTo(ctx, p.admin+"/debug/pprof/heap", filepath.Join(dir, p.name+".heap.pprof"), 30*time.Second); err != nil {
			fmt.Fprintf(stderr, "bench: heap profile of %s: %v\n", p.name, err)
		}
	}
}

func fetchTo(ctx context.Context, u, path string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d (is --pprof on?)", resp.StatusCode)
	}
	out, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, resp.Body); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// benchProc is a process of this binary that bench started; its output
// goes to <dir>/<name>.log.
type benchProc struct {
	name  string
	admin string // http://host:port of its admin server (/metrics, /debug/pprof/), if any
	cmd   *exec.Cmd
	lines chan string   // output lines, while someone may wait for one
	done  chan struct{} // closed when the process has exited
	err   error         // how it exited; read after done
}

func startBenchProc(exe, dir, name string, env []string, args ...string) (*benchProc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("bench: %w", err)
	}
	p := &benchProc{name: name, lines: make(chan string, 256), done: make(chan struct{})}
	p.cmd = exec.Command(exe, args...)
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = childProcAttr()
	err = p.cmd.Start()
	w.Close() // the child has its copy
	if err != nil {
		r.Close()
		logf.Close()
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	output := make(chan struct{})
	go func() {
		defer close(output)
		defer r.Close()
		defer logf.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			logf.Write(append(sc.Bytes(), '\n'))
			select {
			case p.lines <- sc.Text():
			default: // nobody waits for lines now
			}
		}
	}()
	go func() {
		p.err = p.cmd.Wait()
		<-output
		close(p.done)
	}()
	return p, nil
}

func (p *benchProc) pid() int { return p.cmd.Process.Pid }

// await returns the last submatch of the first output line matching re.
func (p *benchProc) await(ctx context.Context, re *regexp.Regexp, within time.Duration) (string, error) {
	m, err := p.awaitMatch(ctx, re, within)
	if err != nil {
		return "", err
	}
	return m[len(m)-1], nil
}

// awaitMatch is await that returns the whole match and its submatches.
func (p *benchProc) awaitMatch(ctx context.Context, re *regexp.Regexp, within time.Duration) ([]string, error) {
	timeout := time.After(within)
	for {
		select {
		case line := <-p.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				return m, nil
			}
		case <-p.done:
			return nil, fmt.Errorf("bench: %s exited (%v) before it was ready; see its log", p.name, p.err)
		case <-timeout:
			return nil, fmt.Errorf("bench: %s not ready within %s; see its log", p.name, within)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// stop sends SIGTERM and waits for the exit, killing the process if it
// takes longer than a graceful shutdown may.
func (p *benchProc) stop() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		var exit *exec.ExitError
		if errors.As(p.err, &exit) {
			return fmt.Errorf("exited with %v after SIGTERM", p.err)
		}
		return nil
	case <-time.After(shutdownTimeout + 5*time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return errors.New("killed: no exit within the shutdown timeout")
	}
}

// plaintextKafkaEnv clears the Kafka security settings a self-started
// system's processes would inherit: its broker is the plaintext in-process
// one. (An empty variable counts as unset.)
func plaintextKafkaEnv() []string {
	return []string{"KAFKA_SASL_MECHANISM=", "KAFKA_SASL_USERNAME=", "KAFKA_SASL_PASSWORD=", "KAFKA_SASL_PASSWORD_FILE=",
		"KAFKA_TLS=", "KAFKA_TLS_CA_FILE=", "KAFKA_TLS_CERT_FILE=", "KAFKA_TLS_KEY_FILE="}
}
