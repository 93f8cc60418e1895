package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// DriveConfig says how a workload is offered to a system.
type DriveConfig struct {
	// Clients is how many requests are in flight at most (HTTP), or how
	// many goroutines publish (Kafka); default 8.
	Clients int
	// Rate is the offered load in records per second, spread evenly over
	// time; 0 offers as fast as the system accepts.
	Rate float64
	// Token is an access token of an application with audience.group.
	Token string
	// KeyPrefix, if set, gives every request the Idempotency-Key
	// KeyPrefix + its batch index (always set for Kafka, where the feed
	// would otherwise use topic/partition/offset).
	KeyPrefix string
	// Sent, if set, counts records as requests are accepted (HTTP) or
	// published (Kafka), for the progress line.
	Sent *atomic.Int64
	// Security secures the Kafka connections of DriveKafka; nil is
	// plaintext.
	Security *stream.Security
}

func (c DriveConfig) withDefaults() DriveConfig {
	if c.Clients <= 0 {
		c.Clients = 8
	}
	if c.Sent == nil {
		c.Sent = new(atomic.Int64)
	}
	return c
}

// DriveResult is what a driver saw.
type DriveResult struct {
	Batches, Records int
	// BatchIDs holds the batch id the system gave each batch, by batch
	// index; HTTP only (Kafka's come from the database).
	BatchIDs []int64
	// Start is when the first request was sent; End when the last was
	// accepted (HTTP) or published (Kafka).
	Start, End time.Time
	// Retried counts answers 429 and 503, after which the request was
	// sent again.
	Retried int64
	// RequestLatency is the time from sending a batchAdd to its answer,
	// over accepted requests (HTTP only).
	RequestLatency Latency
}

// pacer spaces requests of n records so that records flow at rate per
// second; a nil pacer never waits.
type pacer struct{ lim *rate.Limiter }

func newPacer(recordsPerSec float64, batchSize int) *pacer {
	if recordsPerSec <= 0 {
		return nil
	}
	return &pacer{rate.NewLimiter(rate.Limit(recordsPerSec/float64(batchSize)), 1)}
}

func (p *pacer) wait(ctx context.Context) error {
	if p == nil {
		return nil
	}
	return p.lim.Wait(ctx)
}

// DriveHTTP posts every batch of w to base's batchAdd with cfg.Clients
// requests in flight. Answers 429 (after Retry-After) and 503 are retried:
// both mean nothing was accepted. Any other refusal fails the drive, as the
// workload is valid by construction.
func DriveHTTP(ctx context.Context, base string, w Workload, cfg DriveConfig) (DriveResult, error) {
	cfg = cfg.withDefaults()
	n := w.Batches()
	res := DriveResult{Batches: n, Records: w.Records, BatchIDs: make([]int64, n)}
	client := &http.Client{
		Timeout:   time.Minute,
		Transport: &http.Transport{MaxIdleConnsPerHost: cfg.Clients, DisableCompression: true},
	}
	defer client.CloseIdleConnections()
	url := base + "/api/integrate/audience/group/rel/batchAdd"
	pace := newPacer(cfg.Rate, w.BatchSize)
	var next atomic.Int64
	var retried atomic.Int64
	lat := make([][]time.Duration, cfg.Clients)
	res.Start = time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for c := range cfg.Clients {
		g.Go(func() error {
			var batch Batch
			var body []byte
			for {
				b := int(next.Add(1)) - 1
				if b >= n {
					return nil
				}
				w.Batch(b, &batch)
				body = AppendBody(body[:0], &batch)
				if err := pace.wait(gctx); err != nil {
					return err
				}
				for {
					start := time.Now()
					id, retry, err := postBatch(gctx, client, url, cfg.Token, cfg.key(b), body)
					if err != nil {
						return fmt.Errorf("bench: batch %d: %w", b, err)
					}
					if retry > 0 {
						retried.Add(1)
						select {
						case <-gctx.Done():
							return gctx.Err()
						case <-time.After(retry):
						}
						continue
					}
					lat[c] = append(lat[c], time.Since(start))
					res.BatchIDs[b] = id
					cfg.Sent.Add(int64(len(batch.Records)))
					break
				}
			}
		})
	}
	err := g.Wait()
	res.End = time.Now()
	res.Retried = retried.Load()
	res.RequestLatency = latencyOf(slices.Concat(lat...))
	return res, err
}

func (c DriveConfig) key(b int) string {
	if c.KeyPrefix == "" {
		return ""
	}
	return c.KeyPrefix + strconv.Itoa(b)
}

