// Package matcher is the middle stage: it consumes records, identifies each
// among the platform's customers by the rules of SPEC §5, and forwards a
// verdict per record to the resolved topic, keyed by tenant and customer.
//
// A chunk costs one directory round trip (one query per identity kind) and
// at most one find-or-create transaction, never a query per record.
//
// The package holds the stage and resolution: Normalize (a record under its
// batch's params), the resolver chain (Resolver, Chain, Resolve, Verdict,
// Hits), and the small interfaces it needs of PostgreSQL (Directory,
// Batches, Store). The customer directory itself, its look-ups and the
// `directory load` loader, is package directory; the value rules shared
// with the loader are package identity. The matcher never loads a
// directory file, never logs or returns an identity value, and is imported
// by cmd alone.
package matcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/identity"
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
	// MaxChunk is the most records resolved together; default
	// DefaultMaxChunk (2000).
	MaxChunk int
	// Consumers is how many members of the consumer group the stage runs,
	// each taking its own partitions and resolving its own chunks; default
	// DefaultConsumers (4), so that some decode and resolve while others
	// wait for PostgreSQL or Kafka. Members beyond the topic's partitions
	// idle.
	Consumers int
	// Linger is how long a chunk waits to fill; default 5 ms (stream's).
	Linger time.Duration
	// Retry bounds retries of transient failures; the zero value retries
	// until shutdown.
	Retry  retry.Policy
	Logger *slog.Logger // default: discard
}

// DefaultGroupID is the matcher's consumer group unless Config names another.
const DefaultGroupID = "groupmatch-matcher"

// Stage is a running matcher consumer.
type Stage struct {
	cfg       Config
	dir       Store
	consumers []*stream.Consumer
	out       *kafka.Writer
	dlq       *kafka.Writer
	dirOut    *kafka.Writer // nil when Topics.Directory is ""
	metrics   *Metrics
	log       *slog.Logger
	scratch   sync.Pool // of *scratch
}

// Defaults of Config, used where a field is zero; cmd/groupmatch's flags
// default to them too.
const (
	DefaultMaxChunk  = 2000
	DefaultConsumers = 4
)

// New returns a matcher stage resolving against dir.
func New(cfg Config, dir Store, metrics *Metrics) (*Stage, error) {
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
	log := cfg.Logger.With("stage", "matcher")
	s := &Stage{
		cfg: cfg, dir: dir, metrics: metrics, log: log,
		out: stream.NewWriter(cfg.Brokers, cfg.Topics.Resolved, cfg.Security),
		dlq: stream.NewWriter(cfg.Brokers, cfg.Topics.DLQ, cfg.Security),
	}
	if cfg.Topics.Directory != "" {
		s.dirOut = stream.NewWriter(cfg.Brokers, cfg.Topics.Directory, cfg.Security)
	}
	for range cfg.Consumers {
		c, err := stream.NewConsumer(stream.ConsumerConfig{
			Brokers: cfg.Brokers, GroupID: cfg.GroupID, Topic: cfg.Topics.Records, Security: cfg.Security,
			MaxChunk: cfg.MaxChunk, Linger: cfg.Linger, Logger: log,
		})
		if err != nil {
			return nil, fmt.Errorf("matcher: %w", err)
		}
		s.consumers = append(s.consumers, c)
	}
	return s, nil
}

// Run consumes until ctx is done or a consumer fails, which stops the
// others; see stream.Consumer.Run for shutdown.
func (s *Stage) Run(ctx context.Context) error {
	defer s.out.Close()
	defer s.dlq.Close()
	if s.dirOut != nil {
		defer s.dirOut.Close()
	}
	g, gctx := errgroup.WithContext(ctx)
	for _, c := range s.consumers {
		g.Go(func() error { return c.Run(gctx, s.handle) })
	}
	return g.Wait()
}

// Consumers exposes the stage's consumers for lag and reader metrics.
func (s *Stage) Consumers() []*stream.Consumer { return s.consumers }

// Writers exposes the stage's producers for writer metrics.
func (s *Stage) Writers() []*kafka.Writer {
	if s.dirOut == nil {
		return []*kafka.Writer{s.out, s.dlq}
	}
	return []*kafka.Writer{s.out, s.dlq, s.dirOut}
}

