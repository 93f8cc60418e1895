package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/retry"
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
	if _, err := pgx.ParseConfig(o.databaseURL); err != nil { // pgx masks the password
		return usageError{fmt.Errorf("--database-url: %w", err)}
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
	fs := newFlagSet("topics [--replication-factor 3] [--retention 168h] [--tenant T …] [--check] [flags]", stderr)
	o.addKafka(fs)
	o.addPartitions(fs)
	var ts topicSettings
	fs.IntVar(&ts.replication, "replication-factor", 1, "replication factor of new topics; 3 on a production cluster (TOPIC_REPLICATION)")
	fs.IntVar(&ts.minISR, "min-insync-replicas", 0, "min.insync.replicas of new topics; 0 means the replication factor - 1, at least 1 (TOPIC_MIN_INSYNC_REPLICAS)")
	fs.DurationVar(&ts.retention, "retention", 7*24*time.Hour, "retention.ms of new topics; 0 leaves the broker's default (and is not checked), a negative value keeps messages for ever (TOPIC_RETENTION)")
	var tenants stringList
	fs.Var(&tenants, "tenant", "also create the events topic <prefix>events.<tenant> of this `tenant`, for --events-per-tenant; repeatable")
	check := fs.Bool("check", false, "exit non-zero when an existing topic's settings differ from the ones stated (drift); without it drift is only reported")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	sec, err := o.security()
	if err != nil {
		return err
	}
	if ts.replication < 1 {
		return fmt.Errorf("--replication-factor must be at least 1, got %d", ts.replication)
	}
	if ts.minISR > ts.replication {
		return fmt.Errorf("--min-insync-replicas %d exceeds --replication-factor %d: no write could succeed", ts.minISR, ts.replication)
	}
	specs := topicSpecs(&o, ts)
	for _, tenant := range tenants {
		name, ok := o.topics().TenantEvents(tenant)
		if !ok {
			return fmt.Errorf("--tenant %q: a tenant's events topic needs a name of ASCII letters, digits, '.', '_' and '-' (at most %d characters)", tenant, 249-len(o.topics().Events)-1)
		}
		s := specs[3] // the events topic's settings
		s.Name = name
		specs = append(specs, s)
	}
	states, err := stream.EnsureTopics(ctx, o.brokerList(), sec, specs)
	if err != nil {
		return err
	}
	drifted := 0
	for _, st := range states {
		s := st.Spec
		switch {
		case st.Created:
			fmt.Fprintf(stdout, "topic %s: created: %s\n", s.Name, describeSpec(s))
		case len(st.Drift) == 0:
			fmt.Fprintf(stdout, "topic %s: exists as stated: %s\n", s.Name, describeSpec(s))
		default:
			drifted++
			fmt.Fprintf(stdout, "topic %s: drift: %s\n", s.Name, strings.Join(st.Drift, "; "))
		}
	}
	if drifted > 0 {
		fmt.Fprintf(stderr, "%d existing topic(s) differ from the settings stated; nothing was changed (see docs/kafka.md, \"Topics\")\n", drifted)
		if *check {
			return fmt.Errorf("topics: %d topic(s) drifted", drifted)
		}
	}
	return nil
}

// topicSettings are the settings every topic is created with.
type topicSettings struct {
	replication int
	minISR      int           // 0: stream.DefaultMinInsyncReplicas
	retention   time.Duration // 0: the broker's default
}

// topicSpecs are the topics with their partition counts: the data topics
// get --partitions (the unit of parallelism); requests gets as many so feeds
// can scale too; events and dlq are low-volume; directory (SPEC §13) is a
// data topic, a directory load writing a message per identity. The events
// topic is the fourth; tenants' events topics copy its settings.
func topicSpecs(o *options, ts topicSettings) []stream.TopicSpec {
	t := o.topics()
	spec := func(name string, partitions int) stream.TopicSpec {
		return stream.TopicSpec{Name: name, Partitions: partitions, ReplicationFactor: ts.replication,
			MinInsyncReplicas: ts.minISR, Retention: ts.retention}
	}
	return []stream.TopicSpec{
		spec(t.Requests, o.partitions),
		spec(t.Records, o.partitions),
		spec(t.Resolved, o.partitions),
		spec(t.Events, max(1, o.partitions/4)),
		spec(t.DLQ, 1),
		// Keyed by identity (pipeline.DirectoryKey): rechecks of pending
		// bindings and, from the directory, the identities it learns.
		spec(t.Directory, o.partitions),
	}
}

func describeSpec(s stream.TopicSpec) string {
	retention := "the broker's default retention"
	switch {
	case s.Retention < 0:
		retention = "kept for ever"
	case s.Retention > 0:
		retention = "retention " + s.Retention.String()
	}
	return fmt.Sprintf("%d partitions, replication factor %d, min.insync.replicas %d, %s",
		s.Partitions, s.ReplicationFactor, s.MinInsyncReplicas, retention)
}

