package ingest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
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
	// MaxChunk is the most requests of one partition taken at once, and
	// buffered while they are handled; default DefaultFeedMaxChunk (64).
	MaxChunk int
	// Retry bounds retries while PostgreSQL or Kafka is down; the zero
	// value retries until shutdown.
	Retry  retry.Policy
	Logger *slog.Logger // default: discard
}

// Defaults of FeedConfig, used where a field is zero.
const (
	// DefaultFeedGroupID is the feed's consumer group unless FeedConfig
	// names another.
	DefaultFeedGroupID  = "groupmatch-ingest"
	DefaultFeedMaxChunk = 64
)

// Validate reports the first setting NewFeed cannot use: no brokers, a
// negative MaxChunk, or topics given without the requests or events topic.
func (c *FeedConfig) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("ingest: feed: no brokers")
	case c.Topics != (pipeline.Topics{}) && (c.Topics.Requests == "" || c.Topics.Events == ""):
		return errors.New("ingest: feed: Topics.Requests and Topics.Events must both be set; leave Topics zero for the default names")
	case c.MaxChunk < 0:
		return fmt.Errorf("ingest: feed: MaxChunk must not be negative, got %d", c.MaxChunk)
	}
	return nil
}

// Feed turns the messages of the requests topic into batches, exactly as
// the HTTP API would (same validation, auth and codes, no rate limit: the
// topic's lag is the back-pressure), and answers each with a
// request.accepted or request.rejected event keyed like the request.
//
// A request's idempotency key is its idempotency-key header, or else its
// topic/partition/offset, so a request read twice (after a crash before the
// commit) makes one batch.
//
// Partitions progress independently: the consumer runs one worker per
// assigned partition (stream.ConsumerConfig.PerPartition), each with its own
// fetcher, handing the feed one partition's chunk at a time. Requests of one
// partition are accepted in order. A request that fails transiently
// (PostgreSQL or Kafka unavailable, retry.Transient) is retried with backoff
// for as long as the Retry policy allows, holding back only the requests
// after it in its partition; before the first retry the answers of the
// requests before it are published. A request that can never succeed (a
// refusal, a permanent error, a panic) is answered request.rejected at once,
// with the code the HTTP API gives (see permanentRefusal), and the partition
// goes on. A partition's offset is committed only after every request of the
// chunk has its answer in Kafka, so no offset passes an unanswered request;
// an answer may be published twice (same batch id) if the process dies
// before the commit.
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
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Topics == (pipeline.Topics{}) {
		cfg.Topics = pipeline.DefaultTopics()
	}
	if cfg.GroupID == "" {
		cfg.GroupID = DefaultFeedGroupID
	}
	if cfg.MaxChunk == 0 {
		cfg.MaxChunk = DefaultFeedMaxChunk
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	log := cfg.Logger.With("stage", "ingest", "component", "feed")
	c, err := stream.NewConsumer(stream.ConsumerConfig{
		Brokers: cfg.Brokers, GroupID: cfg.GroupID, Topic: cfg.Topics.Requests, Security: cfg.Security,
		MaxChunk: cfg.MaxChunk, PerPartition: true, Logger: log,
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

// handle answers one chunk of one partition, in order; see Feed.
func (f *Feed) handle(ctx context.Context, msgs []kafka.Message) error {
	events := make([]kafka.Message, 0, len(msgs))
	published := 0 // events[:published] are in Kafka already
	publish := func() error {
		if published == len(events) {
			return nil
		}
		err := retry.Do(ctx, f.cfg.Retry, func() error { return f.write(ctx, events[published:]) }, f.notify)
		if err != nil {
			return fmt.Errorf("ingest: write request events: %w", err)
		}
		published = len(events)
		return nil
	}
	for _, m := range msgs {
		ev, err := f.request(ctx, m, publish)
		if err != nil {
			return err // shutting down or out of retries: the chunk is read again
		}
		events = append(events, ev)
	}
	return publish()
}

// write publishes events; with EventsPerTenant, an event whose tenant has
// no topic goes to the shared one.
func (f *Feed) write(ctx context.Context, events []kafka.Message) error {
	if f.cfg.EventsPerTenant {
		missing, err := stream.RouteToExisting(ctx, f.cfg.Brokers, f.cfg.Security, events, f.cfg.Topics.Events)
		if err != nil {
			return err
		}
		for _, t := range missing {
			if f.missing.Due(t, time.Now()) {
				f.log.Warn("tenant events topic missing; answering on the shared events topic until it exists", "topic", t)
			}
		}
	}
	return f.events.WriteMessages(ctx, events...)
}

// request accepts or refuses one request and returns its event. It retries
// while PostgreSQL or Kafka is unavailable, calling beforeRetry (which may
// fail) before the first wait; a permanent failure or a panic is a refusal.
// An error means it gave up: ctx is done or the Retry policy ran out.
func (f *Feed) request(ctx context.Context, m kafka.Message, beforeRetry func() error) (kafka.Message, error) {
	ev := pipeline.RequestEvent{
		RequestKey: string(m.Key), Topic: m.Topic, Partition: m.Partition, Offset: m.Offset,
		IdempotencyKey: header(m, pipeline.HeaderIdempotencyKey),
	}
	if ev.IdempotencyKey == "" {
		ev.IdempotencyKey = defaultIdempotencyKey(m)
	}
	var id int64
	var refusal *Refusal
	var tenant string // of a valid token
	var retried bool
	var publishErr error // beforeRetry's: never a reason to reject the request
	err := retry.Do(ctx, f.cfg.Retry, func() error {
		if publishErr = nil; retried {
			if publishErr = beforeRetry(); publishErr != nil {
				return publishErr
			}
		}
		return retry.Catch(func() error {
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
			var quota *QuotaError
			if errors.As(err, &quota) {
				waitQuota(ctx, quota) // the topic's lag is the back-pressure: wait, never refuse
			}
			return err // transient (a quota too), or ctx ended: submit refuses what is permanent
		})
	}, func(err error, wait time.Duration) {
		retried = true
		f.notify(err, wait)
	})
	switch {
	case err == nil:
	case publishErr != nil || ctx.Err() != nil || retry.Transient(err):
		return kafka.Message{}, err
	default:
		refusal = permanentRefusal(err)
		class, attrs := "permanent", []any{"partition", m.Partition, "offset", m.Offset, "err", redact.Error(err)}
		var panicErr *retry.PanicError
		if errors.As(err, &panicErr) {
			class, attrs = "panic", append(attrs, "stack", string(panicErr.Stack))
		}
		f.svc.metrics.FeedFailures.WithLabelValues(class).Inc()
		f.log.Error("request failed permanently; rejecting it", attrs...)
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
	f.log.Warn("request not accepted yet; retrying", "err", redact.Error(err), "wait_s", wait.Seconds())
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

// defaultIdempotencyKey is the idempotency key of a request published
// without one: its topic/partition/offset, so that a request read again
// makes no second batch. A topic name may be up to 249 characters, so when
// that form is longer than MaxIdempotencyKey the topic is replaced by
// "k" and the first 16 hex digits of its SHA-256 (at most 49 characters in
// all): still one key per message, and always a valid key.
func defaultIdempotencyKey(m kafka.Message) string {
	pos := "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
	if key := m.Topic + pos; len(key) <= MaxIdempotencyKey && ValidIdempotencyKey(key) {
		return key
	}
	sum := sha256.Sum256([]byte(m.Topic))
	return "k" + hex.EncodeToString(sum[:8]) + pos
}
