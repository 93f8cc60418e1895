package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/stream"
	"github.com/groupmatch/groupmatch/supervise"
)

// system is the system under test: processes Run started, or a running
// one (Config.Target), which has none.
type system struct {
	base    string           // ingest's base URL
	brokers []string         // Kafka
	sec     *stream.Security // nil for the broker bench starts itself
	procs   []*proc          // in the order started
	once    sync.Once
	grace   time.Duration // Config.StopGrace

	// What starting a stage process takes (self-started systems).
	exe, dir  string
	stageArgs []string
	env       []string // added to the stages' environment
}

// proc is a process of the groupmatch binary that Run started; its output
// goes to <dir>/<name>.log.
type proc struct {
	*supervise.Proc
	admin string // http://host:port of its admin server (/metrics, /debug/pprof/), if any
}

// startSystem starts the broker and the stages as separate processes of
// cfg.Executable, or one dev process (Config.Single), on dbURL.
func startSystem(ctx context.Context, cfg *Config, dbURL, dir string) (*system, error) {
	sys := &system{grace: cfg.StopGrace}
	// Settings of one stage go in the environment: each stage process
	// reads those of its own flags and has no flag for the others'.
	stageEnvs := append([]string{
		"RATE_LIMIT=1e9", "RATE_BURST=1000000000",
		"MATCHER_CHUNK=" + strconv.Itoa(cfg.MatcherChunk), "MATCHER_CONSUMERS=" + strconv.Itoa(cfg.MatcherConsumers),
		"SINK_CONSUMERS=" + strconv.Itoa(cfg.SinkConsumers),
		"SINK_CHUNK=" + strconv.Itoa(cfg.SinkChunk),
	}, cfg.StageEnv()...)
	stageArgs := []string{
		"--admin-addr", "127.0.0.1:0",
		"--db-max-conns", strconv.Itoa(cfg.DBMaxConns), "--log-level", "info", "--log-format", "json",
	}
	if cfg.Pprof {
		stageArgs = append(stageArgs, "--pprof")
	}
	fail := func(err error) (*system, error) {
		sys.stop(io.Discard)
		return nil, err
	}
	exe := cfg.Executable
	if cfg.Single {
		p, err := startProc(exe, dir, "dev", append(append([]string{"DATABASE_URL=" + dbURL}, plaintextKafkaEnv()...), stageEnvs...),
			append([]string{"dev", "--kafka-addr", "127.0.0.1:0", "--data", filepath.Join(dir, "dev"),
				"--partitions", strconv.Itoa(cfg.Partitions), "--http-addr", "127.0.0.1:0"}, stageArgs...)...)
		if err != nil {
			return fail(err)
		}
		sys.procs = append(sys.procs, p)
		m, err := p.await(ctx, regexp.MustCompile(`HTTP API:\s+(\S+)`), time.Minute)
		if err != nil {
			return fail(err)
		}
		sys.base = m
		if p.admin, err = p.await(ctx, regexp.MustCompile(`admin:\s+(\S+)/metrics`), 10*time.Second); err != nil {
			return fail(err)
		}
		m, err = p.await(ctx, regexp.MustCompile(`KAFKA_BROKERS=(\S+)`), 10*time.Second)
		if err != nil {
			return fail(err)
		}
		sys.brokers = strings.Split(m, ",")
		return sys, nil
	}

	b, err := startProc(exe, dir, "broker", nil, "broker", "--addr", "127.0.0.1:0",
		"--partitions", strconv.Itoa(cfg.Partitions), "--data", filepath.Join(dir, "broker"), "--log-level", "warn")
	if err != nil {
		return fail(err)
	}
	sys.procs = append(sys.procs, b)
	m, err := b.await(ctx, regexp.MustCompile(`KAFKA_BROKERS=(\S+)`), 30*time.Second)
	if err != nil {
		return fail(err)
	}
	sys.brokers = strings.Split(m, ",")
	if err := migrate(ctx, dbURL); err != nil {
		return fail(err)
	}
	// bench's own broker is plaintext.
	if err := stream.CreateTopics(ctx, brokerList(m), nil, cfg.TopicSpecs); err != nil {
		return fail(err)
	}
	sys.exe, sys.dir, sys.env = exe, dir, append(plaintextKafkaEnv(), stageEnvs...)
	sys.stageArgs = append([]string{"--kafka-brokers", m, "--database-url", dbURL, "--topic-prefix", cfg.TopicPrefix}, stageArgs...)
	stages := []string{stageIngest, stageMatcher, stageSink}
	if cfg.Backlog {
		stages = stages[:1] // the consumers start once every record is accepted
	}
	if err := sys.startStages(ctx, stages...); err != nil {
		return fail(err)
	}
	return sys, nil
}