// tenantHits is the Hits of one tenant over a chunk's look-up results.
type tenantHits struct {
	all    *directory.Hits
	tenant int64
}

func (h tenantHits) Bindings(kind pipeline.IdentityKind, value string) []identity.Binding {
	return h.all.Bindings(h.tenant, kind, value)
}

// item is one record of a chunk on its way through the stage.
type item struct {
	msg  pipeline.RecordMessage
	norm Normalized
	out  pipeline.ResolvedMessage
	src  int // index of the record's message in the chunk
}

// isolated is a record whose resolution failed permanently (an error
// retry.Transient rejects, or a panic) when resolved alone.
type isolated struct {
	src int // index into the chunk's items
	err error
}

// scratch is the memory one chunk works in, reused by the next chunk: a
// chunk's items are about 1 MB, and allocating them afresh made the
// garbage collector a tenth of the matcher's CPU.
type scratch struct {
	items []item
	out   []kafka.Message
}

// outcomeKey is one label pair of the records metric.
type outcomeKey struct {
	outcome   pipeline.Outcome
	matchedBy string
}

// handle resolves one chunk; the stage's consumers call it concurrently.
func (s *Stage) handle(ctx context.Context, msgs []kafka.Message) error {
	start := time.Now()
	sc, _ := s.scratch.Get().(*scratch)
	if sc == nil {
		sc = &scratch{}
	}
	defer s.scratch.Put(sc)
	items := slices.Grow(sc.items[:0], len(msgs))
	var dead []kafka.Message
	var failed []pipeline.ResolvedMessage
	for src, m := range msgs {
		rec, err := pipeline.DecodeRecord(m.Value)
		if err != nil {
			dead = append(dead, stream.DeadLetter(m, "matcher", "undecodable", err))
			s.metrics.DeadLetters.WithLabelValues("undecodable").Inc()
			s.log.Warn("undecodable record", "partition", m.Partition, "offset", m.Offset, "err", redact.Error(err))
			if pos, ok := pipeline.PeekPosition(m.Value); ok {
				failed = append(failed, pipeline.ResolvedMessage{
					TenantID: pos.TenantID, BatchID: pos.BatchID, Index: pos.Index, OptType: pipeline.OptAdd,
					Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonUndecodable,
				})
			}
			continue
		}
		items = items[:len(items)+1]
		it := &items[len(items)-1]
		it.msg, it.src = rec, src
		if err := retry.Catch(func() error { it.norm = Normalize(rec.Params, rec.Record); return nil }); err != nil {
			items = items[:len(items)-1]
			dead = append(dead, s.isolatedLetter(m, rec.BatchID, rec.Index, err))
			failed = append(failed, pipeline.ResolvedMessage{
				V: pipeline.Version, TenantID: rec.TenantID, BatchID: rec.BatchID, Index: rec.Index, OptType: rec.Params.OptType,
				Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonProcessingFailed,
			})
		}
	}
	sc.items = items

	lookStart := time.Now()
	bad, err := s.resolve(ctx, items)
	if err != nil {
		return err
	}
	s.metrics.LookupSeconds.Observe(time.Since(lookStart).Seconds())
	for _, b := range bad {
		it := &items[b.src]
		dead = append(dead, s.isolatedLetter(msgs[it.src], it.msg.BatchID, it.msg.Index, b.err))
	}

	out := slices.Grow(sc.out[:0], len(items)+len(failed))
	counts := make(map[outcomeKey]int, 8)
	conflicts := 0
	for i := range items {
		r := &items[i].out
		matchedBy := string(r.MatchedBy)
		if matchedBy == "" {
			matchedBy = "none"
		}
		counts[outcomeKey{r.Outcome, matchedBy}]++
		if r.Conflict {
			conflicts++
		}
		m, err := resolvedMessage(*r)
		if err != nil {
			return err
		}
		out = append(out, m)
	}
	sc.out = out
	for k, n := range counts {
		s.metrics.Records.WithLabelValues(string(k.outcome), k.matchedBy).Add(float64(n))
	}
	s.metrics.Conflicts.Add(float64(conflicts))
	for _, r := range failed {
		s.metrics.Records.WithLabelValues(string(r.Outcome), "none").Inc()
		m, err := resolvedMessage(r)
		if err != nil {
			return err
		}
		out = append(out, m)
	}
	if err := s.write(ctx, s.dlq, dead); err != nil {
		return fmt.Errorf("matcher: write dead letters: %w", err)
	}
	if s.dirOut != nil {
		learned, err := learnedIdentities(items)
		if err != nil {
			return err
		}
		if err := s.write(ctx, s.dirOut, learned); err != nil {
			return fmt.Errorf("matcher: write directory messages: %w", err)
		}
	}
	if err := s.write(ctx, s.out, out); err != nil {
		return fmt.Errorf("matcher: write resolved: %w", err)
	}
	s.metrics.ChunkSeconds.Observe(time.Since(start).Seconds())
	return nil
}

