package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/bench"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// benchDatabase returns a database name for a bench run and drops the
// database when the test ends.
func benchDatabase(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "gmbench_" + hex.EncodeToString(b)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, schematest.AdminURL())
		if err != nil {
			t.Logf("drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop %s: %v", name, err)
		}
	})
	return name
}

// runBenchCmd runs `groupmatch bench` with args on a fresh database and
// returns its report and the headline its last line printed.
func runBenchCmd(t *testing.T, args ...string) (bench.Report, bench.Headline) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "report.json")
	args = append([]string{"bench", "--database-url", schematest.AdminURL(), "--bench-database", benchDatabase(t),
		"--json", path}, args...)
	out := runProc(t, nil, nil, args...)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var h bench.Headline
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &h); err != nil {
		t.Fatalf("last line of bench's output is not the headline: %v\n%s", err, out)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r bench.Report
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("--json report: %v", err)
	}
	return r, h
}

// The bench instrument itself: a small run of every stage as its own
// process, with the baseline, must report sane figures, and the pipeline
// and the baseline must agree on every outcome and member.
func TestBenchSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const records = 5000
	r, h := runBenchCmd(t, "--customers", "2000", "--records", "5000", "--clients", "4", "--baseline")
	p := r.Pipeline
	if p == nil || r.Baseline == nil || r.Agreement == nil {
		t.Fatalf("report lacks a part: %+v", r)
	}
	if r.Setup.Mode != "processes" || r.Setup.Via != "http" || r.Setup.Workload.Records != records || r.Machine.CPUs < 1 {
		t.Errorf("setup %+v, machine %+v", r.Setup, r.Machine)
	}
	o := p.Outcomes
	if p.Records != records || p.Batches != records/500 || o.Success+o.Unmatched+o.Ambiguous+o.Invalid+o.Failed != records {
		t.Errorf("pipeline counted %d records in %d batches, outcomes %+v", p.Records, p.Batches, o)
	}
	if o.Success < records/2 || o.Unmatched == 0 || o.Invalid != 0 || o.Failed != 0 {
		t.Errorf("outcomes %+v: the workload matches about 92 %%", o)
	}
	if p.IngestRecordsPerSec <= 0 || p.EndToEndRecordsPerSec <= 0 || p.EndToEndRecordsPerSec > p.IngestRecordsPerSec*1.5 {
		t.Errorf("ingest %.0f/s, end to end %.0f/s", p.IngestRecordsPerSec, p.EndToEndRecordsPerSec)
	}
	l := p.BatchLatency
	if l.Count != records/500 || l.P50 <= 0 || l.P50 > l.P99 || l.P99 > l.Max {
		t.Errorf("batch latency %+v", l)
	}
	var names []string
	for _, c := range p.Processes {
		names = append(names, c.Name)
		if c.Name != "postgres" && c.Name != "bench" && (c.PeakRSSMB <= 0 || c.PID <= 0) {
			t.Errorf("process %+v: no peak RSS", c)
		}
		if c.CPUSeconds < 0 || c.CPUSecondsPer1000 < 0 {
			t.Errorf("process %+v: negative CPU", c)
		}
	}
	for _, want := range []string{"broker", "ingest", "matcher", "sink", "bench"} {
		if !slices.Contains(names, want) {
			t.Errorf("no cost reported for %s (have %v)", want, names)
		}
	}
	if c := p.Chunks["sink"]; c.Chunks == 0 || c.RecordsPerChunk <= 0 {
		t.Errorf("sink chunks %+v", p.Chunks)
	}
	if b := r.Baseline; b.Records != records || b.RecordsPerSec <= 0 {
		t.Errorf("baseline %+v", b)
	}
	if !r.Agreement.Outcomes || !r.Agreement.Memberships {
		t.Errorf("pipeline and baseline disagree: %s", r.Agreement.Detail)
	}
	if h.EndToEndRecordsPerSec != p.EndToEndRecordsPerSec || h.BaselineRecordsPerSec != r.Baseline.RecordsPerSec ||
		h.PipelineOverBaseline <= 0 || h.PeakRSSMB <= 0 || h.BatchP99Ms != l.P99 {
		t.Errorf("headline %+v does not match the report", h)
	}
}

