package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// Config configures a Stage. Zero values take the documented defaults;
// negative values are refused by Validate.
type Config struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics()
	GroupID string          // consumer group; default DefaultGroupID
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// MaxChunk is the most records applied in one transaction; default
	// DefaultMaxChunk (4000).
	MaxChunk int
	// Linger is how long a chunk waits to fill; default 5 ms (stream's).
	Linger time.Duration
	// Consumers is how many members of the consumer group the stage runs,
	// each applying its own partitions' chunks in its own transactions;
	// default DefaultConsumers (2), so that one writes memberships while
	// another holds its batches' row locks or waits for Kafka. Members
	// beyond the topic's partitions idle.
	Consumers int
	// Retry bounds retries of transient failures; the zero value retries
	// until shutdown.
	Retry  retry.Policy
	Logger *slog.Logger // default: discard
}

// DefaultGroupID is the sink's consumer group unless Config names another.
const DefaultGroupID = "groupmatch-sink"

// Stage is a running sink consumer.
type Stage struct {
	cfg       Config
	store     Store
	consumers []*stream.Consumer
	dlq       *kafka.Writer
	metrics   *Metrics
	log       *slog.Logger
}

// DefaultMaxChunk and DefaultConsumers are Config's defaults;
// cmd/groupmatch's --sink-chunk and --sink-consumers default to them too.
const (
	DefaultMaxChunk  = 4000
	DefaultConsumers = 2
)