// brokerList splits a comma-separated list of brokers, dropping blanks.
func brokerList(s string) []string {
	var out []string
	for _, b := range strings.Split(s, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

// migrate brings the bench database's schema up to date, as `groupmatch
// migrate` does.
func migrate(ctx context.Context, dbURL string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = schemas.Migrate(ctx, conn)
	return err
}

// startStages starts each stage as a process and waits until it serves.
func (s *system) startStages(ctx context.Context, stages ...string) error {
	for _, stage := range stages {
		if _, err := s.startStage(ctx, stage, stage); err != nil {
			return err
		}
	}
	return nil
}

// startInstances starts n processes of one stage, named stage-1, stage-2,
// … when there are several, and waits until they serve.
func (s *system) startInstances(ctx context.Context, stage string, n int) ([]*proc, error) {
	procs := make([]*proc, 0, n)
	for i := range n {
		name := stage
		if n > 1 {
			name = fmt.Sprintf("%s-%d", stage, i+1)
		}
		p, err := s.startStage(ctx, name, stage)
		if err != nil {
			return nil, err
		}
		procs = append(procs, p)
	}
	return procs, nil
}

// startStage starts a process of stage, logging to <dir>/<name>.log, and
// waits until it serves.
func (s *system) startStage(ctx context.Context, name, stage string) (*proc, error) {
	args := append([]string{stage}, s.stageArgs...)
	if stage == stageIngest { // matcher and sink have no public address
		args = append(args, "--http-addr", "127.0.0.1:0")
	}
	p, err := startProc(s.exe, s.dir, name, s.env, args...)
	if err != nil {
		return nil, err
	}
	s.procs = append(s.procs, p)
	st, err := p.AwaitStarted(ctx, time.Minute)
	if err != nil {
		return nil, notReady(err)
	}
	p.admin = "http://" + st.AdminAddr
	if stage == stageIngest {
		s.base = "http://" + st.HTTPAddr
	}
	return p, nil
}

// pgUse is what the bench database's PostgreSQL backends used between two
// readings of PostgresCPU (ok false when they could not be read).
type pgUse struct {
	before, after time.Duration
	ok            bool
	backends      int
	db            string
}

// costs is the cost of each of the system's processes between two samples,
// then the PostgreSQL backends', per record of the workload. A process
// started between the samples had used nothing before.
func (s *system) costs(before, after map[*proc]supervise.Sample, pg pgUse, records int) []ProcessCost {
	var out []ProcessCost
	for _, p := range s.procs {
		if a, ok := after[p]; ok {
			out = append(out, NewProcessCost(p.Name(), p.PID(), before[p], a, records))
		}
	}
	if pg.ok {
		c := NewProcessCost("postgres", 0, supervise.Sample{CPU: pg.before}, supervise.Sample{CPU: pg.after}, records)
		c.Note = fmt.Sprintf("%d backends of database %s", pg.backends, pg.db)
		out = append(out, c)
	}
	return out
}

// sample reads /proc for every process it can.
func (s *system) sample() map[*proc]supervise.Sample {
	out := make(map[*proc]supervise.Sample, len(s.procs))
	for _, p := range s.procs {
		if v, err := p.Sample(); err == nil {
			out[p] = v
		}
	}
	return out
}

// stop ends the processes, stages before the broker; later calls do
// nothing.
func (s *system) stop(stderr io.Writer) {
	s.once.Do(func() {
		for i := len(s.procs) - 1; i >= 0; i-- {
			if err := s.procs[i].Stop(s.grace); err != nil {
				fmt.Fprintf(stderr, "bench: %s: %v\n", s.procs[i].Name(), err)
			}
		}
	})
}

// startProc starts exe with args and env added to bench's environment,
// its output going to <dir>/<name>.log.
func startProc(exe, dir, name string, env []string, args ...string) (*proc, error) {
	logf, err := os.Create(filepath.Join(dir, name+".log"))
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	sp, err := supervise.Start(supervise.Spec{Name: name, Path: exe, Args: args, Env: env, Output: logf})
	if err != nil {
		logf.Close()
		return nil, fmt.Errorf("bench: %w", err)
	}
	go func() { // exits with the process, once its output is written
		<-sp.Done()
		logf.Close()
	}()
	return &proc{Proc: sp}, nil
}

// await returns the last submatch of the first output line matching re.
func (p *proc) await(ctx context.Context, re *regexp.Regexp, within time.Duration) (string, error) {
	m, err := p.Await(ctx, re, within)
	if err != nil {
		return "", notReady(err)
	}
	return m[len(m)-1], nil
}

// notReady words a supervise.NotReadyError for bench's user, who finds the
// process's output in its log.
func notReady(err error) error {
	var nr *supervise.NotReadyError
	if errors.As(err, &nr) {
		return fmt.Errorf("bench: %w; see its log", err)
	}
	return err
}
