package sink

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
)

// poisonStore applies every chunk that lacks the poison record, and panics
// or fails permanently on any chunk that holds it (the failure is not its
// outcome: a bare FAILED record at the poison index is applied).
type poisonStore struct {
	poison  int
	panics  bool
	applied []pipeline.ResolvedMessage
	calls   int
}

func (s *poisonStore) Apply(_ context.Context, recs []pipeline.ResolvedMessage) (ApplyResult, error) {
	s.calls++
	for _, r := range recs {
		if r.Index == s.poison && (r.Outcome != pipeline.OutcomeFailed || r.Ref != nil) {
			if s.panics {
				var m map[int]int
				m[r.Index]++ // a bug of the store, reached by this record only
			}
			return ApplyResult{}, errors.New("sink: apply: value too large (SQLSTATE 54000)")
		}
	}
	s.applied = append(s.applied, recs...)
	return ApplyResult{Applied: len(recs)}, nil
}

func TestApplyIsolatesFailingRecord(t *testing.T) {
	for _, c := range []struct {
		name   string
		panics bool
		class  string
		failed bool // the poison record is a FAILED verdict with a ref
	}{
		{"permanent error", false, "permanent", false},
		{"panic", true, "panic", false},
		// The matcher's FAILED verdict whose ref PostgreSQL refuses
		// (e.g. NUL in jsonb, SQLSTATE 22P05) is recorded bare.
		{"failed verdict", false, "permanent", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			store := &poisonStore{poison: 5, panics: c.panics}
			s := &Stage{cfg: Config{Retry: retry.Policy{Initial: 1, Max: 1}}, store: store,
				metrics: NewMetrics(prometheus.NewRegistry()), log: slog.New(slog.DiscardHandler)}
			var msgs []kafka.Message
			var recs []pipeline.ResolvedMessage
			var origin []int
			for i := range 16 {
				msgs = append(msgs, kafka.Message{Partition: 1, Offset: int64(100 + i)})
				rec := matched(7, i, pipeline.OptAdd, int64(1000+i), "vip")
				if c.failed && i == 5 {
					rec = pipeline.ResolvedMessage{V: pipeline.Version, TenantID: tenant, BatchID: 7, Index: i, OptType: pipeline.OptAdd,
						Outcome: pipeline.OutcomeFailed, Reason: pipeline.ReasonProcessingFailed, Ref: &pipeline.RecordRef{ThirdID: "x\x00"}}
				}
				recs = append(recs, rec)
				origin = append(origin, i)
			}
			dead, err := s.apply(context.Background(), msgs, recs, origin)
			if err != nil {
				t.Fatalf("apply returned %v; a bad record must not stop the stage", err)
			}
			if len(dead) != 1 || dead[0].class != c.class || dead[0].msg.Offset != 105 {
				t.Fatalf("dead letters %+v, want one of class %s for offset 105", dead, c.class)
			}
			var panicErr *retry.PanicError
			if c.panics != errors.As(dead[0].err, &panicErr) {
				t.Errorf("dead letter error %v; panic recovered: %v", dead[0].err, c.panics)
			}
			var got []int
			for _, r := range store.applied {
				got = append(got, r.Index)
				want := pipeline.OutcomeMatched
				if r.Index == 5 {
					want = pipeline.OutcomeFailed
					if r.Reason != pipeline.ReasonProcessingFailed || r.Ref != nil {
						t.Errorf("record 5 applied with reason %s and ref %v, want PROCESSING_FAILED and none", r.Reason, r.Ref)
					}
				}
				if r.Outcome != want {
					t.Errorf("record %d applied as %s, want %s", r.Index, r.Outcome, want)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}) {
				t.Errorf("applied records %v, want every index once", got)
			}
			// 16 → 8 → 4 → 2 → 1: a failing call per level plus the
			// healthy halves and the FAILED record, not one call per record.
			if store.calls > 11 {
				t.Errorf("%d Apply calls to isolate one record of 16", store.calls)
			}
		})
	}
}
