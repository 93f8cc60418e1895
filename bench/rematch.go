package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// RematchConfig configures RunRematch: the re-matcher's throughput on a
// directory load against pending bindings (SPEC §13).
type RematchConfig struct {
	Pool     *pgxpool.Pool // a migrated database
	Brokers  []string
	Security *stream.Security
	Topics   pipeline.Topics // Directory, Resolved and DLQ must exist
	GroupID  string          // the re-matcher's consumer group
	TenantID int64
	// Customers is the size of the Big directory loaded (matchertest.WriteBig);
	// Bindings is how many pending bindings wait for them: binding i names
	// customer i mod Customers, three in four by exact phone, one in four
	// fuzzy (identifyWay 2) by thirdId and phone.
	Customers, Bindings int
	MaxChunk            int // re-matcher chunk; default matcher.DefaultMaxChunk
	Stall               time.Duration
	Log                 io.Writer // progress; nil for none
}

// RematchResult is what RunRematch measured.
type RematchResult struct {
	Customers, Bindings int
	// PendingBytes is pg_total_relation_size of pending_bindings plus
	// pending_identities (tables, indexes, TOAST) holding the bindings.
	PendingBytes  int64
	InsertSeconds float64
	// LoadSeconds is the directory load with publishing; Messages the
	// directory messages it published.
	LoadSeconds float64
	Messages    int64
	// DrainSeconds is the re-matcher's time to consume every message,
	// started once all of them waited in Kafka; LateVerdicts the late
	// MATCHED verdicts it wrote, Rechecks the bindings it resolved again.
	DrainSeconds            float64
	LateVerdicts, Rechecks  int64
	MessagesPerS, LatePerS  float64
	PendingBytesPerMillion  float64
	StillPending, Ambiguous int64
}

