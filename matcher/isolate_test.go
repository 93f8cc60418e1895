package matcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/identity"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
	"github.com/groupmatch/groupmatch/stream"
)

// poisonDirectory knows every thirdId as customer 1000+n for thirdId
// "t-n", and fails permanently (or panics) on any call whose keys or
// requests hold its poison value, as PostgreSQL does on a value it cannot
// index (SQLSTATE 54000).
type poisonDirectory struct {
	poison string
	panics bool
	mu     sync.Mutex
	calls  int
}

func (d *poisonDirectory) fail() error {
	if d.panics {
		var m map[string]int
		m["boom"]++
	}
	return fmt.Errorf("matcher: find or create: %w", &pgconn.PgError{Code: "54000"})
}

// BatchStates reports every batch open: the test's records belong to
// an accepted batch of tenant 1.
func (d *poisonDirectory) BatchStates(_ context.Context, ids []BatchRef) (map[int64]BatchState, error) {
	out := make(map[int64]BatchState, len(ids))
	for _, id := range ids {
		out[id.BatchID] = BatchState{TenantID: 1, Open: true}
	}
	return out, nil
}

func (d *poisonDirectory) Lookup(_ context.Context, keys []directory.Key) (*directory.Hits, error) {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
	out := make(map[directory.Key][]identity.Binding)
	for _, k := range keys {
		if k.Value == d.poison {
			return nil, d.fail()
		}
		var n int64
		if _, err := fmt.Sscanf(k.Value, "t-%d", &n); err == nil {
			out[k] = []identity.Binding{{CustomerID: 1000 + n}}
		}
	}
	return directory.HitsOf(out), nil
}

func (d *poisonDirectory) FindOrCreate(_ context.Context, reqs []directory.CreateRequest) ([]directory.CreateResult, error) {
	d.mu.Lock()
	d.calls++
	d.mu.Unlock()
	out := make([]directory.CreateResult, len(reqs))
	for i, r := range reqs {
		if r.ThirdID == d.poison {
			return nil, d.fail()
		}
		var n int64
		fmt.Sscanf(r.ThirdID, "t-%d", &n)
		out[i] = directory.CreateResult{CustomerID: 1000 + n, Created: true}
	}
	return out, nil
}

// A record that makes the directory fail permanently or panic is isolated:
// the others of its chunk resolve, it is counted FAILED (PROCESSING_FAILED)
// and dead-lettered, and the stage goes on.
func TestStageIsolatesFailingRecord(t *testing.T) {
	for _, c := range []struct {
		name       string
		isMatching bool
		panics     bool
		class      string
	}{
		{"find-or-create fails permanently", false, false, "permanent"},
		{"look-up panics", true, true, "panic"},
	} {
		t.Run(c.name, func(t *testing.T) {
			b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 2})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(b.Close)
			brokers := []string{b.Addr()}
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			topics := pipeline.DefaultTopics()
			var specs []stream.TopicSpec
			for _, name := range []string{topics.Records, topics.Resolved, topics.DLQ, topics.Directory} {
				specs = append(specs, stream.TopicSpec{Name: name, Partitions: 2})
			}
			if err := stream.CreateTopics(ctx, brokers, nil, specs); err != nil {
				t.Fatal(err)
			}
			// One chunk (one partition, written at once) of 40 records,
			// of which record 13 is poison.
			const n, poison = 40, 13
			params := pipeline.Params{IsMatching: c.isMatching, OptType: pipeline.OptAdd}
			if c.isMatching {
				params.MatchingType = pipeline.MatchingExact
			}
			var msgs []kafka.Message
			for i := range n {
				v, _ := pipeline.EncodeRecord(pipeline.RecordMessage{TenantID: 1, BatchID: 9, Index: i, Params: params,
					Record: pipeline.RawRecord{IdentityType: "id", ThirdID: fmt.Sprintf("t-%d", i), Groups: "vip"}})
				msgs = append(msgs, kafka.Message{Key: []byte("k"), Value: v})
			}
			w := stream.NewWriter(brokers, topics.Records, nil)
			defer w.Close()
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				t.Fatal(err)
			}

			dir := &poisonDirectory{poison: fmt.Sprintf("t-%d", poison), panics: c.panics}
			metrics := NewMetrics(prometheus.NewRegistry())
			st, err := New(Config{Brokers: brokers, MaxChunk: 100, Linger: 200 * time.Millisecond,
				Retry: retry.Policy{Initial: time.Millisecond, Max: 5 * time.Millisecond}}, dir, metrics)
			if err != nil {
				t.Fatal(err)
			}
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- st.Run(runCtx) }()

			resolved := readUntil(t, brokers, topics.Resolved, n)
			stop()
			if err := <-done; err != nil {
				t.Fatalf("Run returned %v; a bad record must not stop the stage", err)
			}
			seen := make(map[int]bool)
			for _, m := range resolved {
				r, err := pipeline.DecodeResolved(m.Value)
				if err != nil {
					t.Fatal(err)
				}
				if seen[r.Index] {
					continue // a redelivery; the sink's ledger absorbs it
				}
				seen[r.Index] = true
				switch {
				case r.Index == poison:
					if r.Outcome != pipeline.OutcomeFailed || r.Reason != pipeline.ReasonProcessingFailed || r.BatchID != 9 {
						t.Errorf("poison record resolved as %+v, want FAILED PROCESSING_FAILED", r)
					}
				case r.Outcome != pipeline.OutcomeMatched || r.CustomerID != int64(1000+r.Index):
					t.Errorf("record %d resolved as %+v, want matched to customer %d", r.Index, r, 1000+r.Index)
				}
			}
			if len(seen) != n {
				t.Errorf("%d records resolved, want %d", len(seen), n)
			}
			dead := readUntil(t, brokers, topics.DLQ, 1)
			if len(dead) != 1 {
				t.Fatalf("%d dead letters, want 1", len(dead))
			}
			headers := make(map[string]string)
			for _, h := range dead[0].Headers {
				headers[h.Key] = string(h.Value)
			}
			if headers[stream.HeaderErrorClass] != c.class || headers[stream.HeaderStage] != "matcher" {
				t.Errorf("dead letter headers %v, want class %s from the matcher", headers, c.class)
			}
			if rec, err := pipeline.DecodeRecord(dead[0].Value); err != nil || rec.Index != poison {
				t.Errorf("dead letter holds record %d (%v), want %d", rec.Index, err, poison)
			}
			if got := testutil.ToFloat64(metrics.DeadLetters.WithLabelValues(c.class)); got != 1 {
				t.Errorf("dead letters counted %v with class %s, want 1", got, c.class)
			}
			// Isolating one record of 40 takes about 2·log2(40) calls,
			// not one per record.
			if dir.calls > 16 {
				t.Errorf("%d directory calls to isolate one record of %d", dir.calls, n)
			}
		})
	}
}