// postBatch sends one batchAdd. It returns the batch id, or how long to
// wait before sending it again (429, 503), or an error.
func postBatch(ctx context.Context, client *http.Client, url, token, key string, body []byte) (int64, time.Duration, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Token", token)
	if key != "" {
		req.Header.Set("Idempotency-Key", key)
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return 0, 0, err
	}
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusTooManyRequests:
		wait := time.Second
		if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && s > 0 {
			wait = time.Duration(s) * time.Second
		}
		return 0, wait, nil
	case http.StatusServiceUnavailable:
		return 0, 50 * time.Millisecond, nil
	}
	var env struct {
		Code, ErrorCode, Msg string
		Data                 json.RawMessage
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		return 0, 0, fmt.Errorf("HTTP %d, body not the API's envelope", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		// The API's messages name fields, never values.
		return 0, 0, fmt.Errorf("HTTP %d %s: %s", resp.StatusCode, env.ErrorCode, env.Msg)
	}
	id, err := strconv.ParseInt(string(env.Data), 10, 64)
	if err != nil || id <= 0 {
		return 0, 0, errors.New("accepted without a batch id")
	}
	return id, 0, nil
}

// DriveKafka publishes every batch of w to the requests topic with
// cfg.Clients goroutines, each message carrying the token and an
// idempotency key (cfg.KeyPrefix + batch index), acknowledged by all
// in-sync replicas. Acceptance is read from the database.
func DriveKafka(ctx context.Context, brokers []string, topic string, w Workload, cfg DriveConfig) (DriveResult, error) {
	cfg = cfg.withDefaults()
	if cfg.KeyPrefix == "" {
		return DriveResult{}, errors.New("bench: kafka: a key prefix is required")
	}
	n := w.Batches()
	res := DriveResult{Batches: n, Records: w.Records}
	wr := stream.NewWriter(brokers, topic, cfg.Security)
	wr.Balancer = &kafka.RoundRobin{}
	defer wr.Close()
	pace := newPacer(cfg.Rate, w.BatchSize)
	// Each goroutine publishes a few requests per call: kafka-go keeps one
	// produce request in flight per partition, so big calls go faster, but
	// one request is up to 1 MiB.
	per := 4
	if pace != nil {
		per = 1
	}
	var next atomic.Int64
	res.Start = time.Now()
	g, gctx := errgroup.WithContext(ctx)
	for range cfg.Clients {
		g.Go(func() error {
			var batch Batch
			var msgs []kafka.Message
			for {
				first := int(next.Add(int64(per))) - per
				if first >= n {
					return nil
				}
				msgs, records := msgs[:0], 0
				for b := first; b < min(first+per, n); b++ {
					if err := pace.wait(gctx); err != nil {
						return err
					}
					w.Batch(b, &batch)
					records += len(batch.Records)
					msgs = append(msgs, kafka.Message{
						Key:   []byte("bench/" + strconv.Itoa(b)),
						Value: AppendBody(nil, &batch),
						Headers: []kafka.Header{
							{Key: pipeline.HeaderToken, Value: []byte(cfg.Token)},
							{Key: pipeline.HeaderIdempotencyKey, Value: []byte(cfg.key(b))},
						},
					})
				}
				if err := wr.WriteMessages(gctx, msgs...); err != nil {
					return fmt.Errorf("bench: publish requests: %w", err)
				}
				cfg.Sent.Add(int64(records))
			}
		})
	}
	err := g.Wait()
	res.End = time.Now()
	return res, err
}

// Latency summarises durations, in milliseconds.
type Latency struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50Ms"`
	P95   float64 `json:"p95Ms"`
	P99   float64 `json:"p99Ms"`
	Max   float64 `json:"maxMs"`
}

// latencyOf takes durations (reordering them) and returns their
// percentiles by the nearest-rank method.
func latencyOf(d []time.Duration) Latency {
	if len(d) == 0 {
		return Latency{}
	}
	slices.Sort(d)
	rank := func(p float64) float64 {
		i := int(math.Ceil(p*float64(len(d)))) - 1
		return ms(d[max(0, min(i, len(d)-1))])
	}
	return Latency{Count: len(d), P50: rank(0.50), P95: rank(0.95), P99: rank(0.99), Max: ms(d[len(d)-1])}
}

// ms is d in milliseconds, to 0.1 ms.
func ms(d time.Duration) float64 { return math.Round(d.Seconds()*1e4) / 10 }
