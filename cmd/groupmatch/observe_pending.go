package main

import (
	"context"
	"log/slog"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// pendingCollector reports the pending bindings (deferUnmatched, SPEC §13)
// not yet expired, counted in PostgreSQL at each scrape through the expiry
// index. Registered by processes running the re-matcher; each reports the
// same number, so queries take max.
type pendingCollector struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	pending *prometheus.Desc
	errors  prometheus.Counter
	mu      sync.Mutex // one query at a time
}

func newPendingCollector(pool *pgxpool.Pool, log *slog.Logger) *pendingCollector {
	return &pendingCollector{
		pool: pool, log: log,
		pending: prometheus.NewDesc("groupmatch_pending_bindings",
			"Pending bindings not yet expired: deferred records waiting for the directory to learn their customer.", nil, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_pending_bindings_collect_errors_total",
			Help: "Scrapes that could not count the pending bindings.",
		}),
	}
}

func (c *pendingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	c.errors.Describe(ch)
}

func (c *pendingCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
	defer cancel()
	var n int64
	// Every tenant's bindings, read only: on Citus one query over the shards.
	err := c.pool.QueryRow(ctx, `SELECT /* all tenants */ count(*) FROM pending_bindings WHERE expires_at > now()`).Scan(&n)
	if err != nil {
		c.errors.Inc()
		c.log.Warn("pending bindings unavailable", "stage", rematcher, "err", safeError(err))
	} else {
		ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(n))
	}
	c.errors.Collect(ch)
}
