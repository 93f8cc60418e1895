package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/tracelog"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

// dlqReplayGroup is the consumer group operators read the dead-letter topic
// with (docs/operations.md). Its lag on the DLQ is the number of dead
// letters nobody has looked at yet: the "DLQ not empty" alert.
const dlqReplayGroup = "groupmatch-dlq-replay"

// scrapeTimeout bounds the PostgreSQL and Kafka round trips of one scrape.
const scrapeTimeout = 3 * time.Second

// lagOfOtherStages are the subscriptions of the pipeline's consumer groups
// whose stages this process does not run: the ingest feed's group on the
// requests topic, the matcher's on records, the re-matcher's on directory
// (it runs in matcher processes), the sink's on resolved and the DLQ replay
// group on the dead-letter topic. A process reports their lag
// too, from committed offsets, so that a group whose members are all down
// (the case that matters most) keeps its lag series as long as any
// groupmatch process runs.
func lagOfOtherStages(o *options, stages []string) []stream.LagTarget {
	t := o.topics()
	all := []struct {
		stage  string
		target stream.LagTarget
	}{
		{stageIngest, stream.LagTarget{Group: o.groupID(stageIngest), Topic: t.Requests}},
		{stageMatcher, stream.LagTarget{Group: o.groupID(stageMatcher), Topic: t.Records}},
		{stageMatcher, stream.LagTarget{Group: o.groupID(rematcher), Topic: t.Directory}},
		{stageSink, stream.LagTarget{Group: o.groupID(stageSink), Topic: t.Resolved}},
		{stageSink, stream.LagTarget{Group: dlqReplayGroup, Topic: t.DLQ}},
	}
	var out []stream.LagTarget
	for _, a := range all {
		if !slices.Contains(stages, a.stage) {
			out = append(out, a.target)
		}
	}
	return out
}

// observeStage registers a stage's operational metrics on reg, labelled
// stage=<stage>: the kafka-go statistics of its consumers (members of one
// group, if any) and writers, the consumer group's lag per partition (and
// that of otherLag, the groups of stages the process does not run), and for
// the sink the batches in flight and the dead-letter backlog. It also sends
// the writers' errors (topic, partition, attempt, error; never message
// contents) to log at warn. Call it before the stage runs. The collectors'
// Kafka connections are released when ctx is done.
func observeStage(ctx context.Context, reg prometheus.Registerer, o *options, sec *stream.Security, pool *pgxpool.Pool, log *slog.Logger,
	stage string, otherLag []stream.LagTarget, consumers []*stream.Consumer, writers ...*kafka.Writer) {
	reg = prometheus.WrapRegistererWith(prometheus.Labels{"stage": stage}, reg)
	stats := stream.NewStatsCollector()
	var targets []stream.LagTarget
	for i, c := range consumers {
		stats.AddReader(c)
		if i == 0 {
			targets = append(targets, stream.LagTarget{Group: c.GroupID(), Topic: c.Topic()})
		}
	}
	for _, w := range writers {
		topic := w.Topic
		if topic == "" { // events per tenant: each message names its topic
			topic = o.topics().Events + ".*"
			stats.AddWriter(labelledWriter{w, topic})
		} else {
			stats.AddWriter(w)
		}
		if w.ErrorLogger == nil { // set before the stage runs: no writer is in use yet
			wlog := log.With("stage", stage, "component", "kafka-writer", "topic", topic)
			w.ErrorLogger = kafka.LoggerFunc(func(msg string, args ...any) { wlog.Warn(fmt.Sprintf(msg, args...)) })
		}
	}
	reg.MustRegister(stats)
	if stage == stageSink {
		targets = append(targets, stream.LagTarget{Group: dlqReplayGroup, Topic: o.topics().DLQ})
		reg.MustRegister(sink.NewBatchCollector(pool, log))
	}
	targets = append(targets, otherLag...)
	if len(targets) == 0 {
		return
	}
	lag, err := stream.NewLagCollector(stream.LagConfig{Brokers: o.brokerList(), Security: sec, Targets: targets, Timeout: scrapeTimeout,
		Logger: log.With("stage", stage)})
	if err != nil { // cannot happen: the targets come from a valid consumer
		log.Error("consumer lag not reported", "stage", stage, "err", err)
		return
	}
	reg.MustRegister(lag)
	context.AfterFunc(ctx, lag.Close)
}