// learnedIdentities returns the directory topic's identity messages for
// the chunk's isMatching=false records that found or created their
// customer (SPEC §13): one per normalised identity of the record, naming
// the customer. Found customers count too: a redelivered record finds the
// customer its first delivery created, and its messages may not have been
// written then. An identity the found customer does not hold costs the
// re-matcher a recheck, nothing more, since it resolves against the
// directory, never against the message's customer. They are written
// before the chunk's offsets are committed.
func learnedIdentities(items []item) ([]kafka.Message, error) {
	var out []kafka.Message
	for i := range items {
		it := &items[i]
		if it.msg.Params.IsMatching || it.out.Outcome != pipeline.OutcomeMatched || it.out.CustomerID <= 0 {
			continue
		}
		for _, k := range pipeline.IdentityKinds {
			v := it.norm.Value(k)
			if v == "" {
				continue
			}
			m := pipeline.DirectoryMessage{Type: pipeline.DirectoryIdentity, TenantID: it.msg.TenantID,
				Kind: k, Value: v, CustomerID: it.out.CustomerID}
			b, err := pipeline.EncodeDirectory(m)
			if err != nil {
				return nil, fmt.Errorf("matcher: %w", err)
			}
			out = append(out, kafka.Message{Key: pipeline.DirectoryKey(m), Value: b})
		}
	}
	return out, nil
}

func resolvedMessage(r pipeline.ResolvedMessage) (kafka.Message, error) {
	v, err := pipeline.EncodeResolved(r)
	if err != nil {
		return kafka.Message{}, fmt.Errorf("matcher: encode: %w", err)
	}
	return kafka.Message{Key: pipeline.ResolvedKey(r), Value: v}, nil
}

// resolve fills items[i].out: one batched look-up for the matching records,
// one find-or-create for the isMatching=false ones, each retried by the
// stage's policy while it fails transiently.
//
// A chunk whose resolution fails permanently (an error retry.Transient
// rejects, or a panic anywhere in it) is split in halves, each resolved
// again, until the failing record is alone; that record's out is FAILED with
// reason PROCESSING_FAILED (so the sink counts it and its batch finishes)
// and it is returned, as an index into items, for the dead-letter topic.
// Splitting costs directory round trips only when a chunk fails. An error
// means a transient failure outlasted the retry policy or ctx is done: the
// chunk must be delivered again.
func (s *Stage) resolve(ctx context.Context, items []item) ([]isolated, error) {
	return s.resolveFrom(ctx, items, 0)
}

// resolveFrom is resolve of items, which start at index base of the chunk.
func (s *Stage) resolveFrom(ctx context.Context, items []item, base int) ([]isolated, error) {
	if len(items) == 0 {
		return nil, nil
	}
	err := retry.Catch(func() error {
		return resolveChunk(ctx, s.dir, items, func(op func() error) error {
			return retry.Do(ctx, s.cfg.Retry, func() error { return retry.Catch(op) }, s.notify)
		})
	})
	switch {
	case err == nil:
		return nil, nil
	case retry.Transient(err) || ctx.Err() != nil:
		return nil, err
	case len(items) > 1:
		h := len(items) / 2
		bad, err := s.resolveFrom(ctx, items[:h], base)
		if err != nil {
			return nil, err
		}
		more, err := s.resolveFrom(ctx, items[h:], base+h)
		return append(bad, more...), err
	}
	it := &items[0]
	it.out = verdictMessage(it.msg, &it.norm, Verdict{Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonProcessingFailed})
	return []isolated{{src: base, err: err}}, nil
}

