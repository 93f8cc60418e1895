package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

func cmdMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("migrate [flags]", stderr)
	o.addDatabase(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	n, err := migrate(ctx, o.databaseURL)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "migrations applied: %d\n", n)
	return nil
}

func migrate(ctx context.Context, url string) (int, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return 0, fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	return schemas.Migrate(ctx, conn)
}

func cmdTopics(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("topics [flags]", stderr)
	o.addKafka(fs)
	o.addPartitions(fs)
	replication := fs.Int("replication-factor", envInt("TOPIC_REPLICATION", 1), "replication factor of new topics; 3 on a production cluster (TOPIC_REPLICATION)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	specs := topicSpecs(&o, *replication)
	if err := stream.CreateTopics(ctx, o.brokerList(), specs); err != nil {
		return err
	}
	for _, s := range specs {
		fmt.Fprintf(stdout, "topic %s: %d partitions\n", s.Name, s.Partitions)
	}
	return nil
}

// topicSpecs are the topics with their partition counts: the data topics
// get --partitions (the unit of parallelism); requests gets as many so feeds
// can scale too; events and dlq are low-volume.
func topicSpecs(o *options, replication int) []stream.TopicSpec {
	t := o.topics()
	return []stream.TopicSpec{
		{Name: t.Requests, Partitions: o.partitions, ReplicationFactor: replication},
		{Name: t.Records, Partitions: o.partitions, ReplicationFactor: replication},
		{Name: t.Resolved, Partitions: o.partitions, ReplicationFactor: replication},
		{Name: t.Events, Partitions: max(1, o.partitions/4), ReplicationFactor: replication},
		{Name: t.DLQ, Partitions: 1, ReplicationFactor: replication},
	}
}

func cmdApp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "Usage: groupmatch app create|disable [flags]")
		return errors.New("app: missing subcommand")
	}
	var o options
	switch args[0] {
	case "create":
		fs := newFlagSet("app create --tenant T --name N --scope audience.group [--scope …]", stderr)
		o.addDatabase(fs)
		tenant := fs.String("tenant", "", "tenant the application belongs to; created if new (required)")
		name := fs.String("name", "", "application name (required)")
		var scopes stringList
		fs.Var(&scopes, "scope", "permission granted, repeatable; the APIs of groupmatch require "+apps.ScopeGroup)
		if err := parse(fs, args[1:], 0); err != nil {
			return err
		}
		if *tenant == "" || *name == "" || len(scopes) == 0 {
			fs.Usage()
			return errors.New("app create: --tenant, --name and --scope are required")
		}
		return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
			creds, err := apps.NewStore(pool).Create(ctx, *tenant, *name, scopes)
			if err != nil {
				return err
			}
			return json.NewEncoder(stdout).Encode(creds)
		})
	case "disable":
		fs := newFlagSet("app disable --appid A", stderr)
		o.addDatabase(fs)
		appID := fs.String("appid", "", "instanceAppid of the application (required)")
		if err := parse(fs, args[1:], 0); err != nil {
			return err
		}
		if *appID == "" {
			fs.Usage()
			return errors.New("app disable: --appid is required")
		}
		return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
			if err := apps.NewStore(pool).Disable(ctx, *appID); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "disabled", *appID)
			return nil
		})
	}
	return fmt.Errorf("app: unknown subcommand %q", args[0])
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func withPool(ctx context.Context, o *options, f func(*pgxpool.Pool) error) error {
	pool, err := pgxpool.New(ctx, o.databaseURL)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres unreachable: %w", err)
	}
	return f(pool)
}

func cmdDirectory(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "load" {
		fmt.Fprintln(stderr, "Usage: groupmatch directory load --tenant T FILE|-")
		return errors.New("directory: expected the subcommand load")
	}
	var o options
	fs := newFlagSet("directory load --tenant T FILE|-", stderr)
	o.addDatabase(fs)
	tenant := fs.String("tenant", "", "tenant whose directory is loaded; created if new (required)")
	if err := parse(fs, args[1:], 1); err != nil {
		return err
	}
	if *tenant == "" || fs.NArg() != 1 {
		fs.Usage()
		return errors.New("directory load: --tenant and a FILE (or - for standard input) are required")
	}
	in, size := io.Reader(os.Stdin), int64(0)
	if path := fs.Arg(0); path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("directory load: %w", err)
		}
		defer f.Close()
		if st, err := f.Stat(); err == nil {
			size = st.Size()
		}
		in = f
	}
	return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
		tenantID, err := apps.NewStore(pool).EnsureTenant(ctx, *tenant)
		if err != nil {
			return err
		}
		l := matcher.NewLoader(pool)
		reported := 0
		l.Progress = func(p matcher.LoadProgress) {
			for _, b := range p.Bad[reported:] {
				fmt.Fprintln(stderr, "skipped", b.Error())
			}
			reported = len(p.Bad)
			fmt.Fprintf(stderr, "loaded %d customers, %d lines", p.Loaded, p.Lines)
			if size > 0 {
				fmt.Fprintf(stderr, " (%.0f%% of the file)", 100*float64(p.Bytes)/float64(size))
			}
			fmt.Fprintf(stderr, ", %.0f lines/s\n", float64(p.Lines)/max(p.Elapsed.Seconds(), 1e-3))
		}
		start := time.Now()
		p, err := l.Load(ctx, tenantID, in)
		for _, b := range p.Bad[reported:] {
			fmt.Fprintln(stderr, "skipped", b.Error())
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "loaded %d customers from %d lines (%d bad) in %s\n", p.Loaded, p.Lines, len(p.Bad), time.Since(start).Round(time.Millisecond))
		return nil
	})
}

// cmdPrune prunes what --result-retention and the fixed windows let go
// (sink.Pruner): once with --once, else every --interval until stopped, as
// every sink process also does in the background.
func cmdPrune(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("prune [--result-retention 720h] [--once] [flags]", stderr)
	o.addDatabase(fs)
	o.addRetention(fs)
	o.addLog(fs)
	once := fs.Bool("once", false, "make one pass, print what it pruned, and exit")
	interval := fs.Duration("interval", envDuration("PRUNE_INTERVAL", time.Minute), "pause between passes without --once (PRUNE_INTERVAL)")
	rows := fs.Int("prune-rows", envInt("PRUNE_ROWS", 5000), "most rows one statement deletes (PRUNE_ROWS)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := o.checkRetention(); err != nil {
		return err
	}
	if *interval <= 0 || *rows < 1 {
		return errors.New("--interval and --prune-rows must be positive")
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
		p := sink.NewPruner(pool, sink.PruneConfig{Retention: o.resultRetention, Interval: *interval, Rows: *rows, Logger: log})
		if !*once {
			return p.Run(ctx)
		}
		start := time.Now()
		st, err := p.Prune(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pruned %d batches, %d ledger rows, %d idempotency keys, %d tombstones, %d invisible groups in %s\n",
			st.Batches, st.BatchRecords, st.IdempotencyKeys, st.Tombstones, st.Groups, time.Since(start).Round(time.Millisecond))
		return nil
	})
}
