package bench

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// Config is what Run measures and how. Start from DefaultConfig: each
// field's default is the value DefaultConfig gives it (and the default of
// the `groupmatch bench` flag named in brackets); the zero Config is not
// valid.
type Config struct {
	// Workload is the big tenant's workload; fields left zero take
	// Workload.WithDefaults's values. Default: 1,000,000 customers,
	// 2,000,000 records in requests of 500, DefaultMix, match rate 0.92,
	// delete share 0.1, 2 groups per record of 20, seed 1.
	Workload Workload
	// Via is "http" (the batchAdd API) or "kafka" (the requests topic).
	// Default "http". [--via]
	Via string
	// Target is the base URL of a running system's ingest; empty (the
	// default) starts the system. With a Target, DatabaseURL,
	// KafkaBrokers and KafkaSecurity name its database and Kafka. [--target]
	Target string
	// Single starts the system as one dev process instead of one process
	// per stage. Default false. [--single]
	Single bool
	// Clients is the number of concurrent HTTP clients or Kafka
	// publishers. Default 8. [--clients]
	Clients int
	// Rate is the offered load in records/s; 0 (the default) offers as fast
	// as the system accepts. [--rate]
	Rate float64
	// Pipeline drives the workload through the pipeline; false with
	// Baseline measures the baseline alone. Default true. [--pipeline]
	Pipeline bool
	// Backlog starts matcher and sink only once ingest has accepted every
	// record (separate processes only). Default false. [--backlog]
	Backlog bool
	// Stage, when "matcher", measures that stage alone: it starts once
	// ingest has put every record into Kafka; the sink never runs.
	// Default "" (the whole pipeline). [--stage]
	Stage string
	// Instances is the number of processes of Stage. Default 1. [--instances]
	Instances int
	// Baseline also applies the workload with plain PostgreSQL, in schema
	// bench_baseline. Default false. [--baseline]
	Baseline bool
	// BaselineWorkers is the number of transactions the baseline runs at
	// once. Default 2. [--baseline-workers]
	BaselineWorkers int
	// BaselineChunk is the number of records per baseline transaction,
	// rounded to whole requests. Default 20000. [--baseline-chunk]
	BaselineChunk int
	// JSONPath, if set, receives the full report as JSON. Default "". [--json]
	JSONPath string
	// Pprof starts the stages with --pprof. Default false; implied by
	// ProfileDir. [--pprof]
	Pprof bool
	// ProfileDir, if set, receives a CPU profile of every stage process
	// taken mid-run and its heap right after and at the end. Default "".
	// [--profile]
	ProfileDir string
	// ProfileDuration is the length of the CPU profiles. Default 20 s.
	// [--profile-duration]
	ProfileDuration time.Duration
	// BenchDatabase is the database a self-started system uses, on the
	// server of DatabaseURL; dropped and created again every run. Default
	// "groupmatch_bench". [--bench-database]
	BenchDatabase string
	// WorkDir is the folder of the processes' logs and the broker's data;
	// default "", a temporary folder removed after a successful run. [--work]
	WorkDir string
	// Load loads the directory; with a Target, false reuses the tenant's
	// directory of an earlier run. Default true. [--load]
	Load bool
	// Tenant owns the directory and the batches. Default "bench". [--tenant]
	Tenant string
	// Timeout bounds the whole run. Default 1 h. [--timeout]
	Timeout time.Duration
	// Stall ends the run when no record is accepted or applied for this
	// long. Default 2 min. [--stall]
	Stall time.Duration

	// Neighbour runs the noisy neighbour: while the backlog drains, a
	// second tenant sends a small batch every NeighbourInterval. Default
	// false. [--neighbour]
	Neighbour bool
	// NeighbourTenant is the tenant of the small batches; it must differ
	// from Tenant. Default "bench-neighbour". [--neighbour-tenant]
	NeighbourTenant string
	// NeighbourInterval is the time between two neighbour batches.
	// Default 1 s. [--neighbour-interval]
	NeighbourInterval time.Duration
	// NeighbourBatch is the number of records per neighbour batch, 1 to
	// 500. Default 10. [--neighbour-batch]
	NeighbourBatch int
	// NeighbourCustomers is the size of the neighbour's directory.
	// Default 1000. [--neighbour-customers]
	NeighbourCustomers int
	// TenantRate is the per-tenant records quota of a self-started ingest,
	// records/s, given to the stages as TENANT_RATE; 0 (the default) is off.
	// [--tenant-rate]
	TenantRate float64

	// DatabaseURL is the PostgreSQL server (self-started system) or
	// database (Target). Required. [--database-url]
	DatabaseURL string
	// DBMaxConns is the largest connection pool of each stage process.
	// Default 8. [--db-max-conns]
	DBMaxConns int
	// KafkaBrokers are a Target's Kafka bootstrap brokers; a self-started
	// system has its own broker. [--kafka-brokers]
	KafkaBrokers []string
	// KafkaSecurity is how to reach a Target's Kafka; nil (the default) is
	// plaintext. A self-started system's broker is always plaintext.
	KafkaSecurity *stream.Security
	// TopicPrefix is the stages' --topic-prefix. Default "groupmatch.".
	// [--topic-prefix]
	TopicPrefix string
	// Topics are the topic names under TopicPrefix.
	Topics pipeline.Topics
	// TopicSpecs are the topics a self-started system creates.
	TopicSpecs []stream.TopicSpec
	// Rematch, when positive, measures the re-matcher instead of the
	// pipeline (RunRematchBench): this many pending bindings, then a
	// directory load of Workload.Customers with publishing, drained by a
	// re-matcher. Default 0 (off). [--rematch]
	Rematch int
	// RematchGroup is the re-matcher's consumer group in that mode.
	// Default "groupmatch-rematcher".
	RematchGroup string
	// MatcherGroup is the matcher's consumer group, whose commits Stage
	// "matcher" counts. Default "groupmatch-matcher".
	MatcherGroup string
	// Partitions of the records and resolved topics of a self-started
	// system's broker. Default 8. [--partitions]
	Partitions int
	// MatcherChunk, MatcherConsumers, SinkChunk and SinkConsumers are
	// given to a self-started system's stages (MATCHER_CHUNK,
	// MATCHER_CONSUMERS, SINK_CHUNK, SINK_CONSUMERS) and reported. No
	// default here: the stages' defaults (matcher.DefaultMaxChunk,
	// matcher.DefaultConsumers, sink.DefaultMaxChunk,
	// sink.DefaultConsumers) are what cmd/groupmatch's flags default to,
	// and bench does not import sink, whose tests import bench.
	// [--matcher-chunk, --matcher-consumers, --sink-chunk, --sink-consumers]
	MatcherChunk, MatcherConsumers, SinkChunk, SinkConsumers int

	// Executable is the groupmatch binary whose subcommands (broker,
	// ingest, matcher, sink, dev) a self-started system runs. Required
	// unless Target is set; cmd/groupmatch gives its own os.Executable.
	Executable string
	// StopGrace is how long a stage process may take to exit after
	// SIGTERM before it is killed. Default 15 s (the stages' shutdown
	// timeout and 5 s); zero means the default.
	StopGrace time.Duration
	// Log receives the progress lines and notes of the run. Default
	// io.Discard; nil means the default.
	Log io.Writer
}

