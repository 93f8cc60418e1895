package matcher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Metrics are the matcher's Prometheus metrics. Labels are bounded:
// outcome, matched_by and kind (identity kinds; matched_by also "none") and
// error class.
type Metrics struct {
	Records       *prometheus.CounterVec // by outcome, matched_by
	Conflicts     prometheus.Counter
	LookupSeconds prometheus.Histogram
	LookupValues  *prometheus.HistogramVec // by kind
	ChunkSeconds  prometheus.Histogram
	Retries       prometheus.Counter
	DeadLetters   *prometheus.CounterVec // by class
}

// NewMetrics registers the matcher's metrics on reg, labelled
// stage="matcher", with every outcome and dead-letter class at 0.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": "matcher"}, reg)
	m := &Metrics{
		Records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_matcher_records_total",
			Help: "Records resolved, by outcome and by the identifier that matched.",
		}, []string{"outcome", "matched_by"}),
		Conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_matcher_conflicts_total",
			Help: "Matched records whose lower-priority identifier named another customer.",
		}),
		LookupSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_matcher_lookup_duration_seconds",
			Help:    "Time of one chunk's batched directory look-ups and find-or-create.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		LookupValues: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "groupmatch_matcher_lookup_values",
			Help:    "Distinct values one directory look-up query asked about, by identity kind: how well chunks batch.",
			Buckets: []float64{1, 10, 50, 100, 250, 500, 1000, 2000, 4000, 8000},
		}, []string{"kind"}),
		ChunkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_matcher_chunk_duration_seconds",
			Help:    "Time to resolve and forward one chunk, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		Retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_retries_total",
			Help: "Transient failures that were retried.",
		}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_dlq_messages_total",
			Help: "Messages sent to the dead-letter topic, by error class.",
		}, []string{"class"}),
	}
	reg.MustRegister(m.Records, m.Conflicts, m.LookupSeconds, m.LookupValues, m.ChunkSeconds, m.Retries, m.DeadLetters)
	// Every label value exists at 0 from the start, so that the first dead
	// letter or FAILED record is an increase that rate() sees. MATCHED
	// goes with each kind, the other outcomes with "none".
	for _, k := range pipeline.IdentityKinds {
		m.Records.WithLabelValues(string(pipeline.OutcomeMatched), string(k))
	}
	for _, o := range []pipeline.Outcome{pipeline.OutcomeNotFound, pipeline.OutcomeAmbiguous, pipeline.OutcomeInvalid,
		pipeline.OutcomeFailed} {
		m.Records.WithLabelValues(string(o), "none")
	}
	for _, c := range []string{"undecodable", "permanent", "panic"} {
		m.DeadLetters.WithLabelValues(c)
	}
	return m
}

// ObserveLookup records one look-up query's distinct values; it fits
// PGDirectory.ObserveQuery.
func (m *Metrics) ObserveLookup(kind pipeline.IdentityKind, values int) {
	m.LookupValues.WithLabelValues(string(kind)).Observe(float64(values))
}