func cmdApp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprintln(stderr, "Usage: groupmatch app create|disable [flags]")
		return usageError{errors.New("app: missing subcommand")}
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
			return usageError{errors.New("app create: --tenant, --name and --scope are required")}
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
			return usageError{errors.New("app disable: --appid is required")}
		}
		return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
			if err := apps.NewStore(pool).Disable(ctx, *appID); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "disabled", *appID)
			return nil
		})
	}
	return usageError{fmt.Errorf("app: unknown subcommand %q", args[0])}
}

type stringList []string

func (s *stringList) String() string     { return fmt.Sprint(*s) }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func withPool(ctx context.Context, o *options, f func(*pgxpool.Pool) error) error {
	pool, err := pgxpool.New(ctx, o.databaseURL) // parses only; connects lazily
	if err != nil {
		return usageError{fmt.Errorf("--database-url: %w", err)}
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
		return usageError{errors.New("directory: expected the subcommand load")}
	}
	var o options
	fs := newFlagSet("directory load --tenant T [--publish=false] FILE|-", stderr)
	o.addDatabase(fs)
	o.addKafka(fs)
	tenant := fs.String("tenant", "", "tenant whose directory is loaded; created if new (required)")
	publish := fs.Bool("publish", true, "publish each loaded identity on the <prefix>directory topic after its chunk commits, so that pending bindings waiting for it are matched (SPEC §13); false for an environment without Kafka (DIRECTORY_PUBLISH)")
	if err := parse(fs, args[1:], 1); err != nil {
		return err
	}
	if *tenant == "" || fs.NArg() != 1 {
		fs.Usage()
		return usageError{errors.New("directory load: --tenant and a FILE (or - for standard input) are required")}
	}
	var sec *stream.Security
	if *publish {
		var err error
		if sec, err = o.security(); err != nil {
			return err
		}
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
		l := directory.NewLoader(pool)
		if *publish {
			pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
			err := stream.Ping(pingCtx, o.brokerList(), sec)
			cancel()
			if err != nil {
				return fmt.Errorf("directory load: %w (--publish=false loads without Kafka)", err)
			}
			w := stream.NewWriter(o.brokerList(), o.topics().Directory, sec)
			defer w.Close()
			l.OnCommitted = directoryPublisher(w)
		}
		reported := 0
		l.Progress = func(p directory.LoadProgress) {
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

// directoryPublishRetry bounds the retries of one chunk's directory
// messages; beyond it the load fails and is to be run again.
var directoryPublishRetry = retry.Policy{MaxElapsed: 2 * time.Minute}

// directoryPublisher returns the loader's commit hook that writes one
// identity message per identity of a committed chunk to w (the directory
// topic, acknowledged by all in-sync replicas), keyed by
// pipeline.DirectoryKey. If the load dies between a chunk's commit and
// its messages, loading the file again (idempotent: it changes no row)
// publishes them again; the re-matcher makes duplicates harmless.
func directoryPublisher(w *kafka.Writer) directory.CommitHook {
	return func(ctx context.Context, tenantID int64, ids []directory.Identity) error {
		msgs := make([]kafka.Message, 0, len(ids))
		for _, id := range ids {
			m := pipeline.DirectoryMessage{Type: pipeline.DirectoryIdentity, TenantID: tenantID, Kind: id.Kind, Value: id.Value, CustomerID: id.CustomerID}
			v, err := pipeline.EncodeDirectory(m)
			if err != nil {
				return err
			}
			msgs = append(msgs, kafka.Message{Key: pipeline.DirectoryKey(m), Value: v})
		}
		if len(msgs) == 0 {
			return nil
		}
		err := retry.Do(ctx, directoryPublishRetry, func() error { return w.WriteMessages(ctx, msgs...) }, nil)
		if err != nil {
			return fmt.Errorf("publish directory messages: %w", err)
		}
		return nil
	}
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
	interval := fs.Duration("interval", sink.DefaultPruneInterval, "pause between passes without --once (PRUNE_INTERVAL)")
	rows := fs.Int("prune-rows", sink.DefaultPruneRows, "most rows one statement deletes (PRUNE_ROWS)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := o.checkRetention(); err != nil {
		return err
	}
	if *interval <= 0 || *rows < 1 {
		return usageError{errors.New("--interval and --prune-rows must be positive")}
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
		p, err := sink.NewPruner(pool, sink.PruneConfig{Retention: o.resultRetention, Interval: *interval, Rows: *rows, Logger: log})
		if err != nil {
			return err
		}
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
