package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/groupmatch/groupmatch/bench"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/sink"
)

// benchFlags are the settings of `groupmatch bench`: a bench.Config, the
// options shared with the other commands, and --mix as given.
type benchFlags struct {
	o   options
	cfg bench.Config
	mix string
}

const benchSynopsis = `bench [--customers N] [--records N] [--via http|kafka] [--target URL | --single] [--rate R] [--baseline] [--json FILE]

Generates a directory and a workload of batchAdd requests, drives them through
a system and reports ingest and end-to-end throughput, batch latency and the
CPU and memory of every process; with --baseline it also applies the same
workload with plain PostgreSQL (COPY + set-based SQL) and reports
pipeline/baseline. Without --target it starts the system itself, each stage as
a separate process of this binary (broker, ingest, matcher, sink) or, with
--single, all in one dev process, on a fresh database --bench-database on the
server --database-url names (dropped and created again every run).
See docs/performance.md.`

// register registers the flags of `groupmatch bench`; they default to
// bench.DefaultConfig (hence f.cfg is set to it first).
func (f *benchFlags) register(fs *flag.FlagSet) {
	f.cfg = bench.DefaultConfig()
	f.o.addKafka(fs)
	f.o.addGroups(fs)
	f.o.addDatabase(fs)
	f.o.addPartitions(fs)
	fs.IntVar(&f.o.matcherChunk, "matcher-chunk", matcher.DefaultMaxChunk, "most records the matcher resolves together, for a self-started system (MATCHER_CHUNK)")
	fs.IntVar(&f.o.matcherConsumers, "matcher-consumers", matcher.DefaultConsumers, "consumer-group members per matcher process, for a self-started system (MATCHER_CONSUMERS)")
	fs.IntVar(&f.o.sinkConsumers, "sink-consumers", sink.DefaultConsumers, "consumer-group members per sink process, for a self-started system (SINK_CONSUMERS)")
	fs.IntVar(&f.o.sinkChunk, "sink-chunk", sink.DefaultMaxChunk, "most records the sink applies in one transaction, for a self-started system (SINK_CHUNK)")
	fs.IntVar(&f.cfg.Workload.Customers, "customers", 1000000, "customers in the generated directory (BENCH_CUSTOMERS)")
	fs.IntVar(&f.cfg.Workload.Records, "records", 2000000, "records to import in all (BENCH_RECORDS)")
	fs.IntVar(&f.cfg.Workload.BatchSize, "batch-size", 500, "records per batchAdd request, at most 500 (BENCH_BATCH_SIZE)")
	fs.StringVar(&f.mix, "mix", bench.DefaultMix.String(), "weights of the batch kinds: exact by phone, id, openid, unionid; fuzzy (identifyWay 1, every identifier) and fuzzy2 (identifyWay 2, thirdId and phone) (BENCH_MIX)")
	fs.Float64Var(&f.cfg.Workload.MatchRate, "match-rate", 0.92, "share of records naming a customer of the directory; the rest name nobody (BENCH_MATCH_RATE)")
	fs.Float64Var(&f.cfg.Workload.DeleteShare, "delete-share", 0.1, "share of batches with optType delete (BENCH_DELETE_SHARE)")
	fs.IntVar(&f.cfg.Workload.Groups, "groups", 2, "group names per record (BENCH_GROUPS)")
	fs.IntVar(&f.cfg.Workload.GroupNames, "group-names", 20, "distinct group names in the workload (BENCH_GROUP_NAMES)")
	fs.Uint64Var(&f.cfg.Workload.Seed, "seed", uint64(1), "seed of the workload; the same seed makes the same requests (BENCH_SEED)")
	fs.StringVar(&f.cfg.Via, "via", "http", "http (the batchAdd API) or kafka (the requests topic) (BENCH_VIA)")
	fs.StringVar(&f.cfg.Target, "target", "", "base URL of a running system's ingest, e.g. http://127.0.0.1:8080; --database-url and --kafka-brokers then name its database and Kafka (BENCH_TARGET)")
	fs.BoolVar(&f.cfg.Single, "single", false, "start the system as one dev process instead of one process per stage (BENCH_SINGLE)")
	fs.IntVar(&f.cfg.Clients, "clients", 8, "concurrent HTTP clients, or Kafka publishers (BENCH_CLIENTS)")
	fs.Float64Var(&f.cfg.Rate, "rate", 0, "offered load in records per second; 0 offers as fast as the system accepts (BENCH_RATE)")
	fs.BoolVar(&f.cfg.Backlog, "backlog", false, "start matcher and sink only once ingest has accepted every record: measures ingest alone, then the drain of the whole backlog (separate processes only) (BENCH_BACKLOG)")
	fs.StringVar(&f.cfg.Stage, "stage", "", "measure this stage alone: \"matcher\" starts it only once ingest has put every record into Kafka, and ends when it has resolved them all; the sink never runs (BENCH_STAGE)")
	fs.IntVar(&f.cfg.Instances, "instances", 1, "processes of the stage --stage measures (BENCH_INSTANCES)")
	fs.BoolVar(&f.cfg.Pipeline, "pipeline", true, "drive the workload through the pipeline; false with --baseline measures the baseline alone (BENCH_PIPELINE)")
	fs.BoolVar(&f.cfg.Baseline, "baseline", false, "also apply the workload with plain PostgreSQL, in schema bench_baseline, and report pipeline/baseline (BENCH_BASELINE)")
	fs.IntVar(&f.cfg.BaselineWorkers, "baseline-workers", 2, "transactions the baseline runs at once (BENCH_BASELINE_WORKERS)")
	fs.IntVar(&f.cfg.BaselineChunk, "baseline-chunk", 20000, "records per baseline transaction, rounded to whole requests (BENCH_BASELINE_CHUNK)")
	fs.StringVar(&f.cfg.JSONPath, "json", "", "write the full report as JSON to this file (BENCH_JSON)")
	fs.BoolVar(&f.cfg.Pprof, "pprof", false, "start the stages with --pprof (PPROF)")
	fs.StringVar(&f.cfg.ProfileDir, "profile", "", "write a CPU profile of every stage process taken mid-run, its heap right after and at the end, to this folder; implies --pprof (BENCH_PROFILE)")
	fs.DurationVar(&f.cfg.ProfileDuration, "profile-duration", 20*time.Second, "length of the CPU profiles (BENCH_PROFILE_DURATION)")
	fs.StringVar(&f.cfg.BenchDatabase, "bench-database", "groupmatch_bench", "database a self-started system uses, on the server of --database-url; dropped and created again every run (BENCH_DATABASE)")
	fs.StringVar(&f.cfg.WorkDir, "work", "", "folder for the processes' logs and the broker's data; default a temporary folder, removed after a successful run (BENCH_WORK)")
	fs.BoolVar(&f.cfg.Load, "load", true, "load the directory; with --target, false reuses the tenant's directory of an earlier run (BENCH_LOAD)")
	fs.StringVar(&f.cfg.Tenant, "tenant", "bench", "tenant the directory and the batches belong to (BENCH_TENANT)")
	fs.DurationVar(&f.cfg.Timeout, "timeout", time.Hour, "give up when the run takes longer (BENCH_TIMEOUT)")
	fs.IntVar(&f.cfg.Rematch, "rematch", 0, "measure the re-matcher instead: this many pending bindings, then a directory load of --customers with publishing, drained by a re-matcher; see docs/performance.md (BENCH_REMATCH)")
	fs.DurationVar(&f.cfg.Stall, "stall", 2*time.Minute, "give up when no record is accepted or applied for this long (BENCH_STALL)")
	fs.BoolVar(&f.cfg.Neighbour, "neighbour", false, "noisy neighbour: while the workload's backlog drains, a second tenant with its own application and directory sends a small batch every --neighbour-interval; reports that tenant's batch latency, accept → final (BENCH_NEIGHBOUR)")
	fs.StringVar(&f.cfg.NeighbourTenant, "neighbour-tenant", "bench-neighbour", "tenant of the small batches (BENCH_NEIGHBOUR_TENANT)")
	fs.DurationVar(&f.cfg.NeighbourInterval, "neighbour-interval", time.Second, "time between two of the neighbour's batches (BENCH_NEIGHBOUR_INTERVAL)")
	fs.IntVar(&f.cfg.NeighbourBatch, "neighbour-batch", 10, "records per neighbour batch (BENCH_NEIGHBOUR_BATCH)")
	fs.IntVar(&f.cfg.NeighbourCustomers, "neighbour-customers", 1000, "customers in the neighbour's directory (BENCH_NEIGHBOUR_CUSTOMERS)")
	fs.Float64Var(&f.cfg.TenantRate, "tenant-rate", 0, "per-tenant records quota of a self-started ingest, records/s, passed to the processes as TENANT_RATE; 0 is off (TENANT_RATE)")
}

