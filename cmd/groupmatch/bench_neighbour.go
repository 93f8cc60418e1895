package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/bench"
)

// neighbourRecords bounds the small tenant's workload: batches are sent
// until the big tenant's backlog has drained, at most this many records.
const neighbourRecords = 10_000_000

// neighbourWorkload is the small tenant's workload: batches of
// --neighbour-batch records over its own directory of
// --neighbour-customers, its groups named apart from the big tenant's.
func neighbourWorkload(f *benchFlags) bench.Workload {
	w := bench.Workload{
		Customers: f.neighbourCustomers, Records: neighbourRecords, BatchSize: f.neighbourBatch,
		Mix: f.w.Mix, GroupPrefix: "neighbour-" + f.w.GroupPrefix, Seed: f.w.Seed + 1,
	}
	return w.WithDefaults()
}

// benchNeighbour is the small tenant of a --neighbour run: its own
// application, token and directory, and an observer of its batches.
type benchNeighbour struct {
	w        bench.Workload
	tenantID int64
	token    string
	obs      *bench.Observer
	drive    *bench.NeighbourDrive
}

// setupNeighbour creates the small tenant's application and loads its
// directory.
func setupNeighbour(ctx context.Context, f *benchFlags, pool *pgxpool.Pool, store *apps.Store, live *bench.Live) (*benchNeighbour, error) {
	n := &benchNeighbour{w: neighbourWorkload(f)}
	creds, err := store.Create(ctx, f.neighbourTenant, "bench-neighbour", []string{apps.ScopeGroup})
	if err != nil {
		return nil, err
	}
	if n.tenantID, err = store.TenantID(ctx, f.neighbourTenant); err != nil {
		return nil, err
	}
	if f.load {
		if _, err := loadBenchDirectory(ctx, pool, n.tenantID, n.w.Customers, live); err != nil {
			return nil, err
		}
	}
	tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
	if err != nil {
		return nil, err
	}
	n.token = tok.Access
	return n, nil
}

// start begins sending a batch every --neighbour-interval to base.
func (n *benchNeighbour) start(ctx context.Context, f *benchFlags, pool *pgxpool.Pool, base string) error {
	var err error
	if n.obs, err = bench.NewObserver(ctx, pool, n.tenantID); err != nil {
		return err
	}
	n.drive = bench.StartNeighbour(ctx, base, n.w, bench.NeighbourConfig{Interval: f.neighbourInterval, Token: n.token})
	return nil
}

// finish stops sending, waits until every batch sent is final and reads
// their latency; bigRate is the big tenant's end-to-end records/s.
func (n *benchNeighbour) finish(ctx context.Context, f *benchFlags, live *bench.Live, bigRate float64) (*bench.NeighbourResult, error) {
	accepted, retried, err := n.drive.Stop()
	if err != nil {
		return nil, err
	}
	if accepted == 0 {
		return nil, errors.New("bench: the neighbour had no batch accepted while the backlog drained")
	}
	lastChange := time.Now()
	var last bench.Progress
	for {
		p, err := n.obs.Progress(ctx)
		if err != nil {
			return nil, err
		}
		if p.Finished >= accepted {
			break
		}
		if p != last {
			last, lastChange = p, time.Now()
		} else if time.Since(lastChange) > f.stall {
			return nil, fmt.Errorf("bench: neighbour: no progress for %s (%d of %d batches final)", f.stall, p.Finished, accepted)
		}
		live.Update("neighbour: " + strconv.Itoa(p.Finished) + " of " + strconv.Itoa(accepted) + " batches final")
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bench: %w", ctx.Err())
		case <-time.After(250 * time.Millisecond):
		}
	}
	live.Done()
	r, err := n.obs.Result(ctx)
	if err != nil {
		return nil, err
	}
	return &bench.NeighbourResult{
		Tenant: f.neighbourTenant, Customers: n.w.Customers, BatchSize: n.w.BatchSize, IntervalS: f.neighbourInterval.Seconds(),
		Batches: r.Batches, Retried: retried, BatchLatency: r.Latency, Outcomes: r.Outcomes, BigTenantRecordsPerSec: bigRate,
	}, nil
}

// stageEnv is the environment bench gives the stage processes it starts
// on top of its own: the per-tenant records quota, as the stages read it
// (TENANT_RATE; "0" is off).
func stageEnv(f *benchFlags) []string {
	return []string{"TENANT_RATE=" + strconv.FormatFloat(f.tenantRate, 'g', -1, 64)}
}

// neighbourProgress is the neighbour's part of the progress line.
func neighbourProgress(n *benchNeighbour) string {
	if n == nil || n.drive == nil {
		return ""
	}
	return "  neighbour batches " + strconv.Itoa(n.drive.Accepted())
}
