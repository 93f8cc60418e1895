package sink

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/batches"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/stream"
)

// Relay publishes batch.finished events from the outbox that the sink fills
// in the transaction finishing each batch, so there is one event per batch
// however often records are redelivered. Rows are published, then deleted,
// in one transaction per tenant holding them with FOR UPDATE SKIP LOCKED, so
// several sinks share the work without publishing a row twice; only a crash between
// Kafka's acknowledgement and the commit repeats an event (consumers can
// tell by its batchId).
//
// It publishes, the same way, batch.updated events from
// batch_updates_outbox (a finished batch whose lateMatched changed; at
// most one row per batch, read with the counters current when it is
// published) and, for deferred matching (SPEC §13), one recheck message
// on the directory topic per identity of each pending binding not yet
// announced, marking the binding announced in the transaction that
// published them. A binding stored after the directory learned its
// customer is thus still resolved: the re-matcher looks again on each
// recheck.
type Relay struct {
	cfg RelayConfig
	db  *pgxpool.Pool
	w   *kafka.Writer
	dir *kafka.Writer // the directory topic: recheck messages
	log *slog.Logger
	// missing throttles the warnings about missing tenant topics.
	missing stream.Throttle
}

// RelayConfig configures a Relay. Zero values take the documented
// defaults; negative values are refused by Validate.
type RelayConfig struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics()
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// EventsPerTenant sends each batch.finished to its tenant's topic
	// (pipeline.Topics.TenantEvents) when that exists, else to
	// Topics.Events.
	EventsPerTenant bool
	// Interval is how often the outbox is polled; default
	// DefaultRelayInterval (100 ms).
	Interval time.Duration
	Logger   *slog.Logger // default: discard
}

// DefaultRelayInterval is RelayConfig.Interval's default.
const DefaultRelayInterval = 100 * time.Millisecond

// NewRelay returns a relay publishing the outbox of db, or the error of
// cfg.Validate.
func NewRelay(db *pgxpool.Pool, cfg RelayConfig) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.Topics.Directory == "" {
		cfg.Topics.Directory = pipeline.DefaultTopics().Directory
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultRelayInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	topic := cfg.Topics.Events
	if cfg.EventsPerTenant {
		topic = "" // each message names its topic
	}
	return &Relay{cfg: cfg, db: db, w: stream.NewWriter(cfg.Brokers, topic, cfg.Security),
		dir: stream.NewWriter(cfg.Brokers, cfg.Topics.Directory, cfg.Security),
		log: cfg.Logger.With("stage", "sink", "component", "relay")}, nil
}

// Writers exposes the relay's Kafka writers for metrics.
func (r *Relay) Writers() []*kafka.Writer { return []*kafka.Writer{r.w, r.dir} }