// --single runs one dev process; --via kafka publishes to the requests
// topic.
func TestBenchSingleViaKafka(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	r, h := runBenchCmd(t, "--customers", "1000", "--records", "2000", "--single", "--via", "kafka")
	p := r.Pipeline
	if r.Setup.Mode != "single" || p == nil || p.Batches != 4 || p.IngestRecordsPerSec <= 0 || r.Baseline != nil {
		t.Fatalf("report %+v", r)
	}
	if len(p.Processes) == 0 || p.Processes[0].Name != "dev" || p.Processes[0].PeakRSSMB <= 0 || h.PeakRSSMB != p.Processes[0].PeakRSSMB {
		t.Errorf("processes %+v, headline %+v", p.Processes, h)
	}
}

// --stage matcher measures the matcher alone: every record waits in Kafka
// before the matcher starts, the sink never runs, and the report covers the
// matcher's processes only.
func TestBenchStageMatcher(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const records = 6000
	r, h := runBenchCmd(t, "--customers", "2000", "--records", "6000", "--stage", "matcher", "--instances", "2",
		"--matcher-chunk", "500")
	st := r.Stage
	if st == nil || r.Pipeline != nil || r.Baseline != nil {
		t.Fatalf("report: stage %+v, pipeline %+v, baseline %+v", st, r.Pipeline, r.Baseline)
	}
	if st.Stage != "matcher" || st.Instances != 2 || st.Records != records || r.Setup.MatcherConsumers != matcher.DefaultConsumers {
		t.Errorf("stage %+v, setup %+v", st, r.Setup)
	}
	if st.RecordsPerSec <= 0 || st.Seconds <= 0 || st.StartupSeconds < 0 || h.StageRecordsPerSec != st.RecordsPerSec {
		t.Errorf("stage %+v, headline %+v", st, h)
	}
	// Chunks of at most 500 records, every record resolved once.
	if c := st.Chunks; c == nil || c.Chunks < records/500 || c.RecordsPerChunk <= 0 || c.RecordsPerChunk > 500 ||
		float64(c.Chunks)*c.RecordsPerChunk < records*0.99 || c.ValuesPerQuery <= 0 || c.ValuesPerQuery > 500 {
		t.Errorf("chunks %+v", st.Chunks)
	}
	var names []string
	for _, c := range st.Processes {
		names = append(names, c.Name)
		if c.CPUSeconds < 0 {
			t.Errorf("process %+v: negative CPU", c)
		}
	}
	for _, want := range []string{"broker", "ingest", "matcher-1", "matcher-2"} {
		if !slices.Contains(names, want) {
			t.Errorf("no cost reported for %s (have %v)", want, names)
		}
	}
	if slices.Contains(names, "sink") {
		t.Errorf("a sink ran: %v", names)
	}
}

func TestBenchStageFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--stage", "sink"}, "--stage must be matcher"},
		{[]string{"--stage", "matcher", "--single"}, "--stage needs the stages as separate processes"},
		{[]string{"--stage", "matcher", "--baseline"}, "excludes --baseline"},
		{[]string{"--stage", "matcher", "--instances", "0"}, "--instances must be at least 1"},
	} {
		err := cmdBench(context.Background(), tt.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("bench %v: %v, want an error saying %q", tt.args, err, tt.want)
		}
	}
}

// --neighbour: while the workload drains, a second tenant sends a batch of
// --neighbour-batch records every --neighbour-interval; the report gives
// that tenant's batch latency and the big tenant's throughput, and only
// the big tenant's batches count in the pipeline's figures.
func TestBenchNeighbour(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	const records = 20000
	r, h := runBenchCmd(t, "--customers", "2000", "--records", "20000", "--single", "--neighbour",
		"--neighbour-interval", "100ms", "--neighbour-batch", "10", "--neighbour-customers", "500")
	p := r.Pipeline
	if p == nil || p.Neighbour == nil {
		t.Fatalf("report lacks the neighbour: %+v", r)
	}
	n := p.Neighbour
	if p.Records != records || p.Batches != records/500 || p.BatchLatency.Count != records/500 {
		t.Errorf("the big tenant's figures count other batches: %d records, %d batches, latency %+v", p.Records, p.Batches, p.BatchLatency)
	}
	if n.Tenant != "bench-neighbour" || n.BatchSize != 10 || n.Customers != 500 || n.IntervalS != 0.1 || n.Batches < 2 {
		t.Errorf("neighbour %+v", n)
	}
	l, o := n.BatchLatency, n.Outcomes
	if l.Count != n.Batches || l.P50 <= 0 || l.P50 > l.P95 || l.P95 > l.Max {
		t.Errorf("neighbour latency %+v over %d batches", l, n.Batches)
	}
	if o.Success+o.Unmatched+o.Ambiguous+o.Invalid+o.Failed != int64(10*n.Batches) || o.Success == 0 || o.Failed != 0 {
		t.Errorf("neighbour outcomes %+v over %d batches of 10", o, n.Batches)
	}
	if n.BigTenantRecordsPerSec != p.EndToEndRecordsPerSec || n.BigTenantRecordsPerSec <= 0 {
		t.Errorf("big tenant %.0f records/s, pipeline end to end %.0f", n.BigTenantRecordsPerSec, p.EndToEndRecordsPerSec)
	}
	if h.NeighbourP50Ms != l.P50 || h.NeighbourP95Ms != l.P95 || h.NeighbourMaxMs != l.Max {
		t.Errorf("headline %+v does not match the neighbour's latency %+v", h, l)
	}
	if r.Setup.TenantRate != 0 {
		t.Errorf("tenant rate %v, want off", r.Setup.TenantRate)
	}
}

