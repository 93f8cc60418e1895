package matcher

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/pipeline"
)

// RematchMetrics are the re-matcher's Prometheus metrics, labelled
// stage="rematcher". Labels are bounded: message type, outcome, identity
// kind and error class; never a tenant or an identity. The directory
// topic's lag is reported with the other consumer groups' (the
// groupmatch_kafka_consumer_lag series of the rematcher's group).
type RematchMetrics struct {
	Messages     *prometheus.CounterVec // directory messages consumed, by type
	Rechecks     *prometheus.CounterVec // bindings resolved again, by outcome
	LateMatches  *prometheus.CounterVec // late MATCHED verdicts written, by matched_by
	ChunkSeconds prometheus.Histogram
	Retries      prometheus.Counter
	DeadLetters  *prometheus.CounterVec // by class
}

// NewRematchMetrics registers the re-matcher's metrics on reg with every
// label value at 0.
func NewRematchMetrics(reg prometheus.Registerer) *RematchMetrics {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": "rematcher"}, reg)
	m := &RematchMetrics{
		Messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_rematcher_directory_messages_total",
			Help: "Directory messages consumed, by type (identity, recheck).",
		}, []string{"type"}),
		Rechecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_rematcher_rechecks_total",
			Help: "Pending bindings resolved again, by outcome; only MATCHED ones are applied, the others stay pending.",
		}, []string{"outcome"}),
		LateMatches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_rematcher_late_matches_total",
			Help: "Late MATCHED verdicts written to the resolved topic, by the identifier that matched (redeliveries count again; the sink applies each once).",
		}, []string{"matched_by"}),
		ChunkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_rematcher_chunk_duration_seconds",
			Help:    "Time to re-resolve and forward one chunk of directory messages, retries included.",
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
	reg.MustRegister(m.Messages, m.Rechecks, m.LateMatches, m.ChunkSeconds, m.Retries, m.DeadLetters)
	for _, t := range []string{pipeline.DirectoryIdentity, pipeline.DirectoryRecheck} {
		m.Messages.WithLabelValues(t)
	}
	for _, o := range []pipeline.Outcome{pipeline.OutcomeMatched, pipeline.OutcomeNotFound, pipeline.OutcomeAmbiguous, pipeline.OutcomeInvalid} {
		m.Rechecks.WithLabelValues(string(o))
	}
	for _, k := range pipeline.IdentityKinds {
		m.LateMatches.WithLabelValues(string(k))
	}
	for _, c := range []string{"undecodable", "permanent", "panic"} {
		m.DeadLetters.WithLabelValues(c)
	}
	return m
}

// observe counts one Rematch call's rechecks and late verdicts.
func (m *RematchMetrics) observe(st RematchStats, late []pipeline.ResolvedMessage) {
	for o, n := range st.Rechecked {
		m.Rechecks.WithLabelValues(string(o)).Add(float64(n))
	}
	for _, v := range late {
		m.LateMatches.WithLabelValues(string(v.MatchedBy)).Inc()
	}
}