// New returns a sink stage applying to store.
func New(cfg Config, store Store, metrics *Metrics) (*Stage, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.GroupID == "" {
		cfg.GroupID = DefaultGroupID
	}
	if cfg.MaxChunk == 0 {
		cfg.MaxChunk = DefaultMaxChunk
	}
	if cfg.Consumers == 0 {
		cfg.Consumers = DefaultConsumers
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("stage", "sink")
	s := &Stage{
		cfg: cfg, store: store, metrics: metrics, log: log,
		dlq: stream.NewWriter(cfg.Brokers, cfg.Topics.DLQ, cfg.Security),
	}
	for range cfg.Consumers {
		c, err := stream.NewConsumer(stream.ConsumerConfig{
			Brokers: cfg.Brokers, GroupID: cfg.GroupID, Topic: cfg.Topics.Resolved, Security: cfg.Security,
			MaxChunk: cfg.MaxChunk, Linger: cfg.Linger, Logger: log,
		})
		if err != nil {
			s.dlq.Close()
			return nil, fmt.Errorf("sink: %w", err)
		}
		s.consumers = append(s.consumers, c)
	}
	return s, nil
}

// Run consumes until ctx is done or a consumer fails, which stops the
// others; see stream.Consumer.Run for shutdown. The members' transactions
// run concurrently: Store.Apply's lock order keeps them from deadlocking,
// and each record's bit in its batch's applied bitmap keeps its effect
// once however the partitions move between members.
func (s *Stage) Run(ctx context.Context) error {
	defer s.dlq.Close()
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range s.consumers {
		g.Go(func() error { return c.Run(gctx, s.handle) })
	}
	return g.Wait()
}

// Consumers exposes the stage's consumers for lag and reader metrics.
func (s *Stage) Consumers() []*stream.Consumer { return s.consumers }

// Writers exposes the stage's producers for writer metrics.
func (s *Stage) Writers() []*kafka.Writer { return []*kafka.Writer{s.dlq} }

type deadLetter struct {
	msg   kafka.Message
	class string
	err   error
}

func (s *Stage) handle(ctx context.Context, msgs []kafka.Message) error {
	start := time.Now()
	recs := make([]pipeline.ResolvedMessage, 0, len(msgs))
	origin := make([]int, 0, len(msgs)) // recs[i] came from msgs[origin[i]]
	var dead []deadLetter
	for i, m := range msgs {
		r, err := pipeline.DecodeResolved(m.Value)
		if err != nil {
			dead = append(dead, deadLetter{m, "undecodable", err})
			// Count the record failed if the message still names it, so
			// its batch can finish.
			if pos, ok := pipeline.PeekPosition(m.Value); ok {
				recs = append(recs, failedRecord(pos, pipeline.ReasonUndecodable))
				origin = append(origin, i)
			}
			continue
		}
		recs = append(recs, r)
		origin = append(origin, i)
	}
	more, err := s.apply(ctx, msgs, recs, origin)
	if err != nil {
		return err
	}
	dead = append(dead, more...)
	if err := s.deadLetter(ctx, dead); err != nil {
		return err
	}
	s.metrics.ChunkSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// apply applies recs with retries. A chunk that fails permanently (an error
// retry.Transient rejects, or a panic of the store) is split in halves until
// the failing record is alone; that record is counted FAILED with reason
// PROCESSING_FAILED and dead-lettered with class "permanent" or "panic", so
// one bad record never stalls the pipeline.
func (s *Stage) apply(ctx context.Context, msgs []kafka.Message, recs []pipeline.ResolvedMessage, origin []int) ([]deadLetter, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	var res ApplyResult
	err := retry.Do(ctx, s.cfg.Retry, func() error {
		return retry.Catch(func() error {
			var err error
			res, err = s.store.Apply(ctx, recs)
			return err
		})
	}, func(err error, wait time.Duration) {
		s.metrics.Retries.Inc()
		if errors.Is(err, ErrBatchPending) {
			s.metrics.PendingWaits.Inc()
			return
		}
		s.log.Warn("apply failed; retrying", "err", redact.Error(err), "wait_s", wait.Seconds(), "records", len(recs))
	})
	if err == nil {
		s.observe(res)
		var dead []deadLetter
		for _, i := range res.Orphans {
			dead = append(dead, deadLetter{msgs[origin[i]], "orphan", redact.Safe("sink: no such batch or record index for the tenant")})
		}
		return dead, nil
	}
	if retry.Transient(err) || ctx.Err() != nil {
		return nil, err // shutting down or out of retry budget: redeliver
	}
	if len(recs) > 1 {
		h := len(recs) / 2
		d1, err := s.apply(ctx, msgs, recs[:h], origin[:h])
		if err != nil {
			return nil, err
		}
		d2, err := s.apply(ctx, msgs, recs[h:], origin[h:])
		return append(d1, d2...), err
	}
	r := recs[0]
	class, attrs := "permanent", []any{"batch_id", r.BatchID, "record_index", r.Index,
		"partition", msgs[origin[0]].Partition, "offset", msgs[origin[0]].Offset, "err", redact.Error(err)}
	var panicErr *retry.PanicError
	if errors.As(err, &panicErr) {
		class, attrs = "panic", append(attrs, "stack", string(panicErr.Stack))
	}
	s.log.Error("record failed permanently; dead-lettering it", attrs...)
	dead := []deadLetter{{msgs[origin[0]], class, err}}
	bare := failedRecord(pipeline.Position{TenantID: r.TenantID, BatchID: r.BatchID, Index: r.Index}, pipeline.ReasonProcessingFailed)
	if r.Outcome == bare.Outcome && r.Reason == bare.Reason && r.Ref == nil {
		return dead, nil // even the bare failure could not be recorded: leave it to the DLQ
	}
	// Record the failure without anything of the record (a FAILED verdict
	// of the matcher may carry the very value PostgreSQL refuses in its
	// ref), so that its batch finishes.
	more, err2 := s.apply(ctx, msgs, []pipeline.ResolvedMessage{bare}, origin)
	return append(dead, more...), err2
}

func (s *Stage) observe(res ApplyResult) {
	for outcome, n := range res.Outcomes {
		s.metrics.Records.WithLabelValues(string(outcome)).Add(float64(n))
	}
	s.metrics.Duplicates.Add(float64(res.Duplicates))
	s.metrics.DroppedRecord.Add(float64(res.Dropped))
	s.metrics.PendingStored.Add(float64(res.PendingStored))
	s.metrics.LateMatches.Add(float64(res.LateMatched))
	for _, f := range res.Finished {
		s.metrics.Finished.WithLabelValues(f.Status).Inc()
		s.metrics.BatchLatency.Observe(f.Latency.Seconds())
		s.log.Info("batch finished", f.LogAttrs()...)
	}
}

func (s *Stage) deadLetter(ctx context.Context, dead []deadLetter) error {
	if len(dead) == 0 {
		return nil
	}
	out := make([]kafka.Message, len(dead))
	for i, d := range dead {
		out[i] = stream.DeadLetter(d.msg, "sink", d.class, d.err)
		s.metrics.DeadLetters.WithLabelValues(d.class).Inc()
		s.log.Warn("dead-lettered", "class", d.class, "partition", d.msg.Partition, "offset", d.msg.Offset, "err", redact.Error(d.err))
	}
	err := retry.Do(ctx, s.cfg.Retry, func() error { return s.dlq.WriteMessages(ctx, out...) }, nil)
	if err != nil {
		return fmt.Errorf("sink: write dead letters: %w", err)
	}
	return nil
}

func failedRecord(p pipeline.Position, reason pipeline.Reason) pipeline.ResolvedMessage {
	return pipeline.ResolvedMessage{
		V: pipeline.Version, TenantID: p.TenantID, BatchID: p.BatchID, Index: p.Index,
		OptType: pipeline.OptAdd, Outcome: pipeline.OutcomeFailed, Reason: reason,
	}
}