// config turns the parsed flags and environment into a bench.Config.
func (f *benchFlags) config(stderr io.Writer) (bench.Config, error) {
	cfg := f.cfg
	mix, err := bench.ParseMix(f.mix)
	if err != nil {
		return cfg, err
	}
	cfg.Workload.Mix = mix
	o := &f.o
	cfg.DatabaseURL, cfg.DBMaxConns = o.databaseURL, o.dbMaxConns
	cfg.KafkaBrokers, cfg.TopicPrefix, cfg.Topics = o.brokerList(), o.topicPrefix, o.topics()
	cfg.TopicSpecs = topicSpecs(o, topicSettings{replication: 1})
	cfg.MatcherGroup, cfg.RematchGroup = o.groupID(stageMatcher), o.groupID(rematcher)
	cfg.Partitions, cfg.MatcherChunk, cfg.MatcherConsumers, cfg.SinkChunk = o.partitions, o.matcherChunk, o.matcherConsumers, o.sinkChunk
	cfg.SinkConsumers = o.sinkConsumers
	cfg.StopGrace = shutdownTimeout + 5*time.Second
	cfg.Log = stderr
	if cfg.Target != "" {
		// Only a running system's Kafka is reached with the security
		// flags: bench's own broker is plaintext.
		if cfg.KafkaSecurity, err = o.security(); err != nil {
			return cfg, err
		}
	} else {
		if cfg.Executable, err = os.Executable(); err != nil {
			return cfg, fmt.Errorf("bench: %w", err)
		}
	}
	return cfg, nil
}

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f benchFlags
	fs := newFlagSet(benchSynopsis, stderr)
	f.register(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	cfg, err := f.config(stderr)
	if err != nil {
		return err
	}
	if cfg.Rematch > 0 {
		_, err = bench.RunRematchBench(ctx, cfg, stdout)
		return err
	}
	_, err = bench.Run(ctx, cfg, stdout)
	return err
}
