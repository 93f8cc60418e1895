package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
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

// /healthz answers while the process lives; /readyz only while PostgreSQL
// (and Kafka) answer. The healthcheck command reports the same.
func TestReadinessFollowsPostgres(t *testing.T) {
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	dbURL, err := url.Parse(schematest.NewDatabase(t))
	if err != nil {
		t.Fatal(err)
	}
	proxy := newCuttableProxy(t, dbURL.Host)
	dbURL.Host = proxy.ln.Addr().String()
	o := &options{
		brokers: b.Addr(), databaseURL: dbURL.String(), httpAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 2, rateLimit: 100, rateBurst: 100, matcherChunk: 100, sinkChunk: 100,
		dbMaxConns: 4, pendingTimeout: 30 * time.Second,
	}
	base := runStagesOn(t, o, slog.New(slog.NewJSONHandler(io.Discard, nil)), true)
	ctx := context.Background()

	if code, body := getStatus(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz before the cut: %d %s", code, body)
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"healthcheck", "--url", base + "/readyz"}, &out, io.Discard); err != nil {
		t.Fatalf("healthcheck of a ready process: %v", err)
	}

	proxy.cut()
	if code, body := getStatus(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "postgres unreachable") {
		t.Errorf("/readyz without PostgreSQL: %d %q, want 503 postgres unreachable", code, body)
	}
	if code, body := getStatus(t, base+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz without PostgreSQL: %d %q, want 200 (alive)", code, body)
	}
	err = run(ctx, []string{"healthcheck", "--url", base + "/readyz"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "503") {
		t.Errorf("healthcheck of an unready process: %v, want a 503 failure", err)
	}
	if err := run(ctx, []string{"healthcheck", "--url", base + "/healthz"}, io.Discard, io.Discard); err != nil {
		t.Errorf("healthcheck of /healthz: %v", err)
	}
}

// Once shutdown begins a process is not ready, whatever its dependencies
// say (they are not even asked).
func TestNotReadyDuringShutdown(t *testing.T) {
	running, stop := context.WithCancel(context.Background())
	stop()
	if err := ready(context.Background(), running, nil, nil, nil, nil); err == nil || err.Error() != "shutting down" {
		t.Fatalf("ready during shutdown = %v, want shutting down", err)
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
// o's Kafka and PostgreSQL until the test ends; it returns the HTTP base
// URL. With dbMayVanish, the stages may stop with an error.
func runStagesOn(t *testing.T, o *options, log *slog.Logger, dbMayVanish bool) string {
	t.Helper()
	o.statements = statements
	ctx, cancel := context.WithCancel(context.Background())
	if err := createTopics(ctx, o); err != nil {
		cancel()
		t.Fatal(err)
	}
	addr := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- runStages(ctx, o, []string{stageIngest, stageMatcher, stageSink}, log, func(a string) { addr <- a })
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
		return "http://" + a
	case err := <-done:
		t.Fatalf("stages did not start: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("stages did not start within 60 s")
	}
	return ""
}
