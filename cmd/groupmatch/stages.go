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
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/ingest"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

const (
	stageIngest  = "ingest"
	stageMatcher = "matcher"
	stageSink    = "sink"
	// rematcher is no stage of its own: it runs in matcher processes
	// (--rematch), with its own consumer group and metrics label.
	rematcher = "rematcher"
)

// allStages are the stages of serve and dev.
var allStages = []string{stageIngest, stageMatcher, stageSink}

// shutdownTimeout bounds a graceful shutdown: in-flight requests and chunks
// finish, offsets are committed, then the process exits.
const shutdownTimeout = 10 * time.Second

func cmdStages(ctx context.Context, name string, stages []string, args []string, stdout, stderr io.Writer) error {
	// matcher and sink serve no API: no --http-addr, no public listener.
	defaults := map[string]string{"serve": ":8080", "ingest": ":8080"}
	admin := map[string]string{"serve": ":9180", "ingest": ":9180", "matcher": ":9181", "sink": ":9182"}
	var o options
	fs := newFlagSet(name+" [flags]", stderr)
	o.addKafka(fs)
	o.addGroups(fs)
	o.addDatabase(fs)
	o.addStages(fs, stages, defaults[name], admin[name])
	o.addLog(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := o.checkStages(stages); err != nil {
		return err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	return runStages(ctx, &o, stages, log, nil)
}

// runStages runs the given stages in this process until ctx is done, with
// a public HTTP server for the API on o.httpAddr if ingest runs (else none),
// and an admin HTTP server on o.adminAddr for /healthz, /readyz, /metrics
// and /debug/pprof/. It fails fast when PostgreSQL or Kafka does not answer.
// started, if set, is called with the public address ("" when there is no
// public listener) and the admin address once they listen.
func runStages(ctx context.Context, o *options, stages []string, log *slog.Logger, started func(httpAddr, adminAddr string)) error {
	proxies, err := o.proxyPrefixes()
	if err != nil {
		return err
	}
	sec, err := o.security()
	if err != nil {
		return err
	}
	// The stages' settings, checked by their own Validate before anything
	// connects; the stages' constructors apply the defaults.
	brokers, topics := o.brokerList(), o.topics()
	ingestCfg := ingest.Config{
		Brokers: brokers, Topics: topics, Security: sec, RateLimit: o.rateLimit, RateBurst: o.rateBurst,
		PendingTimeout: o.pendingTimeout, MaxInFlight: o.maxInFlight, Logger: log,
		AuthFailRate: o.authFailRate, AuthFailBurst: o.authFailBurst, AuthFailClients: o.authFailClients,
		TokenRate: o.tokenRate, TenantRate: o.tenantRate, TrustedProxies: proxies,
	}
	feedCfg := ingest.FeedConfig{Brokers: brokers, Topics: topics, Security: sec,
		GroupID: o.groupID(stageIngest), EventsPerTenant: o.eventsPerTenant, Logger: log}
	matcherCfg := matcher.Config{
		Brokers: brokers, Topics: topics, Security: sec, GroupID: o.groupID(stageMatcher),
		MaxChunk: o.matcherChunk, Consumers: o.matcherConsumers, Logger: log,
	}
	sinkCfg := sink.Config{
		Brokers: brokers, Topics: topics, Security: sec, GroupID: o.groupID(stageSink),
		MaxChunk: o.sinkChunk, Consumers: o.sinkConsumers, Logger: log,
	}
	relayCfg := sink.RelayConfig{Brokers: brokers, Topics: topics, Security: sec,
		EventsPerTenant: o.eventsPerTenant, Logger: log}
	deadlineCfg := sink.DeadlineConfig{After: o.batchDeadline, Logger: log}
	pruneCfg := sink.PruneConfig{Retention: o.resultRetention, Logger: log}
	rematchCfg := matcher.RematchConfig{Brokers: brokers, Topics: topics, Security: sec, GroupID: o.groupID(rematcher),
		MaxChunk: o.matcherChunk, Logger: log}
	var configs []interface{ Validate() error }
	if slices.Contains(stages, stageIngest) {
		configs = append(configs, &ingestCfg, &feedCfg)
	}
	if slices.Contains(stages, stageMatcher) {
		configs = append(configs, &matcherCfg)
		if o.rematch {
			configs = append(configs, &rematchCfg)
		}
	}
	if slices.Contains(stages, stageSink) {
		configs = append(configs, &sinkCfg, &relayCfg, &deadlineCfg, &pruneCfg)
	}
	for _, c := range configs {
		if err := c.Validate(); err != nil {
			// A value no restart can fix: a usage error (exit status 2).
			return usageError{err}
		}
	}
	poolCfg, err := pgxpool.ParseConfig(o.databaseURL)
	if err != nil {
		return usageError{fmt.Errorf("--database-url: %w", err)}
	}
	poolCfg.MaxConns = int32(max(o.dbMaxConns, 2))
	poolCfg.ConnConfig.Tracer = stagesTracer(log, o.statements)
	// Name the connections after the stages, so pg_stat_activity shows who
	// is who.
	poolCfg.ConnConfig.RuntimeParams["application_name"] = "groupmatch-" + strings.Join(stages, "+")
	setPlanCacheMode(poolCfg.ConnConfig.RuntimeParams)
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
	if err := stream.Ping(pingCtx, brokers, sec); err != nil {
		return err
	}
	if err := checkGroupUpgrade(pingCtx, o, brokers, sec, stages); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	registerBuildInfo(reg)
	// One pool per process, shared by its stages: labelled like its
	// connections' application_name ("sink", or "ingest+matcher+sink").
	prometheus.WrapRegistererWith(prometheus.Labels{"stage": strings.Join(stages, "+")}, reg).MustRegister(newPoolCollector(pool))

	// The first stage observed also reports the lag of the other stages'
	// groups (see lagOfOtherStages).
	otherLag := lagOfOtherStages(o, stages)
	takeOtherLag := func() []stream.LagTarget {
		t := otherLag
		otherLag = nil
		return t
	}

	g, gctx := errgroup.WithContext(ctx)
	mux := http.NewServeMux()
	var svc *ingest.Service
	if slices.Contains(stages, stageIngest) {
		svc, err = ingest.New(ingestCfg, ingest.NewStore(pool), apps.NewStore(pool), ingest.NewMetrics(reg))
		if err != nil {
			return err
		}
		defer svc.Close()
		feed, err := ingest.NewFeed(feedCfg, svc)
		if err != nil {
			return err
		}
		observeStage(gctx, reg, o, sec, pool, log, stageIngest, takeOtherLag(), []*stream.Consumer{feed.Consumer()}, append(svc.Writers(), feed.Writers()...)...)
		mux.Handle("/api/", svc.Handler())
		mux.Handle("GET /openapi.yaml", schemas.OpenAPIHandler())
		g.Go(func() error { return svc.RunJanitor(gctx, 5*time.Second) })
		g.Go(func() error { return feed.Run(gctx) })
	}
	if slices.Contains(stages, stageMatcher) {
		metrics := matcher.NewMetrics(reg)
		store := matcher.NewPGStore(pool)
		store.ObserveQuery = metrics.ObserveLookup
		if o.pendingTimeout > 0 {
			store.PendingTimeout = o.pendingTimeout
		}
		m, err := matcher.New(matcherCfg, store, metrics)
		if err != nil {
			return err
		}
		observeStage(gctx, reg, o, sec, pool, log, stageMatcher, takeOtherLag(), m.Consumers(), m.Writers()...)
		g.Go(func() error { return m.Run(gctx) })
		if o.rematch {
			rm, err := matcher.NewRematcher(rematchCfg, store, matcher.NewRematchMetrics(reg))
			if err != nil {
				return err
			}
			observeStage(gctx, reg, o, sec, pool, log, rematcher, nil, []*stream.Consumer{rm.Consumer()}, rm.Writers()...)
			g.Go(func() error { return rm.Run(gctx) })
		}
	}
	if slices.Contains(stages, stageSink) {
		store := sink.NewPGStore(pool)
		store.PendingTimeout = o.pendingTimeout
		if o.maxGroups > 0 { // else the store's default; checkStages rejects a flag below 1
			store.MaxGroupsPerTenant = o.maxGroups
		}
		if o.deferTTL > 0 { // else the store's default; checkStages rejects a flag below 1ns
			store.DeferTTL = o.deferTTL
		}
		metrics := sink.NewMetrics(reg)
		s, err := sink.New(sinkCfg, store, metrics)
		if err != nil {
			return err
		}
		relay, err := sink.NewRelay(pool, relayCfg)
		if err != nil {
			return err
		}
		deadlineCfg.Metrics = metrics
		deadline, err := sink.NewDeadline(pool, deadlineCfg)
		if err != nil {
			return err
		}
		g.Go(func() error { return deadline.Run(gctx) })
		pruneCfg.Metrics = sink.NewPruneMetrics(reg)
		pruner, err := sink.NewPruner(pool, pruneCfg)
		if err != nil {
			return err
		}
		g.Go(func() error { return pruner.Run(gctx) })
		observeStage(gctx, reg, o, sec, pool, log, stageSink, takeOtherLag(), s.Consumers(), append(s.Writers(), relay.Writers()...)...)
		g.Go(func() error { return s.Run(gctx) })
		g.Go(func() error { return relay.Run(gctx) })
	}

	admin := http.NewServeMux()
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	readiness := &readiness{log: log}
	admin.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if down := readiness.check(r.Context(), gctx, pool, brokers, sec, svc); len(down) > 0 {
			http.Error(w, strings.Join(down, "\n"), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	admin.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	if o.pprof {
		handlePprof(admin)
	}

	adminLn, err := net.Listen("tcp", o.adminAddr)
	if err != nil {
		return fmt.Errorf("--admin-addr: %w", err)
	}
	startedAttrs := []any{"stages", stages}
	var httpAddr string
	var publicLn net.Listener
	if svc != nil {
		if publicLn, err = net.Listen("tcp", o.httpAddr); err != nil {
			adminLn.Close()
			return fmt.Errorf("--http-addr: %w", err)
		}
		httpAddr = publicLn.Addr().String()
		startedAttrs = append(startedAttrs, "http_addr", httpAddr)
	}
	servers := []*http.Server{serve(g, adminLn, admin, "admin http")}
	if publicLn != nil {
		servers = append(servers, serve(g, publicLn, mux, "http"))
	}
	g.Go(func() error {
		<-gctx.Done()
		if svc != nil {
			svc.Drain()
		}
		if o.drainDelay > 0 {
			log.Info("draining", "delay_s", o.drainDelay.Seconds())
			time.Sleep(o.drainDelay)
		}
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), shutdownTimeout)
		defer cancel()
		var errs []error
		for _, srv := range servers {
			errs = append(errs, srv.Shutdown(sctx))
		}
		return errors.Join(errs...)
	})
	startedAttrs = append(startedAttrs, "admin_addr", adminLn.Addr().String(), "kafka_brokers", brokers, "kafka_security", sec.String())
	log.Info("started", startedAttrs...)
	if started != nil {
		started(httpAddr, adminLn.Addr().String())
	}
	err = g.Wait()
	log.Info("stopped", "stages", stages, "err", redact.Error(err))
	return err
}

// serve serves h on ln under g until Shutdown; name prefixes its error.
func serve(g *errgroup.Group, ln net.Listener, h http.Handler, name string) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
	return srv
}

// readiness answers /readyz. Its answer names what is down in a few words
// ("postgres: unreachable"); the error behind it, which names hosts, users
// and databases, goes only to the log, at warn when the answer changes.
type readiness struct {
	log  *slog.Logger
	mu   sync.Mutex
	last string // the previous answer's text; "" when ready
}

// check returns what keeps the process from taking work: shutting down,
// PostgreSQL or Kafka unreachable; none when it is ready. PostgreSQL and
// Kafka are asked at once, within 3 s.
func (rd *readiness) check(ctx, running context.Context, pool *pgxpool.Pool, brokers []string, sec *stream.Security, svc *ingest.Service) []string {
	if running.Err() != nil {
		return []string{"shutting down"}
	}
	if svc != nil && svc.Ready() != nil {
		return []string{"shutting down"}
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	pgErr := make(chan error, 1)
	go func() { pgErr <- pool.Ping(ctx) }()
	kafkaErr := stream.Ping(ctx, brokers, sec)
	var down []string
	var attrs []any
	if err := <-pgErr; err != nil {
		down = append(down, "postgres: unreachable")
		attrs = append(attrs, "postgres_err", redact.Error(err))
	}
	if kafkaErr != nil {
		down = append(down, "kafka: unreachable")
		attrs = append(attrs, "kafka_err", redact.Error(kafkaErr))
	}
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if text := strings.Join(down, ", "); text != rd.last {
		if text == "" {
			rd.log.Info("ready again")
		} else {
			rd.log.Warn("not ready", append([]any{"down", text}, attrs...)...)
		}
		rd.last = text
	}
	return down
}

// setPlanCacheMode makes the stages' sessions plan every statement for its
// parameters (plan_cache_mode = force_custom_plan) unless the database URL
// names a mode. The stages' statements are set-based over arrays
// (unnest($2::bigint[]) …), a few per chunk of thousands of records, so
// planning each costs nothing measurable; a generic plan, which PostgreSQL
// adopts for a prepared statement after five executions, is costed
// without the arrays' lengths and with the table statistics of that
// moment. On a fresh database (empty batches and memberships) it picked
// plans that scanned the whole table once per array element and kept them
// until autovacuum's first ANALYZE: `bench --single` at 2,000,000 records
// applied 5,000–8,000 records/s for the first 50 s, then 50,000/s.
func setPlanCacheMode(params map[string]string) {
	if _, ok := params["plan_cache_mode"]; !ok {
		params["plan_cache_mode"] = "force_custom_plan"
	}
}