// DefaultConfig returns the defaults each field of Config names.
func DefaultConfig() Config {
	return Config{
		Workload: Workload{Customers: 1000000, Records: 2000000, BatchSize: 500, Mix: DefaultMix,
			MatchRate: 0.92, DeleteShare: 0.1, Groups: 2, GroupNames: 20, Seed: 1},
		Via: "http", Clients: 8, Pipeline: true, Instances: 1,
		BaselineWorkers: 2, BaselineChunk: 20000, ProfileDuration: 20 * time.Second,
		BenchDatabase: "groupmatch_bench", Load: true, Tenant: "bench", Timeout: time.Hour, Stall: 2 * time.Minute,
		NeighbourTenant: "bench-neighbour", NeighbourInterval: time.Second, NeighbourBatch: 10, NeighbourCustomers: 1000,
		DBMaxConns: 8, KafkaBrokers: []string{"127.0.0.1:9092"}, TopicPrefix: "groupmatch.",
		Topics: pipeline.Topics{Requests: "groupmatch.requests", Records: "groupmatch.records",
			Resolved: "groupmatch.resolved", Events: "groupmatch.events", DLQ: "groupmatch.dlq",
			Directory: "groupmatch.directory"},
		MatcherGroup: "groupmatch-matcher", RematchGroup: "groupmatch-rematcher", Partitions: 8,
		StopGrace: 15 * time.Second, Log: io.Discard,
	}
}

