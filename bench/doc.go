// Package bench is groupmatch's benchmark: a reproducible workload of
// batchAdd requests over matchertest's Big directory, drivers that offer it
// to a system over HTTP or the requests topic, the set-up of a system to
// measure (a fresh database, and the stages started as child processes of
// the groupmatch binary through package supervise), the measurement loop
// with its read-outs of throughput, batch latency, per-process cost, the
// stages' metrics and pprof profiles, the noisy-neighbour and single-stage
// modes, a plain-PostgreSQL baseline applying the same workload, and the
// report. Run is the entry point; `groupmatch bench` (cmd/groupmatch) only
// turns its flags and environment into a Config. See docs/performance.md.
//
// What bench must never do:
//   - be part of the serving path: no stage (ingest, matcher, sink) and no
//     package a stage imports may import bench; bench may import them
//     (it loads directories with matcher's loader, reads their defaults);
//   - run a stage in its own process: it measures the stages as the
//     processes they are in production, and itself as the load generator;
//   - log or report an identity value: the report holds counts, rates and
//     durations only;
//   - touch a database it was not named: a self-started system gets the
//     database Config.BenchDatabase, dropped and created again every run.
package bench