// labelledWriter reports the statistics of a writer whose messages name
// their own topics under one topic label, so that tenants' topics add no
// series.
type labelledWriter struct {
	w     *kafka.Writer
	topic string
}

func (l labelledWriter) Stats() kafka.WriterStats {
	s := l.w.Stats()
	s.Topic = l.topic
	return s
}

// sqlObserver is told of the statements a pool sends (tests collect them:
// schematest.StatementLog).
type sqlObserver interface {
	pgx.QueryTracer
	pgx.BatchTracer
}

// teeTracer is pgxTracer's TraceLog that also tells also of every query and
// batch query; its other tracing (connect, copy, prepare, acquire) is the
// TraceLog's alone.
type teeTracer struct {
	*tracelog.TraceLog
	also sqlObserver
}

func (t teeTracer) TraceQueryStart(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	return t.also.TraceQueryStart(t.TraceLog.TraceQueryStart(ctx, c, d), c, d)
}

func (t teeTracer) TraceQueryEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceQueryEndData) {
	t.also.TraceQueryEnd(ctx, c, d)
	t.TraceLog.TraceQueryEnd(ctx, c, d)
}

func (t teeTracer) TraceBatchStart(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchStartData) context.Context {
	return t.also.TraceBatchStart(t.TraceLog.TraceBatchStart(ctx, c, d), c, d)
}

func (t teeTracer) TraceBatchQuery(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchQueryData) {
	t.also.TraceBatchQuery(ctx, c, d)
	t.TraceLog.TraceBatchQuery(ctx, c, d)
}

func (t teeTracer) TraceBatchEnd(ctx context.Context, c *pgx.Conn, d pgx.TraceBatchEndData) {
	t.also.TraceBatchEnd(ctx, c, d)
	t.TraceLog.TraceBatchEnd(ctx, c, d)
}

// stagesTracer is pgxTracer, teed to also when it is set.
func stagesTracer(log *slog.Logger, also sqlObserver) pgx.QueryTracer {
	t := pgxTracer(log)
	if also == nil {
		return t
	}
	return teeTracer{TraceLog: t, also: also}
}

// pgxTracer bridges pgx's tracing into log. Only failures are logged: at
// warn, at info for serialization failures and deadlocks (the stages retry
// them), at debug when the caller's context ended (shutdown) and for a pool
// acquire that failed because its connect failed (logged once, as the
// connect). Statements
// that succeed are not logged. Query arguments never are: they carry
// identity values; errors read as redact.Error gives them.
func pgxTracer(log *slog.Logger) *tracelog.TraceLog {
	log = log.With("component", "pgx")
	return &tracelog.TraceLog{
		LogLevel: tracelog.LogLevelError,
		Logger: tracelog.LoggerFunc(func(ctx context.Context, _ tracelog.LogLevel, msg string, data map[string]any) {
			err, _ := data["err"].(error)
			level := slog.LevelWarn
			var pgErr *pgconn.PgError
			var connectErr *pgconn.ConnectError
			switch {
			case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil:
				level = slog.LevelDebug
			case msg == "Acquire" && errors.As(err, &connectErr):
				level = slog.LevelDebug // the failed connect was logged already
			case errors.As(err, &pgErr) && (pgErr.Code == "40001" || pgErr.Code == "40P01"):
				level = slog.LevelInfo
			}
			if !log.Enabled(ctx, level) {
				return
			}
			attrs := []any{"op", msg}
			if sql, ok := data["sql"].(string); ok {
				attrs = append(attrs, "sql", shortSQL(sql))
			}
			if d, ok := data["time"].(time.Duration); ok {
				attrs = append(attrs, "duration_s", d.Seconds())
			}
			if pid, ok := data["pid"]; ok {
				attrs = append(attrs, "pid", pid)
			}
			if err != nil {
				attrs = append(attrs, "err", redact.Error(err))
			}
			log.Log(ctx, level, "postgres: "+strings.ToLower(msg)+" failed", attrs...)
		}),
	}
}

// shortSQL is a statement's text on one line, at most 200 bytes. groupmatch's
// statements carry values only as parameters, so their text holds none.
func shortSQL(sql string) string {
	sql = strings.Join(strings.Fields(sql), " ")
	if len(sql) > 200 {
		sql = sql[:200] + "…"
	}
	return sql
}
