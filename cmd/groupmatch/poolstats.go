package main

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolStater is what poolCollector reads: *pgxpool.Pool.
type poolStater interface {
	Stat() *pgxpool.Stat
}

// poolCollector reports a pgxpool's statistics, read at each scrape. Pool
// saturation (acquired = max, empty acquires and acquire wait climbing) is
// the first thing to check when a stage slows. Collect is safe for
// concurrent use: pgxpool.Pool.Stat is.
type poolCollector struct {
	pool                              poolStater
	max, acquired, idle, total        *prometheus.Desc
	acquires, empty, waitSecs, cancel *prometheus.Desc
}

var _ prometheus.Collector = (*poolCollector)(nil)

func newPoolCollector(pool poolStater) *poolCollector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc(name, help, nil, nil) }
	return &poolCollector{
		pool:     pool,
		max:      d("groupmatch_db_pool_max_connections", "PostgreSQL pool: the most connections it opens (--db-max-conns)."),
		acquired: d("groupmatch_db_pool_acquired_connections", "PostgreSQL pool: connections in use."),
		idle:     d("groupmatch_db_pool_idle_connections", "PostgreSQL pool: idle connections."),
		total:    d("groupmatch_db_pool_total_connections", "PostgreSQL pool: open connections (in use, idle and being opened)."),
		acquires: d("groupmatch_db_pool_acquires_total", "PostgreSQL pool: successful acquires."),
		empty: d("groupmatch_db_pool_empty_acquires_total",
			"PostgreSQL pool: successful acquires that had to wait for a connection (the pool was empty)."),
		waitSecs: d("groupmatch_db_pool_acquire_wait_seconds_total",
			"PostgreSQL pool: time successful acquires waited for a connection because the pool was empty."),
		cancel: d("groupmatch_db_pool_canceled_acquires_total",
			"PostgreSQL pool: acquires whose context ended before they got a connection."),
	}
}

func (c *poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.max, c.acquired, c.idle, c.total, c.acquires, c.empty, c.waitSecs, c.cancel} {
		ch <- d
	}
}

func (c *poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(c.max, float64(s.MaxConns()))
	gauge(c.acquired, float64(s.AcquiredConns()))
	gauge(c.idle, float64(s.IdleConns()))
	gauge(c.total, float64(s.TotalConns()))
	counter(c.acquires, float64(s.AcquireCount()))
	counter(c.empty, float64(s.EmptyAcquireCount()))
	counter(c.waitSecs, s.EmptyAcquireWaitTime().Seconds())
	counter(c.cancel, float64(s.CanceledAcquireCount()))
}
