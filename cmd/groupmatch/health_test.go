package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// cuttableProxy forwards TCP connections to target until cut, which closes
// the listener and every connection, as a PostgreSQL that went away.
type cuttableProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	cutted bool
}

func newCuttableProxy(t *testing.T, target string) *cuttableProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cuttableProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(p.cut)
	return p
}

func (p *cuttableProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		if p.cutted {
			p.mu.Unlock()
			c.Close()
			up.Close()
			return
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		go func() { _, _ = io.Copy(up, c); up.Close() }()
		go func() { _, _ = io.Copy(c, up); c.Close() }()
	}
}

func (p *cuttableProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cutted = true
	p.ln.Close()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func getStatus(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// /healthz, /readyz, /metrics and /debug/pprof/ are served on the admin
// address and not on the public one. /healthz answers while the process
// lives; /readyz only while PostgreSQL (and Kafka) answer, and its answer
// names what is down without host, user or database. The healthcheck
// command reports the same.
func TestAdminListenerAndReadiness(t *testing.T) {
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	dbURL, err := url.Parse(schematest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	dbName := strings.TrimPrefix(dbURL.Path, "/")
	proxy := newCuttableProxy(t, dbURL.Host)
	dbURL.Host = proxy.ln.Addr().String()
	o := &options{
		brokers: b.Addr(), databaseURL: dbURL.String(), httpAddr: "127.0.0.1:0", adminAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 2, rateLimit: 100, rateBurst: 100, matcherChunk: 100, sinkChunk: 100,
		dbMaxConns: 4, pendingTimeout: 30 * time.Second, pprof: true,
	}
	base, admin := runStagesOn(t, o, slog.New(slog.NewJSONHandler(io.Discard, nil)), true)
	ctx := context.Background()

	for _, path := range []string{"/healthz", "/readyz", "/metrics", "/debug/pprof/"} {
		if code, body := getStatus(t, admin+path); code != http.StatusOK {
			t.Errorf("admin %s: %d %.200s", path, code, body)
		}
		if code, _ := getStatus(t, base+path); code != http.StatusNotFound {
			t.Errorf("public %s: %d, want 404 (served on the admin address only)", path, code)
		}
	}
	// A fresh process: the pool's series, and label values nothing has
	// happened to yet at 0.
	_, body := getStatus(t, admin+"/metrics")
	for _, want := range []string{
		`groupmatch_db_pool_max_connections{stage="ingest+matcher+sink"} 4`,
		`groupmatch_batches_finished_total{stage="sink",status="FAILED"} 0`,
		`groupmatch_dlq_messages_total{class="undecodable",stage="sink"} 0`,
		`groupmatch_dlq_messages_total{class="panic",stage="matcher"} 0`,
		`groupmatch_sink_records_total{outcome="FAILED",stage="sink"} 0`,
		`groupmatch_matcher_records_total{matched_by="phone",outcome="MATCHED",stage="matcher"} 0`,
		`groupmatch_feed_failures_total{class="permanent",stage="ingest"} 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("a fresh process's scrape lacks %s", want)
		}
	}
	if code, _ := getStatus(t, admin+"/api/integrate/audience/group/rel/batchResult?batchId=1"); code != http.StatusNotFound {
		t.Errorf("admin serves the API: %d, want 404", code)
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"healthcheck", "--url", admin + "/readyz"}, &out, io.Discard); err != nil {
		t.Fatalf("healthcheck of a ready process: %v", err)
	}

	proxy.cut()
	code, body := getStatus(t, admin+"/readyz")
	if code != http.StatusServiceUnavailable || body != "postgres: unreachable\n" {
		t.Errorf("/readyz without PostgreSQL: %d %q, want 503 \"postgres: unreachable\"", code, body)
	}
	// The exact answer above leaves no room for a user name (the test's is
	// "postgres", the answer's first word); host, port and database:
	for _, secret := range []string{dbURL.Host, dbURL.Hostname(), dbURL.Port(), dbName} {
		if secret != "" && strings.Contains(body, secret) {
			t.Errorf("/readyz answer %q names %q", body, secret)
		}
	}
	if code, body := getStatus(t, admin+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz without PostgreSQL: %d %q, want 200 (alive)", code, body)
	}
	err = run(ctx, []string{"healthcheck", "--url", admin + "/readyz"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("healthcheck of an unready process: %v, want a 503 failure", err)
	}
	if err := run(ctx, []string{"healthcheck", "--url", admin + "/healthz"}, io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of /healthz: %v", err)
	}
}

// Once shutdown begins a process is not ready, whatever its dependencies
// say (they are not even asked).
func TestNotReadyDuringShutdown(t *testing.T) {
	running, stop := context.WithCancel(context.Background())
	stop()
	rd := &readiness{log: slog.New(slog.NewJSONHandler(io.Discard, nil))}
	if down := rd.check(context.Background(), running, nil, nil, nil, nil); !slices.Equal(down, []string{"shutting down"}) {
		t.Fatalf("readiness during shutdown = %q, want shutting down", down)
	}
}

// The healthcheck command fails on a refused connection.
func TestHealthcheckRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := run(context.Background(), []string{"healthcheck", "--url", "http://" + addr + "/healthz", "--timeout", "1s"}, io.Discard, io.Discard); err == nil {
		t.Fatal("healthcheck of a closed port succeeded")
	}
}

// runStagesOn creates the topics and runs every stage in this process on
// o's Kafka and PostgreSQL until the test ends; it returns the base URLs of
// the public (API) and admin listeners. An empty o.adminAddr becomes
// 127.0.0.1:0. With dbMayVanish, the stages may stop with an error.
func runStagesOn(t *testing.T, o *options, log *slog.Logger, dbMayVanish bool) (base, admin string) {
	t.Helper()
	return runTheseStagesOn(t, o, log, dbMayVanish, stageIngest, stageMatcher, stageSink)
}

// runTheseStagesOn is runStagesOn for the given stages only; base is
// "http://" when ingest does not run.
func runTheseStagesOn(t *testing.T, o *options, log *slog.Logger, dbMayVanish bool, stages ...string) (base, admin string) {
	t.Helper()
	o.statements = statements
	if o.adminAddr == "" {
		o.adminAddr = "127.0.0.1:0"
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := createTopics(ctx, o); err != nil {
		cancel()
		t.Fatal(err)
	}
	addr := make(chan [2]string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runStages(ctx, o, stages, log, func(h, a string) { addr <- [2]string{h, a} })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !dbMayVanish {
				t.Errorf("stages stopped with %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("stages did not stop within 20 s")
		}
	})
	select {
	case a := <-addr:
		return "http://" + a[0], "http://" + a[1]
	case err := <-done:
		t.Fatalf("stages did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("stages did not start within 60 s")
	}
	return "", ""
}
