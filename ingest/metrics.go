package ingest

import "github.com/prometheus/client_golang/prometheus"

// Metrics are ingest's Prometheus metrics. route is the route pattern, never
// a raw path; code is the HTTP status.
type Metrics struct {
	Requests        *prometheus.CounterVec // by route, code
	RequestSeconds  *prometheus.HistogramVec
	RecordsAccepted prometheus.Counter
	BatchesAccepted prometheus.Counter
	BatchesAborted  prometheus.Counter
	InFlight        prometheus.Gauge
	// InFlightLimit is Config.MaxInFlight, set by New: the dashboard plots
	// InFlight against it.
	InFlightLimit prometheus.Gauge
	// FeedFailures counts requests-topic messages that failed permanently
	// (class "permanent") or panicked ("panic") and were answered
	// request.rejected.
	FeedFailures *prometheus.CounterVec
}

// NewMetrics registers ingest's metrics on reg, labelled stage="ingest",
// with both feed failure classes at 0.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": "ingest"}, reg)
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_http_requests_total",
			Help: "HTTP requests, by route and status code.",
		}, []string{"route", "code"}),
		RequestSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "groupmatch_http_request_duration_seconds",
			Help:    "HTTP request latency, by route.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"route"}),
		RecordsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_records_accepted_total",
			Help: "Records of accepted batches written to the records topic.",
		}),
		BatchesAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_batches_accepted_total",
			Help: "Batches accepted (a batch id was returned).",
		}),
		BatchesAborted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_batches_aborted_total",
			Help: "Batches whose acceptance failed (the caller got 503 or a 4xx); never applied.",
		}),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "groupmatch_http_requests_in_flight",
			Help: "HTTP requests being served.",
		}),
		InFlightLimit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "groupmatch_http_requests_in_flight_limit",
			Help: "batchAdd requests served at once beyond which ingest answers 503 (--max-in-flight).",
		}),
		FeedFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_feed_failures_total",
			Help: "Requests-topic messages that failed permanently or panicked, answered request.rejected; by class.",
		}, []string{"class"}),
	}
	reg.MustRegister(m.Requests, m.RequestSeconds, m.RecordsAccepted, m.BatchesAccepted, m.BatchesAborted, m.InFlight, m.InFlightLimit, m.FeedFailures)
	// Both classes exist at 0 from the start, so that the first failure is
	// an increase that rate() sees.
	for _, c := range []string{"permanent", "panic"} {
		m.FeedFailures.WithLabelValues(c)
	}
	return m
}
