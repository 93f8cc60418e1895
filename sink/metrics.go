package sink

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/groupmatch/groupmatch/pipeline"
)

// batchLatencyBuckets run from 50 ms to 4 h: an interactive batch finishes in
// under a second, a backfill of millions of records takes hours, and both
// must read true at p99 (a last bucket of 300 s made every backfill "5 min").
var batchLatencyBuckets = []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400}

// finalStatuses are the statuses a batch finishes with (the label values of
// groupmatch_batches_finished_total).
var finalStatuses = []string{"SUCCESS", "PARTIAL_SUCCESS", "FAILED"}

// deadLetterClasses are the sink's dead-letter classes.
var deadLetterClasses = []string{"undecodable", "orphan", "permanent", "panic"}

// Metrics are the sink's Prometheus metrics. Labels are bounded sets:
// outcomes, statuses and error classes.
type Metrics struct {
	Records       *prometheus.CounterVec // by outcome
	Duplicates    prometheus.Counter
	ChunkSeconds  prometheus.Histogram
	Finished      *prometheus.CounterVec // by status
	BatchLatency  prometheus.Histogram
	Retries       prometheus.Counter
	DeadLetters   *prometheus.CounterVec // by class
	PendingWaits  prometheus.Counter
	DroppedRecord prometheus.Counter
	// TimedOut and TimedOutRecords count the batches the Deadline finished
	// and their records counted failed with reason TIMED_OUT.
	TimedOut        prometheus.Counter
	TimedOutRecords prometheus.Counter
	// PendingStored and LateMatches count the pending bindings kept and
	// the late matches applied (SPEC §13); the Pruner's PruneMetrics
	// count the expired ones and estimate how many wait.
	PendingStored prometheus.Counter
	LateMatches   prometheus.Counter
}

// NewMetrics registers the sink's metrics on reg, labelled stage="sink",
// with every outcome, final status and dead-letter class at 0.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": "sink"}, reg)
	m := &Metrics{
		Records: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_sink_records_total",
			Help: "Records whose outcome the sink recorded, by outcome (MATCHED records were applied to groups).",
		}, []string{"outcome"}),
		Duplicates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_sink_duplicate_records_total",
			Help: "Redelivered records the ledger had already applied.",
		}),
		ChunkSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_sink_chunk_duration_seconds",
			Help:    "Time to apply one chunk in PostgreSQL, retries included.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
		}),
		Finished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_batches_finished_total",
			Help: "Batches that reached a final status, by status.",
		}, []string{"status"}),
		BatchLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "groupmatch_batch_latency_seconds",
			Help:    "Time from a batch's acceptance to its final status.",
			Buckets: batchLatencyBuckets,
		}),
		Retries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_retries_total",
			Help: "Transient failures that were retried.",
		}),
		DeadLetters: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "groupmatch_dlq_messages_total",
			Help: "Messages sent to the dead-letter topic, by error class.",
		}, []string{"class"}),
		PendingWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_sink_pending_batch_waits_total",
			Help: "Chunks that waited for ingest to accept their batch.",
		}),
		DroppedRecord: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_sink_aborted_records_total",
			Help: "Records of batches whose acceptance failed; never applied.",
		}),
		TimedOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_batches_timed_out_total",
			Help: "Batches finished by the batch deadline while still PROCESSING.",
		}),
		TimedOutRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_records_timed_out_total",
			Help: "Records without an outcome at their batch's deadline, counted failed (TIMED_OUT).",
		}),
		PendingStored: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_pending_bindings_stored_total",
			Help: "NOT_FOUND records of deferring batches kept as pending bindings.",
		}),
		LateMatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "groupmatch_late_matches_total",
			Help: "Pending bindings applied late, at their record's original position, once their customer was found.",
		}),
	}
	reg.MustRegister(m.Records, m.Duplicates, m.ChunkSeconds, m.Finished, m.BatchLatency,
		m.Retries, m.DeadLetters, m.PendingWaits, m.DroppedRecord, m.TimedOut, m.TimedOutRecords,
		m.PendingStored, m.LateMatches)
	// Every label value exists at 0 from the start, so that the first
	// FAILED batch or dead letter is an increase that rate() sees.
	for _, o := range []pipeline.Outcome{pipeline.OutcomeMatched, pipeline.OutcomeNotFound, pipeline.OutcomeAmbiguous,
		pipeline.OutcomeInvalid, pipeline.OutcomeFailed} {
		m.Records.WithLabelValues(string(o))
	}
	for _, s := range finalStatuses {
		m.Finished.WithLabelValues(s)
	}
	for _, c := range deadLetterClasses {
		m.DeadLetters.WithLabelValues(c)
	}
	return m
}
