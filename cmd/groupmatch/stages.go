package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/ingest"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

const (
	stageIngest  = "ingest"
	stageMatcher = "matcher"
	stageSink    = "sink"
)

// shutdownTimeout bounds a graceful shutdown: in-flight requests and chunks
// finish, offsets are committed, then the process exits.
const shutdownTimeout = 10 * time.Second

func cmdStages(ctx context.Context, name string, stages []string, args []string, stdout, stderr io.Writer) error {
	defaults := map[string]string{"serve": ":8080", "ingest": ":8080", "matcher": ":8081", "sink": ":8082"}
	var o options
	fs := newFlagSet(name+" [flags]", stderr)
	o.addKafka(fs)
	o.addGroups(fs)
	o.addDatabase(fs)
	o.addStages(fs, defaults[name])
	o.addLog(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := o.checkStages(); err != nil {
		return err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	return runStages(ctx, &o, stages, log, nil)
}

// runStages runs the given stages in this process until ctx is done, with
// one HTTP server for the API (if ingest runs) and /healthz, /readyz and
// /metrics. It fails fast when PostgreSQL or Kafka does not answer. started,
// if set, is called with the HTTP address once it listens.
func runStages(ctx context.Context, o *options, stages []string, log *slog.Logger, started func(addr string)) error {
	if o.batchDeadline < 0 {
		return errors.New("--batch-deadline must not be negative")
	}
	if o.authFailRate < 0 || o.authFailBurst < 0 || o.authFailClients < 0 || o.tokenRate < 0 || o.tenantRate < 0 {
		return errors.New("--auth-fail-rate, --auth-fail-burst, --auth-fail-clients, --token-rate and --tenant-rate must not be negative")
	}
	proxies, err := o.proxyPrefixes()
	if err != nil {
		return err
	}
	sec, err := o.security()
	if err != nil {
		return err
	}
	poolCfg, err := pgxpool.ParseConfig(o.databaseURL)
	if err != nil {
		return fmt.Errorf("--database-url: %w", err)
	}
	poolCfg.MaxConns = int32(max(o.dbMaxConns, 2))
	poolCfg.ConnConfig.Tracer = stagesTracer(log, o.statements)
	// Name the connections after the stages, so pg_stat_activity shows who
	// is who.
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "groupmatch-" + strings.Join(stages, "+")
	pool, err := pgxpool.NewWithConfig(ctx, poolCfg)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer pool.Close()
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil {
		return fmt.Errorf("postgres unreachable: %w", err)
	}
	brokers := o.brokerList()
	if err := stream.Ping(pingCtx, brokers, sec); err != nil {
		return err
	}
	if err := checkGroupUpgrade(pingCtx, o, brokers, sec, stages); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// One pool per process, shared by its stages: labelled like its
	// connections' application_name ("sink", or "ingest+matcher+sink").
	prometheus.WrapRegistererWith(prometheus.Labels{"stage": strings.Join(stages, "+")}, reg).MustRegister(newPoolCollector(pool))
	topics := o.topics()

	g, gctx := errgroup.WithContext(ctx)
	mux := http.NewServeMux()
	var svc *ingest.Service
	if slices.Contains(stages, stageIngest) {
		svc, err = ingest.New(ingest.Config{
			Brokers: brokers, Topics: topics, Security: sec, RateLimit: o.rateLimit, RateBurst: o.rateBurst,
			PendingTimeout: o.pendingTimeout, MaxInFlight: o.maxInFlight, Logger: log,
			AuthFailRate: o.authFailRate, AuthFailBurst: o.authFailBurst, AuthFailClients: o.authFailClients,
			TokenRate: o.tokenRate, TenantRate: o.tenantRate, TrustedProxies: proxies,
		}, ingest.NewStore(pool), apps.NewStore(pool), ingest.NewMetrics(reg))
		if err != nil {
			return err
		}
		defer svc.Close()
		feed, err := ingest.NewFeed(ingest.FeedConfig{Brokers: brokers, Topics: topics, Security: sec,
			GroupID: o.groupID(stageIngest), EventsPerTenant: o.eventsPerTenant, Logger: log}, svc)
		if err != nil {
			return err
		}
		observeStage(gctx, reg, o, sec, pool, log, stageIngest, []*stream.Consumer{feed.Consumer()}, append(svc.Writers(), feed.Writers()...)...)
		mux.Handle("/api/", svc.Handler())
		mux.Handle("GET /openapi.yaml", schemas.OpenAPIHandler())
		g.Go(func() error { return svc.RunJanitor(gctx, 5*time.Second) })
		g.Go(func() error { return feed.Run(gctx) })
	}
	if slices.Contains(stages, stageMatcher) {
		metrics := matcher.NewMetrics(reg)
		dir := matcher.NewPGDirectory(pool)
		dir.ObserveQuery = metrics.ObserveLookup
		if o.pendingTimeout > 0 {
			dir.PendingTimeout = o.pendingTimeout
		}
		m, err := matcher.New(matcher.Config{
			Brokers: brokers, Topics: topics, Security: sec, GroupID: o.groupID(stageMatcher),
			MaxChunk: o.matcherChunk, Consumers: o.matcherConsumers, Logger: log,
		}, dir, metrics)
		if err != nil {
			return err
		}
		observeStage(gctx, reg, o, sec, pool, log, stageMatcher, m.Consumers(), m.Writers()...)
		g.Go(func() error { return m.Run(gctx) })
	}
	if slices.Contains(stages, stageSink) {
		store := sink.NewPGStore(pool)
		store.PendingTimeout = o.pendingTimeout
		if o.maxGroups > 0 { // else the store's default; checkStages rejects a flag below 1
			store.MaxGroupsPerTenant = o.maxGroups
		}
		metrics := sink.NewMetrics(reg)
		s, err := sink.New(sink.Config{
			Brokers: brokers, Topics: topics, Security: sec, GroupID: o.groupID(stageSink),
			MaxChunk: o.sinkChunk, Logger: log,
		}, store, metrics)
		if err != nil {
			return err
		}
		relay := sink.NewRelay(pool, sink.RelayConfig{Brokers: brokers, Topics: topics, Security: sec,
			EventsPerTenant: o.eventsPerTenant, Logger: log})
		deadline := sink.NewDeadline(pool, sink.DeadlineConfig{After: o.batchDeadline, Metrics: metrics, Logger: log})
		g.Go(func() error { return deadline.Run(gctx) })
		observeStage(gctx, reg, o, sec, pool, log, stageSink, []*stream.Consumer{s.Consumer()}, append(s.Writers(), relay.Writers()...)...)
		g.Go(func() error { return s.Run(gctx) })
		g.Go(func() error { return relay.Run(gctx) })
	}

	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := ready(r.Context(), gctx, pool, brokers, sec, svc); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if o.pprof {
		handlePprof(mux)
	}

	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return fmt.Errorf("--http-addr: %w", err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		if svc != nil {
			svc.Drain()
		}
		if o.drainDelay > 0 {
			log.Info("draining", "delay", o.drainDelay)
			time.Sleep(o.drainDelay)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), shutdownTimeout)
		defer cancel()
		return srv.Shutdown(sctx)
	})
	log.Info("started", "stages", stages, "http_addr", ln.Addr().String(), "kafka_brokers", brokers, "kafka_security", sec.String())
	if started != nil {
		started(ln.Addr().String())
	}
	err = g.Wait()
	log.Info("stopped", "stages", stages, "err", err)
	return err
}

// ready reports whether the process takes work: not shutting down, and
// PostgreSQL and Kafka reachable.
func ready(ctx, running context.Context, pool *pgxpool.Pool, brokers []string, sec *stream.Security, svc *ingest.Service) error {
	if running.Err() != nil {
		return errors.New("shutting down")
	}
	if svc != nil {
		if err := svc.Ready(); err != nil {
			return err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres unreachable: %w", err)
	}
	return stream.Ping(ctx, brokers, sec)
}
