package sink

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// readTopic returns every message of a one-partition topic.
func readTopic(t *testing.T, brokers []string, topic string) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := kafka.DialLeader(ctx, "tcp", brokers[0], topic, 0)
	if err != nil {
		t.Fatal(err)
	}
	first, last, err := conn.ReadOffsets()
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if last <= first {
		return nil
	}
	rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, Partition: 0, MaxWait: 100 * time.Millisecond})
	defer rd.Close()
	if err := rd.SetOffset(first); err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for {
		m, err := rd.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("read %s: %v", topic, err)
		}
		out = append(out, m)
		if m.Offset >= last-1 {
			return out
		}
	}
}

// The relay announces each unannounced pending binding once, one recheck
// per distinct identity on the directory topic, and publishes one
// batch.updated (schema-valid, with deferred and lateMatched) for a
// finished batch that late matches changed.
func TestRelayRechecksAndBatchUpdated(t *testing.T) {
	db, _ := schematest.NewPool(t)
	ctx := context.Background()
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	topics := pipeline.DefaultTopics()
	if err := stream.CreateTopics(ctx, brokers, nil, []stream.TopicSpec{
		{Name: topics.Events, Partitions: 1}, {Name: topics.Directory, Partitions: 1}}); err != nil {
		t.Fatal(err)
	}
	exec(t, db, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES ($1, 't')`, tenant)
	s := NewPGStore(db)
	r := mustRelay(t, db, RelayConfig{Brokers: brokers, Topics: topics})
	defer r.w.Close()
	defer r.dir.Close()

	newBatch(t, db, 1, 3, "PROCESSING")
	// Records 0 and 1 wait for distinct identities; record 2 shares
	// record 0's: three bindings, four distinct identities.
	shared := deferredRec(1, 2, pipeline.OptAdd, "vip")
	shared.Pending.Identities = map[pipeline.IdentityKind]string{pipeline.KindPhone: "13800000000"}
	apply(t, s, deferredRec(1, 0, pipeline.OptAdd, "vip"), deferredRec(1, 1, pipeline.OptAdd, "vip"), shared)

	n, err := r.announce(ctx)
	if err != nil || n != 3 {
		t.Fatalf("announce: %d, %v; want 3 bindings", n, err)
	}
	if n, err := r.announce(ctx); err != nil || n != 0 {
		t.Fatalf("second announce: %d, %v; want nothing", n, err)
	}
	if c := count(t, db, `SELECT count(*) FROM pending_bindings WHERE NOT announced`); c != 0 {
		t.Fatalf("%d bindings left unannounced", c)
	}
	var got []string
	for _, m := range readTopic(t, brokers, topics.Directory) {
		d, err := pipeline.DecodeDirectory(m.Value)
		if err != nil {
			t.Fatal(err)
		}
		if d.Type != pipeline.DirectoryRecheck || d.TenantID != tenant || string(m.Key) != string(pipeline.DirectoryKey(d)) {
			t.Fatalf("recheck %+v with key %q", d, m.Key)
		}
		got = append(got, string(d.Kind)+"="+d.Value)
	}
	slices.Sort(got)
	if want := []string{"phone=13800000000", "phone=13800000001", "unionid=u0", "unionid=u1"}; !slices.Equal(got, want) {
		t.Fatalf("rechecks %v, want %v", got, want)
	}

	// Two late matches of the finished batch in two transactions, before
	// the relay runs: one batch.updated with both.
	apply(t, s, lateRec(1, 0, pipeline.OptAdd, 10, "vip"))
	apply(t, s, lateRec(1, 1, pipeline.OptAdd, 11, "vip"))
	if n, err := r.publishUpdates(ctx); err != nil || n != 1 {
		t.Fatalf("publish updates: %d, %v; want 1", n, err)
	}
	if n, err := r.publishUpdates(ctx); err != nil || n != 0 {
		t.Fatalf("second publish: %d, %v; want nothing", n, err)
	}
	c := schematest.MustContracts(t)
	msgs := readTopic(t, brokers, topics.Events)
	if len(msgs) != 1 {
		t.Fatalf("%d events, want one batch.updated (the batch.finished is published by publish, not called here)", len(msgs))
	}
	if typ, err := c.ValidateEvent(msgs[0].Value); err != nil || typ != pipeline.EventBatchUpdated {
		t.Fatalf("event %s: %v: %s", typ, err, msgs[0].Value)
	}
	var e pipeline.BatchFinishedEvent
	if err := json.Unmarshal(msgs[0].Value, &e); err != nil {
		t.Fatal(err)
	}
	if e.BatchID != 1 || e.Deferred != 3 || e.LateMatched != 2 || e.Unmatched != 3 || e.Success != 0 ||
		e.Status != "FAILED" || string(msgs[0].Key) != string(pipeline.BatchFinishedKey(tenant, 1)) {
		t.Fatalf("batch.updated %+v, key %q", e, msgs[0].Key)
	}
}