// The happy path keeps its batching: a chunk costs one look-up.
func TestResolveIsolatesOnlyOnFailure(t *testing.T) {
	dir := &poisonDirectory{poison: "none"}
	s := &Stage{dir: dir, cfg: Config{}}
	p := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	items := make([]item, 50)
	for i := range items {
		rec := pipeline.RawRecord{IdentityType: "id", ThirdID: fmt.Sprintf("t-%d", i), Groups: "vip"}
		items[i] = item{msg: pipeline.RecordMessage{TenantID: 1, BatchID: 1, Index: i, Params: p, Record: rec}, norm: Normalize(p, rec), src: i}
	}
	bad, err := s.resolve(context.Background(), items)
	if err != nil || len(bad) != 0 || dir.calls != 1 {
		t.Fatalf("resolve: %d isolated, err %v, %d directory calls; want none, nil, 1", len(bad), err, dir.calls)
	}
	// A transient failure is never split: it is retried, and an error
	// once ctx is done.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	s.dir = failingDirectory{}
	if _, err := s.resolve(ctx, items); err == nil {
		t.Fatal("resolve of a chunk failing transiently succeeded")
	}
}

type failingDirectory struct{}

func (failingDirectory) Lookup(context.Context, []directory.Key) (*directory.Hits, error) {
	return nil, &pgconn.PgError{Code: "57P01"}
}

func (failingDirectory) FindOrCreate(context.Context, []directory.CreateRequest) ([]directory.CreateResult, error) {
	return nil, &pgconn.PgError{Code: "57P01"}
}

func (failingDirectory) BatchStates(context.Context, []BatchRef) (map[int64]BatchState, error) {
	return nil, &pgconn.PgError{Code: "57P01"}
}

// readUntil reads every partition of topic from the start until it has at
// least want messages, or 30 s pass, and returns what it read.
func readUntil(t *testing.T, brokers []string, topic string, want int) []kafka.Message {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var out []kafka.Message
		for p := range 2 {
			out = append(out, readPartition(t, brokers, topic, p)...)
		}
		if len(out) >= want || time.Now().After(deadline) {
			return out
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func readPartition(t *testing.T, brokers []string, topic string, partition int) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, partition)
	if err != nil {
		t.Fatal(err)
	}
	first, last, err := conn.ReadOffsets()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	if last <= first {
		return nil
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: partition, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	if err := rd.SetOffset(first); err != nil {
		t.Fatal(err)
	}
	for {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("read %s/%d: %v", topic, partition, err)
			}
			t.Fatal(err)
		}
		out = append(out, m)
		if m.Offset >= last-1 {
			return out
		}
	}
}
