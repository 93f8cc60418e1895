package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/supervise"
)

// ErrDisagree means the pipeline and the baseline reached different
// outcomes or memberships; Run returns it with the full report.
var ErrDisagree = errors.New("bench: the pipeline and the baseline disagree")

// Run measures the system cfg describes: it validates cfg, starts the
// system unless cfg.Target names one, loads the directory, drives the
// workload and, as asked, the baseline; it writes the report as text to
// out (its last line the JSON headline) and as JSON to cfg.JSONPath, and
// progress to cfg.Log. Every process it started has ended when it returns.
// The report is complete when the error is nil or ErrDisagree.
func Run(ctx context.Context, cfg Config, out io.Writer) (Report, error) {
	if err := cfg.Validate(); err != nil {
		return Report{}, err
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultConfig().StopGrace
	}
	if cfg.Target != "" {
		// A running system keeps the groups of earlier runs: name this
		// run's groups apart.
		cfg.Workload.GroupPrefix = "bench-" + strconv.FormatInt(time.Now().Unix()%1e6, 36) + "-"
	}
	cfg.Workload = cfg.Workload.WithDefaults()
	if cfg.Stage != "" {
		cfg.Backlog = true // the stage starts once its whole input waits in Kafka
	}
	if cfg.ProfileDir != "" {
		cfg.Pprof = true
		if err := os.MkdirAll(cfg.ProfileDir, 0o755); err != nil {
			return Report{}, fmt.Errorf("bench: --profile: %w", err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var report Report
	err := run(ctx, &cfg, &report, out, cfg.Log)
	return report, err
}

func run(ctx context.Context, cfg *Config, report *Report, stdout, stderr io.Writer) (err error) {
	live := NewLive(stderr)
	*report = Report{Version: 1, Date: time.Now().UTC().Truncate(time.Second)}
	report.Setup = Setup{Via: cfg.Via, Workload: cfg.Workload, Clients: cfg.Clients, Rate: cfg.Rate}
	load := LoadAvg()

	dbURL := cfg.DatabaseURL
	var sys *system
	if cfg.Target == "" {
		dbURL, err = freshDatabase(ctx, cfg.DatabaseURL, cfg.BenchDatabase)
		if err != nil {
			return err
		}
		dir := cfg.WorkDir
		if dir == "" {
			dir, err = os.MkdirTemp("", "groupmatch-bench-")
		} else {
			err = os.MkdirAll(dir, 0o755)
		}
		if err != nil {
			return fmt.Errorf("bench: --work: %w", err)
		}
		defer func() {
			if err != nil || cfg.WorkDir != "" {
				fmt.Fprintf(stderr, "bench: logs of the processes are in %s\n", dir)
				return
			}
			os.RemoveAll(dir)
		}()
		report.Setup.Mode = "processes"
		if cfg.Single {
			report.Setup.Mode = "single"
		}
		report.Setup.Partitions, report.Setup.MatcherChunk, report.Setup.SinkChunk, report.Setup.DBMaxConns =
			cfg.Partitions, cfg.MatcherChunk, cfg.SinkChunk, cfg.DBMaxConns
		report.Setup.MatcherConsumers = cfg.MatcherConsumers
		report.Setup.SinkConsumers = cfg.SinkConsumers
		report.Setup.TenantRate = cfg.TenantRate
		fmt.Fprintf(stderr, "bench: starting the system (%s) on database %s\n", report.Setup.Mode, cfg.BenchDatabase)
		sys, err = startSystem(ctx, cfg, dbURL, dir)
		if err != nil {
			return err
		}
		defer sys.stop(stderr)
	} else {
		report.Setup.Mode = "target"
		sys = &system{base: strings.TrimRight(cfg.Target, "/"), brokers: cfg.KafkaBrokers, sec: cfg.KafkaSecurity, grace: cfg.StopGrace}
	}

	poolCfg, err := pgxpool.ParseConfig(dbURL)
	if err != nil {
		return fmt.Errorf("bench: --database-url: %w", err)
	}
	poolCfg.MaxConns = int32(max(4, cfg.BaselineWorkers+2))
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "groupmatch-bench"
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("bench: postgres: %w", err)
	}
	defer pool.Close()
	report.Machine = DescribeMachine(ctx, pool)
	report.Machine.LoadAvgBefore = load

	store := apps.NewStore(pool)
	creds, err := store.Create(ctx, cfg.Tenant, "bench", []string{apps.ScopeGroup})
	if err != nil {
		return err
	}
	tenantID, err := store.TenantID(ctx, cfg.Tenant)
	if err != nil {
		return err
	}
	if cfg.Load {
		secs, err := loadDirectory(ctx, pool, tenantID, cfg.Workload.Customers, live)
		if err != nil {
			return err
		}
		report.DirectorySeconds = secs
	}

	var neighbour *neighbourTenant
	if cfg.Neighbour {
		if neighbour, err = setupNeighbour(ctx, cfg, pool, store, live); err != nil {
			return err
		}
	}

	var batchIDs []int64
	if cfg.Stage != "" {
		tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
		if err != nil {
			return err
		}
		if report.Stage, err = measureStage(ctx, cfg, sys, pool, tenantID, tok.Access, live, stderr); err != nil {
			return err
		}
	} else if cfg.Pipeline {
		tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
		if err != nil {
			return err
		}
		res, ids, err := measurePipeline(ctx, cfg, sys, pool, tenantID, tok.Access, neighbour, live, stderr)
		if err != nil {
			return err
		}
		report.Pipeline, batchIDs = res, ids
	}
	if cfg.Baseline {
		// The system is idle now; stop it so the baseline has the machine.
		sys.stop(stderr)
		res, err := measureBaseline(ctx, cfg, pool, tenantID, dbName(dbURL), batchIDs, live)
		if err != nil {
			return err
		}
		report.Baseline = res
		if report.Pipeline != nil {
			pm, err := Memberships(ctx, pool, "public", tenantID, cfg.Workload.GroupPrefix)
			if err != nil {
				return err
			}
			bm, err := Memberships(ctx, pool, "bench_baseline", tenantID, cfg.Workload.GroupPrefix)
			if err != nil {
				return err
			}
			report.Agreement = Compare(report.Pipeline.Outcomes, res.Outcomes, pm, bm)
		}
	}
	report.Finish()
	if cfg.JSONPath != "" {
		if err := report.WriteJSON(cfg.JSONPath); err != nil {
			return fmt.Errorf("bench: --json: %w", err)
		}
	}
	if err := report.WriteText(stdout); err != nil {
		return err
	}
	if a := report.Agreement; a != nil && (!a.Outcomes || !a.Memberships) {
		return ErrDisagree
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

// loadDirectory loads the first n customers of the Big directory into
// the tenant, showing progress, and returns the seconds it took.
func loadDirectory(ctx context.Context, pool *pgxpool.Pool, tenantID int64, n int, live *Live) (float64, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(matchertest.WriteBig(pw, 0, n)) }()
	defer pr.Close()
	l := directory.NewLoader(pool)
	l.Progress = func(p directory.LoadProgress) {
		live.Update(fmt.Sprintf("directory: %s of %s customers loaded, %s/s",
			Thousands(float64(p.Loaded)), Thousands(float64(n)), Thousands(float64(p.Loaded)/max(p.Elapsed.Seconds(), 1e-3))))
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
	if _, err := pool.Exec(ctx, "VACUUM (ANALYZE) customers, customer_phones, customer_openids, customer_emails"); err != nil {
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

// measurePipeline drives the workload through the system and measures it;
// with a neighbour, that tenant sends its small batches from the start of
// the drive until the workload's last batch is final. It returns the batch
// id of each batch index.
func measurePipeline(ctx context.Context, cfg *Config, sys *system, pool *pgxpool.Pool, tenantID int64, token string,
	neighbour *neighbourTenant, live *Live, stderr io.Writer) (*PipelineResult, []int64, error) {
	obs, err := NewObserver(ctx, pool, tenantID)
	if err != nil {
		return nil, nil, err
	}
	checkpoint(ctx, pool)
	nb := cfg.Workload.Batches()
	db := dbName(pool.Config().ConnString())
	before := sys.sample()
	pgBefore, _, pgOK := PostgresCPU(db)
	self, _ := supervise.SampleProc(os.Getpid())

	var sent atomic.Int64
	dcfg := DriveConfig{Clients: cfg.Clients, Rate: cfg.Rate, Token: token, Sent: &sent}
	keyPrefix := "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
	type driven struct {
		res DriveResult
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
		if cfg.Via == "kafka" {
			dcfg.KeyPrefix, dcfg.Security = keyPrefix, sys.sec
			d.res, d.err = DriveKafka(dctx, sys.brokers, cfg.Topics.Requests, cfg.Workload, dcfg)
		} else {
			d.res, d.err = DriveHTTP(dctx, sys.base, cfg.Workload, dcfg)
		}
		done <- d
	}()
	if cfg.ProfileDir != "" {
		profiles.Go(func() { sys.profile(dctx, cfg.ProfileDir, cfg.ProfileDuration, stderr) })
	}
	if neighbour != nil {
		if err := neighbour.start(dctx, cfg, pool, sys.base); err != nil {
			return nil, nil, err
		}
	}

	start := time.Now()
	var drive *driven
	var acceptedAll, drainStart time.Time
	var last Progress
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
			if cfg.Backlog {
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
		if time.Since(lastPoll) < time.Second && (cfg.Via != "kafka" || !acceptedAll.IsZero()) {
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
		} else if now.Sub(lastChange) > cfg.Stall {
			live.Done()
			return nil, nil, fmt.Errorf("bench: no progress for %s (%d of %d batches accepted, %d finished)", cfg.Stall, p.Accepted, nb, p.Finished)
		}
		if now.Sub(lastPrint) >= time.Second || (drive != nil && p.Finished >= nb) {
			el := now.Sub(start).Seconds()
			live.Update(fmt.Sprintf("pipeline %5.0fs  sent %s/%s  accepted %s (%s/s)  applied %s (now %s/s, avg %s/s)  batches final %d/%d",
				el, Thousands(float64(sent.Load())), Thousands(float64(cfg.Workload.Records)),
				Thousands(float64(p.Records)), Thousands(float64(p.Records)/el),
				Thousands(float64(p.Processed)), Thousands(float64(p.Processed-prevApplied)/now.Sub(prevAt).Seconds()),
				Thousands(float64(p.Processed)/el), p.Finished, nb) + neighbourProgress(neighbour))
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
	pgAfter, backends, _ := PostgresCPU(db)
	selfAfter, _ := supervise.SampleProc(os.Getpid())
	profiles.Wait()
	if cfg.ProfileDir != "" {
		sys.heapProfiles(ctx, cfg.ProfileDir, stderr)
	}

	r, err := obs.Result(ctx)
	if err != nil {
		return nil, nil, err
	}
	res := &PipelineResult{Records: cfg.Workload.Records, Batches: r.Batches, BatchLatency: r.Latency, Outcomes: r.Outcomes, Retried: drive.res.Retried}
	res.Chunks = sys.chunks(ctx)
	ingestEnd := drive.res.End
	if cfg.Via == "kafka" {
		ingestEnd = acceptedAll
	} else {
		rl := drive.res.RequestLatency
		res.RequestLatency = &rl
	}
	res.IngestSeconds = ingestEnd.Sub(drive.res.Start).Seconds()
	res.IngestRecordsPerSec = float64(cfg.Workload.Records) / res.IngestSeconds
	res.EndToEndSeconds = r.LastFinished.Sub(r.FirstAccepted).Seconds()
	res.EndToEndRecordsPerSec = float64(cfg.Workload.Records) / res.EndToEndSeconds
	if !drainStart.IsZero() {
		res.DrainSeconds = r.LastFinished.Sub(drainStart).Seconds()
		res.DrainRecordsPerSec = float64(cfg.Workload.Records) / res.DrainSeconds
	}
	res.Processes = sys.costs(before, after, pgUse{pgBefore, pgAfter, pgOK, backends, db}, cfg.Workload.Records)
	c := NewProcessCost("bench", os.Getpid(), self, selfAfter, cfg.Workload.Records)
	c.Note, c.PeakRSSMB = "the load generator", 0
	res.Processes = append(res.Processes, c)
	if neighbour != nil {
		if res.Neighbour, err = neighbour.finish(ctx, cfg, live, res.EndToEndRecordsPerSec); err != nil {
			return nil, nil, err
		}
	}
	ids := drive.res.BatchIDs
	if cfg.Via == "kafka" {
		if ids, err = obs.BatchIDs(ctx, keyPrefix, nb); err != nil {
			return nil, nil, err
		}
	}
	return res, ids, nil
}

// measureBaseline applies the workload with plain PostgreSQL.
func measureBaseline(ctx context.Context, cfg *Config, pool *pgxpool.Pool, tenantID int64, db string, batchIDs []int64, live *Live) (*BaselineResult, error) {
	if err := PrepareBaseline(ctx, pool, "bench_baseline"); err != nil {
		return nil, err
	}
	checkpoint(ctx, pool)
	start := time.Now()
	res, err := RunBaseline(ctx, pool, cfg.Workload, BaselineConfig{
		Schema: "bench_baseline", Workers: cfg.BaselineWorkers, ChunkRecords: cfg.BaselineChunk, TenantID: tenantID, BatchIDs: batchIDs,
		Progress: func(n int) {
			el := time.Since(start).Seconds()
			live.Update(fmt.Sprintf("baseline %5.0fs  applied %s/%s (%s/s)", el,
				Thousands(float64(n)), Thousands(float64(cfg.Workload.Records)), Thousands(float64(n)/el)))
		},
	})
	live.Done()
	if err != nil {
		return nil, err
	}
	return &res, nil
}