// The stage processes bench starts get --tenant-rate as TENANT_RATE, the
// stages' environment fallback of their --tenant-rate.
func TestBenchTenantRateEnv(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{nil, "TENANT_RATE=0"},
		{[]string{"--tenant-rate", "2000"}, "TENANT_RATE=2000"},
		{[]string{"--tenant-rate", "12.5"}, "TENANT_RATE=12.5"},
	} {
		var f benchFlags
		fs := newFlagSet(benchSynopsis, io.Discard)
		f.register(fs)
		if err := parse(fs, tt.args, 0); err != nil {
			t.Fatal(err)
		}
		if got := f.cfg.StageEnv(); !slices.Equal(got, []string{tt.want}) {
			t.Errorf("bench %v: stage environment %v, want %s", tt.args, got, tt.want)
		}
	}
}

func TestBenchNeighbourFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--neighbour", "--backlog"}, "--neighbour needs the pipeline draining"},
		{[]string{"--neighbour", "--stage", "matcher"}, "--neighbour needs the pipeline draining"},
		{[]string{"--neighbour", "--neighbour-batch", "501"}, "--neighbour-batch 1 to 500"},
		{[]string{"--neighbour", "--neighbour-interval", "0s"}, "--neighbour-interval must be positive"},
		{[]string{"--neighbour", "--neighbour-tenant", "bench"}, "--neighbour-tenant must differ"},
		{[]string{"--neighbour", "--neighbour-customers", "10"}, "customers must be at least 100 (of the neighbour)"},
		{[]string{"--tenant-rate", "-1"}, "--tenant-rate must be at least 0"},
		{[]string{"--tenant-rate", "100", "--target", "http://127.0.0.1:1"}, "a --target has its own"},
	} {
		err := cmdBench(context.Background(), tt.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("bench %v: %v, want an error saying %q", tt.args, err, tt.want)
		}
	}
}

// With --tenant-rate the ingest bench starts gets the quota (TENANT_RATE):
// the big tenant is answered 429 and held to about its quota, while the
// small tenant, far below it, never is. Skipped until ingest has the
// quota (issue 11).
func TestBenchNeighbourTenantRate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	help, _ := exec.Command(binary(t), "ingest", "--help").CombinedOutput()
	if !strings.Contains(string(help), "-tenant-rate") {
		t.Skip("ingest has no --tenant-rate yet (issue 11)")
	}
	const records, quota = 10000, 2500
	r, _ := runBenchCmd(t, "--customers", "1000", "--records", "10000", "--neighbour", "--neighbour-interval", "200ms",
		"--neighbour-customers", "200", "--tenant-rate", "2500")
	p := r.Pipeline
	if r.Setup.TenantRate != quota || p == nil || p.Neighbour == nil {
		t.Fatalf("setup %+v, pipeline %+v", r.Setup, p)
	}
	// The quota's burst lets the first records through at once; the rest
	// wait for it.
	if p.Retried == 0 || p.IngestRecordsPerSec > 1.5*quota {
		t.Errorf("big tenant: %d answers retried, ingest accepted %.0f records/s, want 429s and at most about %d/s",
			p.Retried, p.IngestRecordsPerSec, quota)
	}
	if n := p.Neighbour; n.Retried != 0 || n.Batches < 2 || n.BatchLatency.Count != n.Batches {
		t.Errorf("neighbour %+v: want every batch accepted at once", n)
	}
	if o := p.Outcomes; o.Success+o.Unmatched+o.Ambiguous+o.Invalid+o.Failed != records {
		t.Errorf("outcomes %+v, want %d records", o, records)
	}
}
