package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/stream"
)

// measureStage measures one stage alone (--stage matcher): ingest, the only
// stage running, puts the whole workload into Kafka; then the stage's
// processes start, and the run ends when their consumer group has
// committed every input message. The sink never runs, so the batches stay
// PROCESSING in the bench database.
func measureStage(ctx context.Context, cfg *Config, sys *system, pool *pgxpool.Pool, tenantID int64, token string,
	live *Live, stderr io.Writer) (*StageResult, error) {
	defer live.Done()
	obs, err := NewObserver(ctx, pool, tenantID)
	if err != nil {
		return nil, err
	}
	var sent atomic.Int64
	dcfg := DriveConfig{Clients: cfg.Clients, Rate: cfg.Rate, Token: token, Sent: &sent}
	live.Update("stage: ingest is putting the workload into Kafka")
	if cfg.Via == "kafka" {
		dcfg.KeyPrefix = "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36) + "-"
		dcfg.Security = sys.sec
		_, err = DriveKafka(ctx, sys.brokers, cfg.Topics.Requests, cfg.Workload, dcfg)
	} else {
		_, err = DriveHTTP(ctx, sys.base, cfg.Workload, dcfg)
	}
	if err != nil {
		return nil, err
	}
	if err := awaitAccepted(ctx, obs, cfg.Workload.Batches(), cfg.Stall); err != nil {
		return nil, err
	}

	lag, err := stream.NewLagCollector(stream.LagConfig{Brokers: sys.brokers, Security: sys.sec,
		Targets: []stream.LagTarget{{Group: cfg.MatcherGroup, Topic: cfg.Topics.Records}}})
	if err != nil {
		return nil, err
	}
	defer lag.Close()
	_, input, err := committedOf(ctx, lag)
	if err != nil {
		return nil, err
	}
	if input != int64(cfg.Workload.Records) {
		return nil, fmt.Errorf("bench: the records topic holds %d messages, want %d", input, cfg.Workload.Records)
	}

	checkpoint(ctx, pool)
	db := dbName(pool.Config().ConnString())
	before := sys.sample()
	pgBefore, _, pgOK := PostgresCPU(db)
	start := time.Now()
	live.Update(fmt.Sprintf("stage: starting %d %s process(es)", cfg.Instances, cfg.Stage))
	procs, err := sys.startInstances(ctx, cfg.Stage, cfg.Instances)
	if err != nil {
		return nil, err
	}
	if cfg.ProfileDir != "" {
		pctx, stopProfiles := context.WithCancel(ctx)
		var profiles sync.WaitGroup
		profiles.Go(func() { sys.profile(pctx, cfg.ProfileDir, cfg.ProfileDuration, stderr) })
		defer func() {
			stopProfiles()
			profiles.Wait()
		}()
	}
	var firstAt, end time.Time
	var firstN, last int64
	lastChange, lastPrint := start, start
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for end.IsZero() {
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: %w", ctx.Err())
		case <-tick.C:
		}
		done, _, err := committedOf(ctx, lag)
		if err != nil {
			return nil, err
		}
		now := time.Now()
		if done > 0 && firstAt.IsZero() {
			firstAt, firstN = now, done
		}
		if done != last {
			last, lastChange = done, now
		} else if now.Sub(lastChange) > cfg.Stall {
			return nil, fmt.Errorf("bench: no progress for %s (%d of %d records resolved)", cfg.Stall, done, input)
		}
		if done >= input {
			end = now
		}
		if now.Sub(lastPrint) >= time.Second || !end.IsZero() {
			el := now.Sub(start).Seconds()
			live.Update(fmt.Sprintf("%s %5.0fs  resolved %s/%s (avg %s/s)", cfg.Stage, el,
				Thousands(float64(done)), Thousands(float64(input)), Thousands(float64(done)/el)))
			lastPrint = now
		}
	}
	live.Done()
	after := sys.sample()
	pgAfter, backends, _ := PostgresCPU(db)

	res := &StageResult{Stage: cfg.Stage, Instances: cfg.Instances, Records: cfg.Workload.Records,
		StartupSeconds: firstAt.Sub(start).Seconds(), Seconds: end.Sub(firstAt).Seconds()}
	if counted := input - firstN; counted > 0 && res.Seconds > 0 {
		res.RecordsPerSec = float64(counted) / res.Seconds
	} else {
		// One commit covered everything: only the whole span is known.
		res.Seconds = end.Sub(start).Seconds()
		res.RecordsPerSec = float64(input) / res.Seconds
	}
	res.Processes = sys.costs(before, after, pgUse{pgBefore, pgAfter, pgOK, backends, db}, cfg.Workload.Records)
	sum := map[string]float64{}
	for _, p := range procs {
		m, err := scrapeMetrics(ctx, p.admin+"/metrics")
		if err != nil {
			fmt.Fprintf(stderr, "bench: metrics of %s: %v\n", p.Name(), err)
			continue
		}
		for k, v := range m {
			sum[k] += v
		}
	}
	if c, ok := ChunksOf(sum, cfg.Stage); ok {
		res.Chunks = &c
	}
	return res, nil
}

// awaitAccepted waits until n batches of the run are past PENDING.
func awaitAccepted(ctx context.Context, obs *Observer, n int, stall time.Duration) error {
	var last Progress
	lastChange := time.Now()
	for {
		p, err := obs.Progress(ctx)
		if err != nil {
			return err
		}
		switch {
		case p.Aborted > 0:
			return fmt.Errorf("bench: %d batches were aborted by ingest", p.Aborted)
		case p.Accepted >= n:
			return nil
		case p != last:
			last, lastChange = p, time.Now()
		case time.Since(lastChange) > stall:
			return fmt.Errorf("bench: no progress for %s (%d of %d batches accepted)", stall, p.Accepted, n)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("bench: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// committedOf sums, over the partitions of the collector's one target,
// the messages the group has committed and the messages there are.
func committedOf(ctx context.Context, lag *stream.LagCollector) (committed, total int64, err error) {
	ps, err := lag.Lag(ctx)
	if err != nil {
		return 0, 0, err
	}
	if len(ps) == 0 {
		return 0, 0, errors.New("bench: no partitions to measure")
	}
	for _, p := range ps {
		total += p.HighWatermark - p.LogStart
		if p.Committed >= 0 {
			committed += p.Committed - p.LogStart
		}
	}
	return committed, total, nil
}
