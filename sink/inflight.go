package sink

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/redact"
)

// collectTimeout bounds the PostgreSQL round trip of one scrape.
const collectTimeout = 3 * time.Second

// BatchCollector reports the batches in flight, read from PostgreSQL at each
// scrape (a partial index keeps that cheap). It is registered by sink
// processes only; every sink reports the same numbers, so queries take max.
type BatchCollector struct {
	pool             *pgxpool.Pool
	log              *slog.Logger
	inFlight, oldest *prometheus.Desc
	errors           prometheus.Counter
	mu               sync.Mutex // one query at a time
}

var _ prometheus.Collector = (*BatchCollector)(nil)

// NewBatchCollector returns the collector of the batches in flight of pool.
func NewBatchCollector(pool *pgxpool.Pool, log *slog.Logger) *BatchCollector {
	return &BatchCollector{
		pool: pool, log: log,
		inFlight: prometheus.NewDesc("groupmatch_batches_in_flight",
			"Accepted batches not yet final (status PROCESSING).", nil, nil),
		oldest: prometheus.NewDesc("groupmatch_batch_oldest_in_flight_accepted_timestamp_seconds",
			"Acceptance time of the oldest batch in flight, as a Unix time; absent when none is.", nil, nil),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_batches_in_flight_collect_errors_total",
			Help: "Scrapes that could not count the batches in flight.",
		}),
	}
}

// Describe implements prometheus.Collector.
func (b *BatchCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- b.inFlight
	ch <- b.oldest
	b.errors.Describe(ch)
}

// Collect implements prometheus.Collector: one query per scrape.
func (b *BatchCollector) Collect(ch chan<- prometheus.Metric) {
	b.mu.Lock()
	defer b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), collectTimeout)
	defer cancel()
	var n int64
	var oldest *float64
	// Every tenant's batches, read only: on Citus one query over the shards.
	err := b.pool.QueryRow(ctx, `SELECT /* all tenants */ count(*), extract(epoch FROM min(accepted_at))::float8
		FROM batches WHERE status = 'PROCESSING'`).Scan(&n, &oldest)
	if err != nil {
		b.errors.Inc()
		b.log.Warn("batches in flight unavailable", "stage", "sink", "err", redact.Error(err))
	} else {
		ch <- prometheus.MustNewConstMetric(b.inFlight, prometheus.GaugeValue, float64(n))
		if oldest != nil {
			ch <- prometheus.MustNewConstMetric(b.oldest, prometheus.GaugeValue, *oldest)
		}
	}
	b.errors.Collect(ch)
}