// stageMatcher and the others name the stages as the groupmatch binary's
// subcommands do.
const (
	stageIngest  = "ingest"
	stageMatcher = "matcher"
	stageSink    = "sink"
)

// Validate reports the first setting that is out of range or contradicts
// another, naming the `groupmatch bench` flags at fault.
func (c Config) Validate() error {
	w := c.Workload.WithDefaults()
	if err := w.Validate(); err != nil {
		return err
	}
	switch {
	case c.Via != "http" && c.Via != "kafka":
		return errors.New("bench: --via must be http or kafka")
	case !c.Pipeline && !c.Baseline:
		return errors.New("bench: nothing to do: --pipeline=false without --baseline")
	case c.Target != "" && c.Single:
		return errors.New("bench: --target and --single exclude each other")
	case c.Backlog && (c.Target != "" || c.Single):
		return errors.New("bench: --backlog needs the stages as separate processes (no --target, no --single)")
	case c.Stage != "" && c.Stage != stageMatcher:
		return errors.New("bench: --stage must be matcher")
	case c.Stage != "" && (c.Target != "" || c.Single || c.Baseline):
		return errors.New("bench: --stage needs the stages as separate processes and excludes --baseline (no --target, no --single)")
	case c.Instances < 1:
		return errors.New("bench: --instances must be at least 1")
	case c.Neighbour && (c.Backlog || c.Stage != "" || !c.Pipeline):
		return errors.New("bench: --neighbour needs the pipeline draining while it sends (no --backlog, no --stage, no --pipeline=false)")
	case c.Neighbour && (c.NeighbourInterval <= 0 || c.NeighbourBatch < 1 || c.NeighbourBatch > 500):
		return errors.New("bench: --neighbour-interval must be positive and --neighbour-batch 1 to 500")
	case c.Neighbour && c.NeighbourTenant == c.Tenant:
		return errors.New("bench: --neighbour-tenant must differ from --tenant")
	case c.TenantRate < 0:
		return errors.New("bench: --tenant-rate must be at least 0")
	case c.TenantRate > 0 && c.Target != "":
		return errors.New("bench: --tenant-rate configures a self-started ingest; a --target has its own")
	case c.DatabaseURL == "":
		return errors.New("bench: --database-url is required")
	case c.Target == "" && c.Executable == "":
		return errors.New("bench: no groupmatch executable to start the system with")
	}
	if c.Neighbour {
		if err := c.neighbourWorkload(w).Validate(); err != nil {
			return fmt.Errorf("%w (of the neighbour)", err)
		}
	}
	return nil
}

// StageEnv is the environment Run gives the stage processes it starts on
// top of its own: the per-tenant records quota, as the stages read it
// (TENANT_RATE; "0" is off).
func (c Config) StageEnv() []string {
	return []string{"TENANT_RATE=" + strconv.FormatFloat(c.TenantRate, 'g', -1, 64)}
}

// plaintextKafkaEnv clears the Kafka security settings a self-started
// system's processes would inherit: its broker is the plaintext in-process
// one. (An empty variable counts as unset.)
func plaintextKafkaEnv() []string {
	return []string{"KAFKA_SASL_MECHANISM=", "KAFKA_SASL_USERNAME=", "KAFKA_SASL_PASSWORD=", "KAFKA_SASL_PASSWORD_FILE=",
		"KAFKA_TLS=", "KAFKA_TLS_CA_FILE=", "KAFKA_TLS_CERT_FILE=", "KAFKA_TLS_KEY_FILE="}
}