// RunRematch inserts the pending bindings as the sink writes them (COPY
// into pending_bindings and pending_identities), loads the directory with
// publishing on (as `groupmatch directory load` does), then runs a
// re-matcher on the backlog and measures it until it has consumed every
// directory message.
func RunRematch(ctx context.Context, cfg RematchConfig) (RematchResult, error) {
	res := RematchResult{Customers: cfg.Customers, Bindings: cfg.Bindings}
	logf := func(format string, args ...any) {
		if cfg.Log != nil {
			fmt.Fprintf(cfg.Log, format+"\n", args...)
		}
	}
	if cfg.Customers < 1 || cfg.Bindings < 1 {
		return res, errors.New("bench: rematch: customers and bindings must be positive")
	}

	start := time.Now()
	if err := insertBindings(ctx, cfg); err != nil {
		return res, err
	}
	res.InsertSeconds = time.Since(start).Seconds()
	if err := cfg.Pool.QueryRow(ctx, `SELECT pg_total_relation_size('pending_bindings') + pg_total_relation_size('pending_identities')`).Scan(&res.PendingBytes); err != nil {
		return res, fmt.Errorf("bench: rematch: sizes: %w", err)
	}
	res.PendingBytesPerMillion = float64(res.PendingBytes) * 1e6 / float64(cfg.Bindings)
	logf("inserted %d pending bindings in %.1f s: %.1f MiB", cfg.Bindings, res.InsertSeconds, float64(res.PendingBytes)/(1<<20))

	w := stream.NewWriter(cfg.Brokers, cfg.Topics.Directory, cfg.Security)
	defer w.Close()
	var published atomic.Int64
	l := directory.NewLoader(cfg.Pool)
	l.OnCommitted = func(ctx context.Context, tenantID int64, ids []directory.Identity) error {
		msgs := make([]kafka.Message, 0, len(ids))
		for _, id := range ids {
			m := pipeline.DirectoryMessage{Type: pipeline.DirectoryIdentity, TenantID: tenantID, Kind: id.Kind, Value: id.Value, CustomerID: id.CustomerID}
			v, err := pipeline.EncodeDirectory(m)
			if err != nil {
				return err
			}
			msgs = append(msgs, kafka.Message{Key: pipeline.DirectoryKey(m), Value: v})
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			return err
		}
		published.Add(int64(len(msgs)))
		return nil
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(matchertest.WriteBig(pw, 0, cfg.Customers)) }()
	start = time.Now()
	if _, err := l.Load(ctx, cfg.TenantID, pr); err != nil {
		pr.CloseWithError(err)
		return res, fmt.Errorf("bench: rematch: load: %w", err)
	}
	res.LoadSeconds, res.Messages = time.Since(start).Seconds(), published.Load()
	logf("loaded %d customers with publishing in %.1f s: %d directory messages", cfg.Customers, res.LoadSeconds, res.Messages)

	reg := prometheus.NewRegistry()
	metrics := matcher.NewRematchMetrics(reg)
	rm, err := matcher.NewRematcher(matcher.RematchConfig{Brokers: cfg.Brokers, Topics: cfg.Topics, Security: cfg.Security,
		GroupID: cfg.GroupID, MaxChunk: cfg.MaxChunk, Logger: slog.New(slog.DiscardHandler)}, matcher.NewPGStore(cfg.Pool), metrics)
	if err != nil {
		return res, err
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	start = time.Now()
	go func() { done <- rm.Run(rctx) }()
	sum := func(v *prometheus.CounterVec, labels ...string) int64 {
		var n float64
		for _, l := range labels {
			n += testutil.ToFloat64(v.WithLabelValues(l))
		}
		return int64(n)
	}
	kinds := make([]string, len(pipeline.IdentityKinds))
	for i, k := range pipeline.IdentityKinds {
		kinds[i] = string(k)
	}
	types := []string{pipeline.DirectoryIdentity, pipeline.DirectoryRecheck}
	outcomes := []string{string(pipeline.OutcomeMatched), string(pipeline.OutcomeNotFound), string(pipeline.OutcomeAmbiguous), string(pipeline.OutcomeInvalid)}
	stall := cfg.Stall
	if stall <= 0 {
		stall = 2 * time.Minute
	}
	last, lastAt := int64(-1), time.Now()
	for {
		n := sum(metrics.Messages, types...)
		if n >= res.Messages {
			break
		}
		if n != last {
			last, lastAt = n, time.Now()
			logf("re-matcher: %d of %d directory messages, %d late verdicts", n, res.Messages, sum(metrics.LateMatches, kinds...))
		}
		select {
		case err := <-done:
			cancel()
			return res, fmt.Errorf("bench: rematch: re-matcher stopped: %v", err)
		case <-ctx.Done():
			cancel()
			return res, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
		if time.Since(lastAt) > stall {
			cancel()
			return res, fmt.Errorf("bench: rematch: no progress for %s at %d of %d messages", stall, n, res.Messages)
		}
	}
	res.DrainSeconds = time.Since(start).Seconds()
	cancel()
	<-done
	res.LateVerdicts, res.Rechecks = sum(metrics.LateMatches, kinds...), sum(metrics.Rechecks, outcomes...)
	res.StillPending = int64(testutil.ToFloat64(metrics.Rechecks.WithLabelValues(string(pipeline.OutcomeNotFound))))
	res.Ambiguous = int64(testutil.ToFloat64(metrics.Rechecks.WithLabelValues(string(pipeline.OutcomeAmbiguous))))
	res.MessagesPerS = float64(res.Messages) / res.DrainSeconds
	res.LatePerS = float64(res.LateVerdicts) / res.DrainSeconds
	return res, nil
}

// insertBindings COPYs the pending bindings and their identities.
func insertBindings(ctx context.Context, cfg RematchConfig) error {
	fuzzy := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyThirdIDFirst,
		OptType: pipeline.OptAdd, DeferUnmatched: true}
	exact := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd, DeferUnmatched: true}
	pendingOf := func(i int) pipeline.Pending {
		c := i % cfg.Customers
		pd := pipeline.Pending{Identities: map[pipeline.IdentityKind]string{pipeline.KindPhone: matchertest.BigPhone(c, 0)},
			Params: exact, IdentityType: pipeline.KindPhone, Groups: []string{"late-vip", "late-new"}}
		if i%4 == 0 {
			pd.Params, pd.IdentityType = fuzzy, ""
			if t := matchertest.BigThirdID(c); t != "" {
				pd.Identities[pipeline.KindThirdID] = t
			}
		}
		return pd
	}
	expires := time.Now().Add(pipeline.DefaultDeferTTL)
	pos := func(i int) (int64, int32) { return int64(1_000_000 + i/500), int32(i % 500) }
	return pgx.BeginFunc(ctx, cfg.Pool, func(tx pgx.Tx) error {
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"pending_bindings"},
			[]string{"tenant_id", "batch_id", "rec_index", "opt_type", "pending", "expires_at", "announced"},
			pgx.CopyFromFunc(func() func() ([]any, error) {
				i := -1
				return func() ([]any, error) {
					if i++; i >= cfg.Bindings {
						return nil, nil
					}
					raw, err := json.Marshal(pendingOf(i))
					if err != nil {
						return nil, err
					}
					b, r := pos(i)
					return []any{cfg.TenantID, b, r, string(pipeline.OptAdd), string(raw), expires, true}, nil
				}
			}())); err != nil {
			return fmt.Errorf("bench: rematch: copy pending_bindings: %w", err)
		}
		var rows [][]any
		next := 0
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"pending_identities"},
			[]string{"tenant_id", "kind", "value", "batch_id", "rec_index"},
			pgx.CopyFromFunc(func() ([]any, error) {
				for len(rows) == 0 {
					if next >= cfg.Bindings {
						return nil, nil
					}
					b, r := pos(next)
					for k, v := range pendingOf(next).Identities {
						rows = append(rows, []any{cfg.TenantID, string(k), v, b, r})
					}
					next++
				}
				row := rows[0]
				rows = rows[1:]
				return row, nil
			})); err != nil {
			return fmt.Errorf("bench: rematch: copy pending_identities: %w", err)
		}
		return nil
	})
}
