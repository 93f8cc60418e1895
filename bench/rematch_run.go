package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/stream"
)

// RunRematchBench is `groupmatch bench --rematch N`: on a fresh database
// (cfg.BenchDatabase) and an in-process development broker (its log in
// cfg.WorkDir or a temporary folder), it runs RunRematch with cfg.Rematch
// pending bindings against a directory of cfg.Workload.Customers, writes
// the figures as text to out and, with cfg.JSONPath, as JSON.
func RunRematchBench(ctx context.Context, cfg Config, out io.Writer) (RematchResult, error) {
	if cfg.Rematch < 1 {
		return RematchResult{}, fmt.Errorf("bench: --rematch must be positive, got %d", cfg.Rematch)
	}
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	dbURL, err := freshDatabase(ctx, cfg.DatabaseURL, cfg.BenchDatabase)
	if err != nil {
		return RematchResult{}, err
	}
	if err := migrate(ctx, dbURL); err != nil {
		return RematchResult{}, err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return RematchResult{}, fmt.Errorf("bench: postgres: %w", err)
	}
	defer pool.Close()
	tenant, err := apps.NewStore(pool).EnsureTenant(ctx, cfg.Tenant)
	if err != nil {
		return RematchResult{}, err
	}
	dir := cfg.WorkDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "groupmatch-bench-rematch-"); err != nil {
			return RematchResult{}, err
		}
		defer os.RemoveAll(dir)
	}
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir, Partitions: cfg.Partitions})
	if err != nil {
		return RematchResult{}, err
	}
	defer b.Close()
	brokers := []string{b.Addr()}
	if err := stream.CreateTopics(ctx, brokers, nil, cfg.TopicSpecs); err != nil {
		return RematchResult{}, err
	}
	res, err := RunRematch(ctx, RematchConfig{
		Pool: pool, Brokers: brokers, Topics: cfg.Topics, GroupID: cfg.RematchGroup, TenantID: tenant,
		Customers: cfg.Workload.Customers, Bindings: cfg.Rematch, MaxChunk: cfg.MatcherChunk, Stall: cfg.Stall, Log: cfg.Log,
	})
	if err != nil {
		return res, err
	}
	fmt.Fprintf(out, "re-matcher: %d pending bindings (%.0f MiB, %.0f MiB per million), directory of %d customers\n",
		res.Bindings, float64(res.PendingBytes)/(1<<20), res.PendingBytesPerMillion/(1<<20), res.Customers)
	fmt.Fprintf(out, "  directory load with publishing: %.1f s, %d directory messages\n", res.LoadSeconds, res.Messages)
	fmt.Fprintf(out, "  re-matcher drain: %.1f s: %.0f directory messages/s, %.0f late verdicts/s (%d late, %d rechecks, %d still not found, %d ambiguous)\n",
		res.DrainSeconds, res.MessagesPerS, res.LatePerS, res.LateVerdicts, res.Rechecks, res.StillPending, res.Ambiguous)
	if cfg.JSONPath != "" {
		raw, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return res, err
		}
		if err := os.WriteFile(cfg.JSONPath, append(raw, '\n'), 0o644); err != nil {
			return res, fmt.Errorf("bench: --json: %w", err)
		}
	}
	return res, nil
}
