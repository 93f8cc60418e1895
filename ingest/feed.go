package ingest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// FeedConfig configures a Feed. Zero values take the documented defaults.
type FeedConfig struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics()
	GroupID string          // consumer group; default DefaultFeedGroupID
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// EventsPerTenant sends the events of a request whose token names a
	// tenant to that tenant's topic (pipeline.Topics.TenantEvents) instead
	// of Topics.Events. A request without a valid token, or of a tenant
	// whose topic does not exist (or whose name cannot be a topic's),
	// is answered on Topics.Events.
	EventsPerTenant bool
	// MaxChunk is the most requests taken at once; default 64.
	MaxChunk int
	// Retry bounds retries while PostgreSQL or Kafka is down; the zero
	// value retries until shutdown.
	Retry  retry.Policy
	Logger *slog.Logger
}

// DefaultFeedGroupID is the feed's consumer group unless FeedConfig names
// another.
const DefaultFeedGroupID = "groupmatch-ingest"

// Feed turns the messages of the requests topic into batches, exactly as
// the HTTP API would (same validation, auth and codes, no rate limit: the
// topic's lag is the back-pressure), and answers each with a
// request.accepted or request.rejected event keyed like the request.
//
// A request's idempotency key is its idempotency-key header, or else its
// topic/partition/offset, so a request read twice (after a crash before the
// commit) makes one batch. Requests of one partition are accepted in order;
// partitions proceed in parallel. Offsets are committed only after the
// chunk's records and events are in Kafka.
type Feed struct {
	cfg      FeedConfig
	svc      *Service
	consumer *stream.Consumer
	events   *kafka.Writer
	log      *slog.Logger
	missing  stream.Throttle // warnings about missing tenant topics
}