// Run publishes until ctx is done.
func (r *Relay) Run(ctx context.Context) error {
	defer r.w.Close()
	defer r.dir.Close()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.drain(ctx, "batch.finished events", relayBatch, r.publish)
		r.drain(ctx, "batch.updated events", relayBatch, r.publishUpdates)
		r.drain(ctx, "pending-binding rechecks", recheckBatch, r.announce)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

const relayBatch = 500

// drain calls step until it did less than a full batch of work or failed
// (a failure is logged; the next tick retries).
func (r *Relay) drain(ctx context.Context, what string, batch int, step func(context.Context) (int, error)) {
	for {
		n, err := step(ctx)
		if err != nil && ctx.Err() == nil {
			r.log.Warn("publishing "+what+" failed; will retry", "err", redact.Error(err))
		}
		if err != nil || n < batch {
			return
		}
	}
}

// publish sends up to relayBatch events and returns how many it sent. It
// reads the oldest outbox rows of every tenant without locks, then, tenant
// by tenant, locks that tenant's rows (FOR UPDATE SKIP LOCKED: rows another
// relay holds are left to it), publishes them and deletes them in one
// transaction: on Citus each transaction stays in one tenant's shard.
func (r *Relay) publish(ctx context.Context) (int, error) {
	return r.publishOutbox(ctx, finishedOutbox)
}

// publishUpdates is publish for batch.updated events.
func (r *Relay) publishUpdates(ctx context.Context) (int, error) {
	return r.publishOutbox(ctx, updatedOutbox)
}

// outbox names an outbox table of batch events and how its rows are
// encoded.
type outbox struct {
	table  string // a constant: it is written into the SQL
	encode func(pipeline.BatchFinishedEvent) ([]byte, error)
}

var (
	finishedOutbox = outbox{"batch_events_outbox", pipeline.EncodeBatchFinished}
	updatedOutbox  = outbox{"batch_updates_outbox", pipeline.EncodeBatchUpdated}
)

func (r *Relay) publishOutbox(ctx context.Context, ob outbox) (int, error) {
	rows, err := r.db.Query(ctx, `SELECT /* all tenants */ tenant_id, batch_id FROM `+ob.table+`
		ORDER BY batch_id LIMIT $1`, relayBatch)
	if err != nil {
		return 0, fmt.Errorf("sink: relay: read outbox: %w", err)
	}
	per := make(map[int64][]int64)
	var tenants []int64 // in order of their oldest row
	for rows.Next() {
		var t, id int64
		if err := rows.Scan(&t, &id); err != nil {
			return 0, fmt.Errorf("sink: relay: read outbox: %w", err)
		}
		if _, ok := per[t]; !ok {
			tenants = append(tenants, t)
		}
		per[t] = append(per[t], id)
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("sink: relay: read outbox: %w", err)
	}
	n := 0
	for _, t := range tenants {
		sent, err := r.publishTenant(ctx, ob, t, per[t])
		n += sent
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// publishTenant publishes and deletes those of one tenant's outbox rows ids
// that no other relay holds, in one transaction, and returns how many.
func (r *Relay) publishTenant(ctx context.Context, ob outbox, tenantID int64, ids []int64) (int, error) {
	topic, err := r.eventsTopic(ctx, tenantID)
	if err != nil {
		return 0, err
	}
	n := 0
	err = pgx.BeginFunc(ctx, r.db, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT batch_id FROM `+ob.table+`
			WHERE tenant_id = $1 AND batch_id = ANY($2) ORDER BY batch_id FOR UPDATE SKIP LOCKED`, tenantID, ids)
		if err != nil {
			return err
		}
		locked, err := pgx.CollectRows(rows, pgx.RowTo[int64])
		if err != nil {
			return err
		}
		if len(locked) == 0 {
			return nil
		}
		sums, err := batches.Read(ctx, tx, tenantID, locked)
		if err != nil {
			return err
		}
		if ob.table != finishedOutbox.table && len(sums) < len(locked) {
			// A batch.updated row whose batch is gone (the Pruner keeps
			// a batch while it has one; this is only a safeguard) would
			// be read on every pass: drop it.
			if _, err := tx.Exec(ctx, `DELETE FROM `+ob.table+` o WHERE o.tenant_id = $1 AND o.batch_id = ANY($2)
				AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.tenant_id = $1 AND b.batch_id = o.batch_id)`, tenantID, locked); err != nil {
				return err
			}
		}
		if len(sums) == 0 {
			return nil
		}
		held := make([]int64, len(sums))
		events := make([]pipeline.BatchFinishedEvent, len(sums))
		msgs := make([]kafka.Message, len(sums))
		for i, sum := range sums {
			held[i] = sum.BatchID
			events[i] = pipeline.BatchFinishedEvent{TenantID: sum.TenantID, BatchID: sum.BatchID, BatchSummary: sum.BatchSummary}
			msgs[i] = kafka.Message{Key: pipeline.BatchFinishedKey(sum.TenantID, sum.BatchID), Topic: topic}
		}
		for i := range events {
			v, err := ob.encode(events[i])
			if err != nil {
				return err
			}
			msgs[i].Value = v
		}
		if r.cfg.EventsPerTenant {
			missing, err := stream.RouteToExisting(ctx, r.cfg.Brokers, r.cfg.Security, msgs, r.cfg.Topics.Events)
			if err != nil {
				return err
			}
			for _, t := range missing {
				if r.missing.Due(t, time.Now()) {
					r.log.Warn("tenant events topic missing; publishing on the shared events topic until it exists", "topic", t)
				}
			}
		}
		if err := r.w.WriteMessages(ctx, msgs...); err != nil {
			return fmt.Errorf("write events: %w", err)
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+ob.table+` WHERE tenant_id = $1 AND batch_id = ANY($2)`, tenantID, held); err != nil {
			return err
		}
		n = len(msgs)
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("sink: relay: %w", err)
	}
	return n, nil
}

// eventsTopic is the topic of a tenant's events: "" (the writer's own)
// unless EventsPerTenant, then the tenant's topic if its name can be one,
// else the shared events topic. RouteToExisting later sends the events of
// a tenant whose topic does not exist to the shared one.
func (r *Relay) eventsTopic(ctx context.Context, tenantID int64) (string, error) {
	if !r.cfg.EventsPerTenant {
		return "", nil
	}
	var name string
	if err := r.db.QueryRow(ctx, `SELECT name FROM tenants WHERE tenant_id = $1`, tenantID).Scan(&name); err != nil {
		return "", fmt.Errorf("sink: relay: tenant %d: %w", tenantID, err)
	}
	if t, ok := r.cfg.Topics.TenantEvents(name); ok {
		return t, nil
	}
	return r.cfg.Topics.Events, nil
}