// isolatedLetter counts and logs a record that failed permanently and
// returns its dead letter, of class "panic" or "permanent". Neither the log
// nor the letter's headers quote a value of the record.
func (s *Stage) isolatedLetter(m kafka.Message, batchID int64, index int, err error) kafka.Message {
	class, attrs := "permanent", []any{"batch_id", batchID, "record_index", index,
		"partition", m.Partition, "offset", m.Offset, "err", redact.Error(err)}
	var panicErr *retry.PanicError
	if errors.As(err, &panicErr) {
		class, attrs = "panic", append(attrs, "stack", string(panicErr.Stack))
	}
	s.metrics.DeadLetters.WithLabelValues(class).Inc()
	s.log.Error("record failed permanently; counted failed and dead-lettered", attrs...)
	return stream.DeadLetter(m, "matcher", class, err)
}

// resolveChunk is the stage's resolution of one chunk, apart from Kafka:
// it fills items[i].out from items[i].msg and items[i].norm (Normalize of
// the record under its params) with at most one dir.Lookup for every
// matching record's Lookups and one dir.FindOrCreate for the isMatching=false
// ones. do runs each directory call and decides about retries; an error it
// returns fails the whole chunk and leaves items[i].out unspecified.
func resolveChunk(ctx context.Context, dir Store, items []item, do func(op func() error) error) error {
	open, err := openBatches(ctx, dir, items, do)
	if err != nil {
		return err
	}
	keys := make([]directory.Key, 0, 2*len(items)) // a mixed stream carries about two keys a record
	var creates []directory.CreateRequest
	var createItems, closed []int
	var kinds [numKinds]pipeline.IdentityKind
	for i := range items {
		it := &items[i]
		p, n := it.msg.Params, &it.norm
		if n.Invalid != pipeline.ReasonNone {
			continue
		}
		if !p.IsMatching && !open[batchOf{it.msg.TenantID, it.msg.BatchID}] {
			closed = append(closed, i)
			continue
		}
		if !p.IsMatching {
			creates = append(creates, directory.CreateRequest{
				TenantID: it.msg.TenantID, ThirdID: n.Value(pipeline.KindThirdID), Values: n.values,
				AppType: p.AppType, AppID: p.AppID,
			})
			createItems = append(createItems, i)
			continue
		}
		for _, k := range n.appendLookups(kinds[:0], p) {
			keys = append(keys, directory.Key{TenantID: it.msg.TenantID, Kind: k, Value: n.Value(k)})
		}
	}
	var hits *directory.Hits
	if len(keys) > 0 {
		err := do(func() error {
			var err error
			hits, err = dir.Lookup(ctx, keys)
			return err
		})
		if err != nil {
			return fmt.Errorf("matcher: %w", err)
		}
	}
	var made []directory.CreateResult
	if len(creates) > 0 {
		err := do(func() error {
			var err error
			made, err = dir.FindOrCreate(ctx, creates)
			return err
		})
		if err != nil {
			return fmt.Errorf("matcher: %w", err)
		}
	}
	for i := range items {
		it := &items[i]
		p, n := it.msg.Params, &it.norm
		var v Verdict
		if p.IsMatching || n.Invalid != pipeline.ReasonNone {
			v = Resolve(p, n, tenantHits{all: hits, tenant: it.msg.TenantID})
		}
		it.out = verdictMessage(it.msg, n, v)
	}
	for j, i := range createItems {
		it := &items[i]
		v := Verdict{Outcome: pipeline.OutcomeMatched, MatchedBy: pipeline.KindThirdID, CustomerID: made[j].CustomerID}
		if made[j].Ambiguous {
			v = Verdict{Outcome: pipeline.OutcomeAmbiguous, Reason: pipeline.ReasonAmbiguous}
		}
		it.out = verdictMessage(it.msg, &it.norm, v)
		it.out.Created = made[j].Created
	}
	for _, i := range closed {
		m := &items[i].msg
		items[i].out = pipeline.ResolvedMessage{
			V: pipeline.Version, TenantID: m.TenantID, BatchID: m.BatchID, Index: m.Index, OptType: m.Params.OptType,
			Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonBatchClosed,
		}
	}
	return nil
}

// batchOf names a batch of a tenant.
type batchOf struct{ tenant, batch int64 }

