package bench

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// NeighbourConfig says how a small tenant offers its batches while another
// tenant's backlog drains (SPEC §10, fair share).
type NeighbourConfig struct {
	// Interval is the time between two batches; default 1 s. A batch is
	// sent on time even when the one before is still unanswered.
	Interval time.Duration
	// Token is an access token of the small tenant's application.
	Token string
}

// NeighbourDrive is a small tenant's driver, started by StartNeighbour.
type NeighbourDrive struct {
	stop    context.CancelFunc
	done    chan struct{} // closed when every request has its answer
	batches atomic.Int64  // batches accepted
	retried atomic.Int64
	err     error // the first refusal, read after done
	errOnce sync.Once
}

// StartNeighbour posts batch 0, 1, … of w to base's batchAdd, one every
// cfg.Interval, until Stop. Answers 429 and 503 are retried as DriveHTTP
// retries them; any other refusal ends the drive with an error.
func StartNeighbour(ctx context.Context, base string, w Workload, cfg NeighbourConfig) *NeighbourDrive {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	// Stop ends the sending loop; requests sent keep ctx, so that each is
	// answered.
	sending, stop := context.WithCancel(ctx)
	d := &NeighbourDrive{stop: stop, done: make(chan struct{})}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{DisableCompression: true}}
	url := base + "/api/integrate/audience/group/rel/batchAdd"
	go func() {
		defer close(d.done)
		defer client.CloseIdleConnections()
		var wg sync.WaitGroup
		defer wg.Wait()
		tick := time.NewTicker(cfg.Interval)
		defer tick.Stop()
		for b := 0; b < w.Batches(); b++ {
			var batch Batch
			w.Batch(b, &batch)
			body := AppendBody(nil, &batch)
			wg.Go(func() {
				for {
					_, retry, err := postBatch(ctx, client, url, cfg.Token, "", body)
					switch {
					case err != nil:
						if ctx.Err() == nil {
							d.fail(fmt.Errorf("bench: neighbour batch %d: %w", b, err))
						}
						return
					case retry > 0:
						d.retried.Add(1)
						select {
						case <-ctx.Done():
							return
						case <-time.After(retry):
						}
						continue
					}
					d.batches.Add(1)
					return
				}
			})
			select {
			case <-sending.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return d
}

func (d *NeighbourDrive) fail(err error) {
	d.errOnce.Do(func() {
		d.err = err
		d.stop()
	})
}

// Accepted is how many batches were accepted so far.
func (d *NeighbourDrive) Accepted() int { return int(d.batches.Load()) }

// Stop sends no more batches, waits until every batch sent is accepted
// (or StartNeighbour's ctx ends) and returns how many were accepted, how
// many answers were retried, and the first refusal.
func (d *NeighbourDrive) Stop() (accepted int, retried int64, err error) {
	d.stop()
	<-d.done
	return d.Accepted(), d.retried.Load(), d.err
}

// NeighbourResult is the small tenant's side of a --neighbour run.
type NeighbourResult struct {
	Tenant    string  `json:"tenant"`
	Customers int     `json:"customers"`    // the small tenant's directory
	BatchSize int     `json:"batchSize"`    // records per batch
	IntervalS float64 `json:"intervalSecs"` // between two batches
	Batches   int     `json:"batches"`      // accepted and final
	Retried   int64   `json:"retried"`      // 429/503 answers retried
	// BatchLatency is accepted_at → finished_at (the batch's status final
	// in batchResult) over the small tenant's batches, sent while the big
	// tenant's backlog drained.
	BatchLatency Latency  `json:"batchLatency"`
	Outcomes     Outcomes `json:"outcomes"`
	// BigTenantRecordsPerSec is the big tenant's end-to-end throughput
	// over the same run (the pipeline's end to end).
	BigTenantRecordsPerSec float64 `json:"bigTenantRecordsPerSec"`
}
