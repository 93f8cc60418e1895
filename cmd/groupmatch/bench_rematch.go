package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/bench"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/stream"
)

// runRematchBench measures the re-matcher (bench --rematch N): N pending
// bindings inserted as the sink writes them, then a directory load of
// --customers with publishing, then the re-matcher draining that backlog,
// on a fresh database and an in-process development broker (the broker the
// other bench modes start), its log kept in --work or a temporary folder.
func runRematchBench(ctx context.Context, f *benchFlags, stdout, stderr io.Writer) error {
	dbURL, err := freshDatabase(ctx, f.o.databaseURL, f.database)
	if err != nil {
		return err
	}
	if _, err := migrate(ctx, dbURL); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("bench: postgres: %w", err)
	}
	defer pool.Close()
	tenant, err := apps.NewStore(pool).EnsureTenant(ctx, f.tenant)
	if err != nil {
		return err
	}
	dir := f.workDir
	if dir == "" {
		if dir, err = os.MkdirTemp("", "groupmatch-bench-rematch-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	}
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", DataDir: dir, Partitions: f.o.partitions})
	if err != nil {
		return err
	}
	defer b.Close()
	o := f.o
	o.brokers = b.Addr()
	if err := stream.CreateTopics(ctx, o.brokerList(), nil, topicSpecs(&o, topicSettings{replication: 1})); err != nil {
		return err
	}
	res, err := bench.RunRematch(ctx, bench.RematchConfig{
		Pool: pool, Brokers: o.brokerList(), Topics: o.topics(), GroupID: o.groupID(rematcher), TenantID: tenant,
		Customers: f.w.Customers, Bindings: f.rematch, MaxChunk: f.o.matcherChunk, Stall: f.stall, Log: stderr,
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "re-matcher: %d pending bindings (%.0f MiB, %.0f MiB per million), directory of %d customers\n",
		res.Bindings, float64(res.PendingBytes)/(1<<20), res.PendingBytesPerMillion/(1<<20), res.Customers)
	fmt.Fprintf(stdout, "  directory load with publishing: %.1f s, %d directory messages\n", res.LoadSeconds, res.Messages)
	fmt.Fprintf(stdout, "  re-matcher drain: %.1f s: %.0f directory messages/s, %.0f late verdicts/s (%d late, %d rechecks, %d still not found, %d ambiguous)\n",
		res.DrainSeconds, res.MessagesPerS, res.LatePerS, res.LateVerdicts, res.Rechecks, res.StillPending, res.Ambiguous)
	if f.jsonPath != "" {
		raw, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		return os.WriteFile(f.jsonPath, append(raw, '\n'), 0o644)
	}
	return nil
}