// openBatches returns the open batches (BatchState.Open) among those of the
// chunk's valid isMatching=false records, the only records that change the
// directory: one dir.BatchStates call, none when the chunk has no such
// record. It retries (through do) while a batch is still being accepted.
// Records of a batch not in the set are closed: forwarded as FAILED,
// reason BATCH_CLOSED, creating nothing; the sink drops them (aborted
// batch), counts them duplicates (finished batch) or dead-letters them
// (unknown batch), as it would their resolved verdicts.
func openBatches(ctx context.Context, dir Batches, items []item, do func(op func() error) error) (map[batchOf]bool, error) {
	var ids []BatchRef
	var seen map[BatchRef]bool // made only for a chunk that needs it
	for i := range items {
		it := &items[i]
		ref := BatchRef{it.msg.TenantID, it.msg.BatchID}
		if it.msg.Params.IsMatching || it.norm.Invalid != pipeline.ReasonNone || seen[ref] {
			continue
		}
		if seen == nil {
			seen = make(map[BatchRef]bool)
		}
		seen[ref] = true
		ids = append(ids, ref)
	}
	if len(ids) == 0 {
		return nil, nil
	}
	var states map[int64]BatchState
	err := do(func() error {
		// Ingest marks a batch accepted just after Kafka acknowledged its
		// records, so a PENDING batch is usually accepted within
		// milliseconds: look again a few times before backing off.
		for wait := 2 * time.Millisecond; ; wait *= 2 {
			var err error
			states, err = dir.BatchStates(ctx, ids)
			if !errors.Is(err, ErrBatchPending) || wait > 16*time.Millisecond {
				return err
			}
			select {
			case <-ctx.Done():
				return err
			case <-time.After(wait):
			}
		}
	})
	if err != nil {
		return nil, fmt.Errorf("matcher: %w", err)
	}
	open := make(map[batchOf]bool, len(states))
	for id, st := range states {
		if st.Open {
			open[batchOf{st.TenantID, id}] = true
		}
	}
	return open, nil
}

func verdictMessage(rec pipeline.RecordMessage, n *Normalized, v Verdict) pipeline.ResolvedMessage {
	r := pipeline.ResolvedMessage{
		V: pipeline.Version, TenantID: rec.TenantID, BatchID: rec.BatchID, Index: rec.Index,
		OptType: rec.Params.OptType, Outcome: v.Outcome, Reason: v.Reason,
	}
	if v.Outcome == pipeline.OutcomeMatched {
		r.MatchedBy, r.CustomerID, r.Conflict, r.Groups = v.MatchedBy, v.CustomerID, v.Conflict, n.Groups
		return r
	}
	ref := n.Ref
	r.Ref = &ref
	if v.Outcome == pipeline.OutcomeNotFound && rec.Params.DeferUnmatched && rec.Params.IsMatching {
		r.Pending = pendingOf(rec.Params, n)
	}
	return r
}

// pendingOf is what a deferred NOT_FOUND record keeps (SPEC §13): the
// normalised values it was looked up by, the batch's params and its
// normalised groups. Its maps and slices are new (n's strings are shared,
// read-only).
func pendingOf(p pipeline.Params, n *Normalized) *pipeline.Pending {
	pd := &pipeline.Pending{Identities: make(map[pipeline.IdentityKind]string, 4), Params: p,
		Groups: slices.Clone(n.Groups)}
	if !isFuzzy(p) {
		pd.IdentityType = n.IdentityType
	}
	for _, k := range n.Lookups(p) {
		if v := n.Value(k); v != "" {
			pd.Identities[k] = v
		}
	}
	if len(pd.Identities) == 0 {
		return nil // nothing to wait for (cannot happen: NOT_FOUND means something was looked up)
	}
	return pd
}

func (s *Stage) notify(err error, wait time.Duration) {
	s.metrics.Retries.Inc()
	if errors.Is(err, ErrBatchPending) {
		return // ingest is still accepting the batch: a normal, short wait
	}
	s.log.Warn("directory unavailable; retrying", "err", redact.Error(err), "wait_s", wait.Seconds())
}

// write produces msgs, retrying transient failures. A retry may duplicate
// messages; the sink's ledger makes that harmless.
func (s *Stage) write(ctx context.Context, w *kafka.Writer, msgs []kafka.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	return retry.Do(ctx, s.cfg.Retry, func() error { return w.WriteMessages(ctx, msgs...) }, s.notify)
}
