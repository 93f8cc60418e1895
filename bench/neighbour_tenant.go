package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
)

// neighbourRecords bounds the small tenant's workload: batches are sent
// until the big tenant's backlog has drained, at most this many records.
const neighbourRecords = 10_000_000

// neighbourWorkload is the small tenant's workload: batches of
// --neighbour-batch records over its own directory of
// --neighbour-customers, its groups named apart from the big tenant's.
func (c Config) neighbourWorkload(big Workload) Workload {
	w := Workload{
		Customers: c.NeighbourCustomers, Records: neighbourRecords, BatchSize: c.NeighbourBatch,
		Mix: big.Mix, GroupPrefix: "neighbour-" + big.GroupPrefix, Seed: big.Seed + 1,
	}
	return w.WithDefaults()
}

// neighbourTenant is the small tenant of a --neighbour run: its own
// application, token and directory, and an observer of its batches.
type neighbourTenant struct {
	w        Workload
	tenantID int64
	token    string
	obs      *Observer
	drive    *NeighbourDrive
}

// setupNeighbour creates the small tenant's application and loads its
// directory.
func setupNeighbour(ctx context.Context, cfg *Config, pool *pgxpool.Pool, store *apps.Store, live *Live) (*neighbourTenant, error) {
	n := &neighbourTenant{w: cfg.neighbourWorkload(cfg.Workload)}
	creds, err := store.Create(ctx, cfg.NeighbourTenant, "bench-neighbour", []string{apps.ScopeGroup})
	if err != nil {
		return nil, err
	}
	if n.tenantID, err = store.TenantID(ctx, cfg.NeighbourTenant); err != nil {
		return nil, err
	}
	if cfg.Load {
		if _, err := loadDirectory(ctx, pool, n.tenantID, n.w.Customers, live); err != nil {
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
func (n *neighbourTenant) start(ctx context.Context, cfg *Config, pool *pgxpool.Pool, base string) error {
	var err error
	if n.obs, err = NewObserver(ctx, pool, n.tenantID); err != nil {
		return err
	}
	n.drive = StartNeighbour(ctx, base, n.w, NeighbourConfig{Interval: cfg.NeighbourInterval, Token: n.token})
	return nil
}

// finish stops sending, waits until every batch sent is final and reads
// their latency; bigRate is the big tenant's end-to-end records/s.
func (n *neighbourTenant) finish(ctx context.Context, cfg *Config, live *Live, bigRate float64) (*NeighbourResult, error) {
	accepted, retried, err := n.drive.Stop()
	if err != nil {
		return nil, err
	}
	if accepted == 0 {
		return nil, errors.New("bench: the neighbour had no batch accepted while the backlog drained")
	}
	lastChange := time.Now()
	var last Progress
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
		} else if time.Since(lastChange) > cfg.Stall {
			return nil, fmt.Errorf("bench: neighbour: no progress for %s (%d of %d batches final)", cfg.Stall, p.Finished, accepted)
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
	return &NeighbourResult{
		Tenant: cfg.NeighbourTenant, Customers: n.w.Customers, BatchSize: n.w.BatchSize, IntervalS: cfg.NeighbourInterval.Seconds(),
		Batches: r.Batches, Retried: retried, BatchLatency: r.Latency, Outcomes: r.Outcomes, BigTenantRecordsPerSec: bigRate,
	}, nil
}

// neighbourProgress is the neighbour's part of the progress line.
func neighbourProgress(n *neighbourTenant) string {
	if n == nil || n.drive == nil {
		return ""
	}
	return "  neighbour batches " + strconv.Itoa(n.drive.Accepted())
}
