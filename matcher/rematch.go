package matcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// RematchConfig configures a Rematcher. Zero values take the documented
// defaults; negative values are refused by Validate.
type RematchConfig struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics(); reads Directory, writes Resolved and DLQ
	// GroupID is the re-matcher's consumer group; default
	// DefaultRematchGroupID.
	GroupID string
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// MaxChunk is the most directory messages handled together; default
	// DefaultMaxChunk.
	MaxChunk int
	// Linger is how long a chunk waits to fill; default 5 ms.
	Linger time.Duration
	// Retry bounds retries of transient failures; the zero value retries
	// until shutdown.
	Retry  retry.Policy
	Logger *slog.Logger
}

// DefaultRematchGroupID is the re-matcher's consumer group unless
// RematchConfig names another.
const DefaultRematchGroupID = "groupmatch-rematcher"

// Rematcher consumes the directory topic and resolves again the pending
// bindings (SPEC §13) that wait for the identities it announces: by the
// rules of SPEC §5 (Resolve, the code of first resolution), against the
// directory as it is now. A binding that now resolves to exactly one
// customer gets a MATCHED verdict with Late set on the resolved topic,
// keyed by tenant and customer like every verdict; the sink applies it
// once, at the record's original position, through its ledger. A binding
// still NOT_FOUND, or AMBIGUOUS, stays pending: nothing is written.
//
// The re-matcher never writes PostgreSQL. Offsets are committed only after
// the verdicts are acknowledged, so a crash redelivers the chunk and the
// verdicts are written again, which the sink's ledger makes harmless.
type Rematcher struct {
	cfg      RematchConfig
	store    RematchStore
	consumer *stream.Consumer
	out, dlq *kafka.Writer
	metrics  *RematchMetrics
	log      *slog.Logger
}