// NewFeed returns a feed accepting batches through svc.
func NewFeed(cfg FeedConfig, svc *Service) (*Feed, error) {
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.GroupID == "" {
		cfg.GroupID = DefaultFeedGroupID
	}
	if cfg.MaxChunk <= 0 {
		cfg.MaxChunk = 64
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("stage", "ingest", "component", "feed")
	c, err := stream.NewConsumer(stream.ConsumerConfig{
		Brokers: cfg.Brokers, GroupID: cfg.GroupID, Topic: cfg.Topics.Requests, Security: cfg.Security,
		MaxChunk: cfg.MaxChunk, Logger: log,
	})
	if err != nil {
		return nil, fmt.Errorf("ingest: feed: %w", err)
	}
	topic := cfg.Topics.Events
	if cfg.EventsPerTenant {
		topic = "" // each message names its topic
	}
	return &Feed{cfg: cfg, svc: svc, consumer: c, events: stream.NewWriter(cfg.Brokers, topic, cfg.Security), log: log}, nil
}

// Consumer exposes the feed's consumer for lag and reader metrics.
func (f *Feed) Consumer() *stream.Consumer { return f.consumer }

// Writers exposes the feed's Kafka writer (events) for metrics.
func (f *Feed) Writers() []*kafka.Writer { return []*kafka.Writer{f.events} }

// Run consumes until ctx is done; see stream.Consumer.Run for shutdown.
func (f *Feed) Run(ctx context.Context) error {
	defer f.events.Close()
	return f.consumer.Run(ctx, f.handle)
}

func (f *Feed) handle(ctx context.Context, msgs []kafka.Message) error {
	byPartition := make(map[int][]int) // partition -> indexes into msgs, in order
	for i, m := range msgs {
		byPartition[m.Partition] = append(byPartition[m.Partition], i)
	}
	events := make([]kafka.Message, len(msgs))
	errs := make(chan error, len(byPartition))
	var wg sync.WaitGroup
	for _, idx := range byPartition {
		wg.Go(func() {
			for _, i := range idx {
				ev, err := f.request(ctx, msgs[i])
				if err != nil {
					errs <- err
					return
				}
				events[i] = ev
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err // shutting down mid-retry: the chunk is read again
	}
	err := retry.Do(ctx, f.cfg.Retry, func() error {
		if !f.cfg.EventsPerTenant {
			return f.events.WriteMessages(ctx, events...)
		}
		missing, err := stream.RouteToExisting(ctx, f.cfg.Brokers, f.cfg.Security, events, f.cfg.Topics.Events)
		if err != nil {
			return err
		}
		for _, t := range missing {
			if f.missing.Due(t, time.Now()) {
				f.log.Warn("tenant events topic missing; answering on the shared events topic until it exists", "topic", t)
			}
		}
		return f.events.WriteMessages(ctx, events...)
	}, f.notify)
	if err != nil {
		return fmt.Errorf("ingest: write request events: %w", err)
	}
	return nil
}

// request accepts or refuses one request and returns its event. It retries
// while PostgreSQL or Kafka is unavailable; an error means it gave up.
func (f *Feed) request(ctx context.Context, m kafka.Message) (kafka.Message, error) {
	ev := pipeline.RequestEvent{
		RequestKey: string(m.Key), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset,
		IdempotencyKey: header(m, pipeline.HeaderIdempotencyKey),
	}
	if ev.IdempotencyKey == "" {
		ev.IdempotencyKey = m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
	}
	var id int64
	var refusal *Refusal
	var tenant string // of a valid token
	err := retry.Do(ctx, f.cfg.Retry, func() error {
		p, r := f.svc.authorize(ctx, header(m, pipeline.HeaderToken))
		tenant = p.Tenant
		if r != nil && r.Status == refuseUnavailable.Status {
			return fmt.Errorf("ingest: feed: authenticate: %w", retry.ErrTransient)
		}
		if refusal = r; r != nil {
			return nil
		}
		if refusal = checkVersion(m.Value); refusal != nil {
			return nil
		}
		var err error
		id, refusal, err = f.svc.submit(ctx, p, m.Value, ev.IdempotencyKey)
		if err != nil {
			return fmt.Errorf("%w: %w", retry.ErrTransient, err)
		}
		return nil
	}, f.notify)
	if err != nil {
		return kafka.Message{}, err
	}
	if refusal != nil {
		ev.Type, ev.Code, ev.ErrorCode, ev.Msg = pipeline.EventRequestRejected, refusal.Code, refusal.ErrorCode, refusal.Msg
		f.log.Info("request rejected", "partition", m.Partition, "offset", m.Offset, "error_code", refusal.ErrorCode)
	} else {
		ev.Type, ev.BatchID = pipeline.EventRequestAccepted, id
	}
	ev.At = time.Now().UTC()
	v, err := pipeline.EncodeRequestEvent(ev)
	if err != nil {
		return kafka.Message{}, err
	}
	out := kafka.Message{Key: m.Key, Value: v}
	if f.cfg.EventsPerTenant {
		out.Topic = f.cfg.Topics.Events
		if t, ok := f.cfg.Topics.TenantEvents(tenant); ok {
			out.Topic = t
		}
	}
	return out, nil
}

func (f *Feed) notify(err error, wait time.Duration) {
	f.log.Warn("request not accepted yet; retrying", "err", err, "wait", wait)
}

// checkVersion refuses a request whose "v" is present and not
// pipeline.Version: a feed written for a later format must not be read as
// this one. (The HTTP API, like the platform's, ignores unknown members.)
func checkVersion(body []byte) *Refusal {
	if !bytes.Contains(body, []byte(`"v"`)) {
		return nil
	}
	var probe struct {
		V *json.RawMessage `json:"v"`
	}
	if json.Unmarshal(body, &probe) != nil || probe.V == nil || string(*probe.V) == strconv.Itoa(pipeline.Version) {
		return nil // no "v" member, or a body DecodeRequest will judge
	}
	return &Refusal{Status: http.StatusBadRequest, Code: "400", ErrorCode: "INVALID_PARAMETER",
		Msg: fmt.Sprintf("v must be %d, the only version of the request format", pipeline.Version)}
}

func header(m kafka.Message, key string) string {
	for _, h := range m.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}
