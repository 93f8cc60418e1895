package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/supervise"
)

// buildBinary builds groupmatch once per test binary run.
var buildOnce struct {
	sync.Once
	path string
	err  error
}

func binary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "groupmatch-bin-")
		if err != nil {
			buildOnce.err = err
			return
		}
		buildOnce.path = filepath.Join(dir, "groupmatch")
		out, err := exec.Command("go", "build", "-o", buildOnce.path, ".").CombinedOutput()
		if err != nil {
			buildOnce.err = err
			buildOnce.path = string(out)
		}
	})
	if buildOnce.err != nil {
		t.Fatalf("go build: %v\n%s", buildOnce.err, buildOnce.path)
	}
	return buildOnce.path
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// proc is a groupmatch process started by a test: a supervise.Proc whose
// failures fail the test.
type proc struct {
	*supervise.Proc
	t    *testing.T
	name string
}

// startProc runs the binary with args and extra environment; the process is
// killed when the test ends if still running.
func startProc(t *testing.T, env []string, stdin io.Reader, args ...string) *proc {
	t.Helper()
	sp, err := supervise.Start(supervise.Spec{Path: binary(t), Args: args, Env: env, Stdin: stdin})
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{Proc: sp, t: t, name: sp.Name()}
	t.Cleanup(func() {
		if done, _ := p.Exited(); !done {
			p.Kill(10 * time.Second)
		}
		if t.Failed() || os.Getenv("GROUPMATCH_TEST_LOGS") != "" {
			t.Logf("output of %s:\n%s", p.name, p.output())
		}
	})
	return p
}

func (p *proc) output() string { return p.Output() }

// waitFor returns the last submatch of re in the process's output.
func (p *proc) waitFor(re *regexp.Regexp, within time.Duration) string {
	p.t.Helper()
	m, err := p.Await(context.Background(), re, within)
	if err != nil {
		p.t.Fatalf("%s did not print %s: %v:\n%s", p.name, re, err, p.output())
	}
	return m[len(m)-1]
}

// stop sends SIGTERM and waits for a clean exit within the shutdown
// timeout and 2 s.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.Stop(shutdownTimeout + 2*time.Second); err != nil {
		p.t.Errorf("%s: %v", p.name, err)
	}
}

// kill ends the process at once (SIGKILL) and waits for it.
func (p *proc) kill() {
	p.t.Helper()
	if !p.Kill(10 * time.Second) {
		p.t.Fatalf("%s did not die", p.name)
	}
}

// runProc runs a short command to completion and returns its stdout.
func runProc(t *testing.T, env []string, stdin io.Reader, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("groupmatch %s: %v\n%s%s", strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String()
}

// httpAddrRE finds the public (API) address in the "started" line of
// ingest, adminAddrRE the admin address (/healthz, /readyz, /metrics) in
// that of any stage; matcher and sink have no public address.
var (
	httpAddrRE  = regexp.MustCompile(`"msg":"started".*"http_addr":"([^"]+)"`)
	adminAddrRE = regexp.MustCompile(`"msg":"started".*"admin_addr":"([^"]+)"`)
)

// cluster is groupmatch run as separate processes of the built binary,
// on Apache Kafka with topics and consumer groups of its own.
type cluster struct {
	env     []string
	brokers string // KAFKA_BROKERS
	names   kafkaNames
	base    string // ingest's http://host:port
	ingest  *proc
	matcher *proc
	sink    *proc
}

// startCluster runs the stages on the shared broker.
func startCluster(t *testing.T, dbURL string) *cluster {
	t.Helper()
	return startClusterOn(t, dbURL, "")
}

// startClusterOn runs migrate, topics and the three stages against brokers
// (the shared broker when empty), with env added to their environment.
func startClusterOn(t *testing.T, dbURL, brokers string, env ...string) *cluster {
	t.Helper()
	if brokers == "" {
		brokers = testKafka(t)
	}
	c := &cluster{brokers: brokers, names: namesFor(t)}
	c.env = append([]string{"KAFKA_BROKERS=" + brokers, "TOPIC_PREFIX=" + c.names.topicPrefix, "GROUP_PREFIX=" + c.names.groupPrefix,
		"DATABASE_URL=" + dbURL, "HTTP_ADDR=127.0.0.1:0", "ADMIN_ADDR=127.0.0.1:0", "LOG_LEVEL=info"}, env...)
	runProc(t, c.env, nil, "migrate")
	runProc(t, c.env, nil, "topics", "--partitions", "4")
	waitTopics(t, brokers, c.topic("requests"), c.topic("records"), c.topic("resolved"), c.topic("events"), c.topic("dlq"), c.topic("directory"))
	c.ingest = c.start(t, "ingest")
	c.base = "http://" + c.ingest.waitFor(httpAddrRE, 30*time.Second)
	c.matcher = c.start(t, "matcher")
	c.matcher.waitFor(adminAddrRE, 30*time.Second)
	c.sink = c.start(t, "sink")
	c.sink.waitFor(adminAddrRE, 30*time.Second)
	return c
}

func (c *cluster) start(t *testing.T, stage string) *proc {
	return startProc(t, c.env, nil, stage)
}

// topic is the name of one of the cluster's topics: requests, records,
// resolved, events or dlq.
func (c *cluster) topic(name string) string { return c.names.topicPrefix + name }

// group is the consumer group of a stage.
func (c *cluster) group(stage string) string { return c.names.groupPrefix + stage }

// Each stage as its own process of the built binary: one batch end to end,
// then a graceful stop of every process.
func TestMultiProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	s := startSystemDB(t)
	c := startCluster(t, s.url)
	var creds struct {
		Tenant, InstanceAppid, InstanceSecrect string
	}
	out := runProc(t, c.env, nil, "app", "create", "--tenant", "multi", "--name", "crm", "--scope", "audience.group")
	if err := json.Unmarshal([]byte(out), &creds); err != nil || creds.InstanceAppid == "" || creds.Tenant != "multi" {
		t.Fatalf("app create printed %q: %v", out, err)
	}
	loaded := runProc(t, c.env, strings.NewReader(testDirectory+"not json\n"), "directory", "load", "--tenant", "multi", "-")
	if !strings.Contains(loaded, "loaded 5 customers from 6 lines (1 bad)") {
		t.Fatalf("directory load printed %q", loaded)
	}
	h := &system{t: t, base: c.base}
	var tok struct {
		Data struct{ OrgAccessToken string }
	}
	h.get("/api/open/app/getOrgAccessToken?instanceAppid="+creds.InstanceAppid+"&instanceSecrect="+creds.InstanceSecrect, "", 200, &tok)
	id := h.postBatch(tok.Data.OrgAccessToken, `{"publicParams": {"isMatching": true, "matchingType": 1, "optType": "add"},
		"data": [{"identityType": "unionid", "unionid": "union-1", "groups": "vip"}, {"identityType": "phone", "phone": "13800000009", "groups": "vip"}]}`)
	res := h.waitFinal(tok.Data.OrgAccessToken, id, 30*time.Second)
	if res.Status != "PARTIAL_SUCCESS" || res.Success != 1 || res.Ambiguous != 1 || res.MatchedBy["unionid"] != 1 {
		t.Fatalf("result %+v", res)
	}
	if got := h.members(tok.Data.OrgAccessToken, "vip", 10); !equalIDs(got, 1) {
		t.Fatalf("vip members %v, want 1", got)
	}
	for _, p := range []*proc{c.ingest, c.matcher, c.sink} {
		p.stop()
	}
}