// NewRematcher returns a re-matcher reading store.
func NewRematcher(cfg RematchConfig, store RematchStore, metrics *RematchMetrics) (*Rematcher, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.GroupID == "" {
		cfg.GroupID = DefaultRematchGroupID
	}
	if cfg.MaxChunk <= 0 {
		cfg.MaxChunk = DefaultMaxChunk
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("stage", "rematcher")
	c, err := stream.NewConsumer(stream.ConsumerConfig{
		Brokers: cfg.Brokers, GroupID: cfg.GroupID, Topic: cfg.Topics.Directory, Security: cfg.Security,
		MaxChunk: cfg.MaxChunk, Linger: cfg.Linger, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("rematcher: %w", err)
	}
	return &Rematcher{
		cfg: cfg, store: store, consumer: c, metrics: metrics, log: log,
		out: stream.NewWriter(cfg.Brokers, cfg.Topics.Resolved, cfg.Security),
		dlq: stream.NewWriter(cfg.Brokers, cfg.Topics.DLQ, cfg.Security),
	}, nil
}

// Run consumes until ctx is done or the consumer fails; see
// stream.Consumer.Run for shutdown.
func (r *Rematcher) Run(ctx context.Context) error {
	defer r.out.Close()
	defer r.dlq.Close()
	return r.consumer.Run(ctx, r.handle)
}

// Consumer exposes the re-matcher's consumer for lag and reader metrics.
func (r *Rematcher) Consumer() *stream.Consumer { return r.consumer }

// Writers exposes the re-matcher's producers for writer metrics.
func (r *Rematcher) Writers() []*kafka.Writer { return []*kafka.Writer{r.out, r.dlq} }

// handle re-resolves the bindings one chunk's messages announce and
// writes the late verdicts; nil lets the consumer commit the chunk.
func (r *Rematcher) handle(ctx context.Context, msgs []kafka.Message) error {
	start := time.Now()
	var dead []kafka.Message
	dms := make([]pipeline.DirectoryMessage, 0, len(msgs))
	src := make([]int, 0, len(msgs)) // src[i]: index in msgs of dms[i]
	for i, m := range msgs {
		d, err := pipeline.DecodeDirectory(m.Value)
		if err != nil {
			dead = append(dead, stream.DeadLetter(m, "rematcher", "undecodable", err))
			r.metrics.DeadLetters.WithLabelValues("undecodable").Inc()
			r.log.Warn("undecodable directory message", "partition", m.Partition, "offset", m.Offset, "err", err)
			continue
		}
		r.metrics.Messages.WithLabelValues(d.Type).Inc()
		dms = append(dms, d)
		src = append(src, i)
	}
	late, bad, err := r.rematchFrom(ctx, dms, 0)
	if err != nil {
		return err
	}
	for _, b := range bad {
		dead = append(dead, r.isolatedLetter(msgs[src[b.src]], b.err))
	}
	out := make([]kafka.Message, 0, len(late))
	for _, v := range late {
		m, err := resolvedMessage(v)
		if err != nil {
			return err
		}
		out = append(out, m)
	}
	if err := r.write(ctx, r.dlq, dead); err != nil {
		return fmt.Errorf("rematcher: write dead letters: %w", err)
	}
	if err := r.write(ctx, r.out, out); err != nil {
		return fmt.Errorf("rematcher: write resolved: %w", err)
	}
	r.metrics.ChunkSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// rematchFrom is Rematch of dms, retried by the re-matcher's policy; dms
// start at index base of the chunk. A permanent failure (an error
// retry.Transient rejects, or a panic) splits the messages in halves until
// the failing one is alone; it is returned for the dead-letter topic and
// its bindings stay pending (a later message of the same identity tries
// them again). An error means a transient failure outlasted the policy or
// ctx is done: the chunk must be delivered again.
func (r *Rematcher) rematchFrom(ctx context.Context, dms []pipeline.DirectoryMessage, base int) ([]pipeline.ResolvedMessage, []isolated, error) {
	if len(dms) == 0 {
		return nil, nil, nil
	}
	var late []pipeline.ResolvedMessage
	var st RematchStats
	err := retry.Catch(func() error {
		var err error
		late, st, err = Rematch(ctx, r.store, dms, func(op func() error) error {
			return retry.Do(ctx, r.cfg.Retry, func() error { return retry.Catch(op) }, r.notify)
		})
		return err
	})
	switch {
	case err == nil:
		r.metrics.observe(st, late)
		for _, b := range st.Undecodable {
			r.log.Error("pending binding does not decode; it stays pending", "tenant_id", b.TenantID, "batch_id", b.BatchID,
				"record_index", b.Index, "err", b.Err)
		}
		return late, nil, nil
	case retry.Transient(err) || ctx.Err() != nil:
		return nil, nil, err
	case len(dms) > 1:
		h := len(dms) / 2
		a, badA, err := r.rematchFrom(ctx, dms[:h], base)
		if err != nil {
			return nil, nil, err
		}
		b, badB, err := r.rematchFrom(ctx, dms[h:], base+h)
		return append(a, b...), append(badA, badB...), err
	}
	return nil, []isolated{{src: base, err: err}}, nil
}

// isolatedLetter counts and logs a directory message whose handling
// failed permanently and returns its dead letter; neither quotes its value.
func (r *Rematcher) isolatedLetter(m kafka.Message, err error) kafka.Message {
	class, attrs := "permanent", []any{"partition", m.Partition, "offset", m.Offset, "err", redact.Error(err)}
	var panicErr *retry.PanicError
	if errors.As(err, &panicErr) {
		class, attrs = "panic", append(attrs, "stack", string(panicErr.Stack))
	}
	r.metrics.DeadLetters.WithLabelValues(class).Inc()
	r.log.Error("directory message failed permanently; dead-lettered", attrs...)
	return stream.DeadLetter(m, "rematcher", class, err)
}

func (r *Rematcher) notify(err error, wait time.Duration) {
	r.metrics.Retries.Inc()
	r.log.Warn("database unavailable; retrying", "err", redact.Error(err), "wait_s", wait.Seconds())
}

func (r *Rematcher) write(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return retry.Do(ctx, r.cfg.Retry, func() error { return w.WriteMessages(ctx, msgs...) }, r.notify)
}

// RematchStats tells what one Rematch call did, for metrics and logs.
type RematchStats struct {
	// Rechecked counts the bindings resolved again, by outcome.
	Rechecked map[pipeline.Outcome]int
	// Undecodable lists the bindings whose stored JSON did not decode.
	Undecodable []PendingBinding
}

// Rematch is the re-matcher's work on one chunk of directory messages,
// apart from Kafka: one store.PendingFor for the chunk's distinct
// identities, one store.Lookup for every identity the bindings found need
// (Normalized.Lookups under each binding's params), then Resolve of each
// binding. It returns a MATCHED verdict with Late set for each binding
// that now resolves to exactly one customer, in the order PendingFor gave
// the bindings; bindings still NOT_FOUND, AMBIGUOUS or INVALID yield
// nothing. do runs each store call and decides about retries; an error it
// returns fails the chunk.
//
// A message's CustomerID is not trusted: a binding resolves against the
// directory as it is now, by the binding's own priority order and
// application filter, so that an identity message of a customer found
// (not created) by an import, or a stale one, never makes a wrong match.
func Rematch(ctx context.Context, store RematchStore, dms []pipeline.DirectoryMessage, do func(op func() error) error) ([]pipeline.ResolvedMessage, RematchStats, error) {
	st := RematchStats{Rechecked: make(map[pipeline.Outcome]int, 4)}
	if len(dms) == 0 {
		return nil, st, nil
	}
	keys := make([]directory.Key, 0, len(dms))
	seen := make(map[directory.Key]bool, len(dms))
	for _, d := range dms {
		k := directory.Key{TenantID: d.TenantID, Kind: d.Kind, Value: d.Value}
		if !seen[k] {
			seen[k] = true
			keys = append(keys, k)
		}
	}
	var bindings []PendingBinding
	if err := do(func() error {
		var err error
		bindings, err = store.PendingFor(ctx, keys)
		return err
	}); err != nil {
		return nil, st, fmt.Errorf("rematcher: %w", err)
	}
	if len(bindings) == 0 {
		return nil, st, nil
	}
	norms := make([]Normalized, len(bindings))
	lookups := make([]directory.Key, 0, 2*len(bindings))
	for i := range bindings {
		b := &bindings[i]
		if b.Err != nil {
			st.Undecodable = append(st.Undecodable, *b)
			continue
		}
		norms[i] = NormalizePending(&b.Pending)
		for _, k := range norms[i].Lookups(b.Pending.Params) {
			lookups = append(lookups, directory.Key{TenantID: b.TenantID, Kind: k, Value: norms[i].Value(k)})
		}
	}
	var hits *directory.Hits
	if len(lookups) > 0 {
		if err := do(func() error {
			var err error
			hits, err = store.Lookup(ctx, lookups)
			return err
		}); err != nil {
			return nil, st, fmt.Errorf("rematcher: %w", err)
		}
	}
	var late []pipeline.ResolvedMessage
	for i := range bindings {
		b := &bindings[i]
		if b.Err != nil {
			continue
		}
		v := Resolve(b.Pending.Params, &norms[i], tenantHits{all: hits, tenant: b.TenantID})
		st.Rechecked[v.Outcome]++
		if v.Outcome != pipeline.OutcomeMatched {
			continue
		}
		late = append(late, pipeline.ResolvedMessage{
			V: pipeline.Version, TenantID: b.TenantID, BatchID: b.BatchID, Index: b.Index, OptType: b.OptType,
			Outcome: pipeline.OutcomeMatched, MatchedBy: v.MatchedBy, CustomerID: v.CustomerID, Conflict: v.Conflict,
			Groups: b.Pending.Groups, Late: true,
		})
	}
	return late, st, nil
}
