package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/groupmatch/groupmatch/supervise"
)

// Report is the outcome of one bench run; `--json FILE` writes it.
type Report struct {
	Version int       `json:"version"` // 1
	Date    time.Time `json:"date"`
	Machine Machine   `json:"machine"`
	Setup   Setup     `json:"setup"`
	// DirectorySeconds is how long loading the directory took (0 when
	// it was not loaded).
	DirectorySeconds float64         `json:"directorySeconds"`
	Pipeline         *PipelineResult `json:"pipeline,omitempty"`
	// Stage is the run of one stage alone (--stage).
	Stage    *StageResult    `json:"stage,omitempty"`
	Baseline *BaselineResult `json:"baseline,omitempty"`
	// Agreement compares the pipeline's results with the baseline's.
	Agreement *Agreement `json:"agreement,omitempty"`
	Headline  Headline   `json:"headline"`
}

// Machine describes where the run happened.
type Machine struct {
	CPUs              int     `json:"cpus"`
	CPUModel          string  `json:"cpuModel,omitempty"`
	MemoryMB          int64   `json:"memoryMB,omitempty"`
	Kernel            string  `json:"kernel,omitempty"`
	Go                string  `json:"go"`
	Postgres          string  `json:"postgres,omitempty"`
	Fsync             string  `json:"fsync,omitempty"`
	SynchronousCommit string  `json:"synchronousCommit,omitempty"`
	LoadAvgBefore     float64 `json:"loadAvgBefore"` // 1-minute load average when the run began
}

// Setup is the run's configuration.
type Setup struct {
	Mode         string   `json:"mode"` // processes, single or target
	Via          string   `json:"via"`  // http or kafka
	Workload     Workload `json:"workload"`
	Clients      int      `json:"clients"`
	Rate         float64  `json:"rate"` // offered records/s; 0 = as fast as possible
	Partitions   int      `json:"partitions,omitempty"`
	MatcherChunk int      `json:"matcherChunk,omitempty"`
	// MatcherConsumers is the consumer-group members per matcher process.
	MatcherConsumers int `json:"matcherConsumers,omitempty"`
	// SinkConsumers is the consumer-group members per sink process.
	SinkConsumers int `json:"sinkConsumers,omitempty"`
	SinkChunk     int `json:"sinkChunk,omitempty"`
	DBMaxConns    int `json:"dbMaxConns,omitempty"`
	// TenantRate is the per-tenant records quota a self-started ingest was
	// given (TENANT_RATE); 0 is off.
	TenantRate float64 `json:"tenantRate,omitempty"`
}

// MarshalJSON writes the workload's mix as its string form.
func (w Workload) MarshalJSON() ([]byte, error) {
	type plain Workload
	return json.Marshal(struct {
		plain
		Mix string `json:"mix"`
	}{plain(w), w.Mix.String()})
}

// PipelineResult is the pipeline's side of a run.
type PipelineResult struct {
	Records int `json:"records"`
	Batches int `json:"batches"`
	// Ingest: first request sent → last accepted (HTTP: answered 200;
	// Kafka: every batch past PENDING in the database).
	IngestSeconds       float64 `json:"ingestSeconds"`
	IngestRecordsPerSec float64 `json:"ingestRecordsPerSec"`
	// End to end: the first batch's accepted_at → the last batch's
	// finished_at, on the database's clock.
	EndToEndSeconds       float64 `json:"endToEndSeconds"`
	EndToEndRecordsPerSec float64 `json:"endToEndRecordsPerSec"`
	// Drain (--backlog): matcher and sink started → the last record
	// applied, the whole workload waiting in Kafka.
	DrainSeconds       float64 `json:"drainSeconds,omitempty"`
	DrainRecordsPerSec float64 `json:"drainRecordsPerSec,omitempty"`
	// BatchLatency is accepted_at → finished_at over the batches.
	BatchLatency Latency `json:"batchLatency"`
	// RequestLatency is the batchAdd round trip seen by the clients (HTTP).
	RequestLatency *Latency `json:"requestLatency,omitempty"`
	Retried        int64    `json:"retried"` // 429/503 answers retried
	Outcomes       Outcomes `json:"outcomes"`
	// Processes are the cost of each process over the drive, from the
	// first request to the last record applied.
	Processes []ProcessCost `json:"processes,omitempty"`
	// Chunks says how the matcher and the sink cut their work (a
	// self-started system only).
	Chunks map[string]StageChunks `json:"chunks,omitempty"`
	// Neighbour is the small tenant's side of a --neighbour run.
	Neighbour *NeighbourResult `json:"neighbour,omitempty"`
}

// StageResult is one stage measured alone (--stage): its whole input
// waits in Kafka before the stage's processes start, and the run ends when
// the stage's consumer group has committed every input message.
type StageResult struct {
	Stage     string `json:"stage"`     // matcher
	Instances int    `json:"instances"` // processes of the stage
	Records   int    `json:"records"`
	// StartupSeconds is the processes' start → the group's first commit
	// (joining the group, the first fetch and chunk).
	StartupSeconds float64 `json:"startupSeconds"`
	// Seconds and RecordsPerSec cover the first commit → the last; the
	// records committed in the first commit are not counted.
	Seconds       float64 `json:"seconds"`
	RecordsPerSec float64 `json:"recordsPerSec"`
	// Processes are the cost of each process from the stage's start to the
	// last commit, per record of the whole input.
	Processes []ProcessCost `json:"processes,omitempty"`
	// Chunks says how the stage cut its work (summed over instances).
	Chunks *StageChunks `json:"chunks,omitempty"`
}

// ProcessCost is one process's CPU and memory.
type ProcessCost struct {
	Name string `json:"name"`
	PID  int    `json:"pid,omitempty"`
	// CPUSeconds is user+system time used during the measured phase;
	// CPUSecondsPer1000 the same per 1,000 records of the workload.
	CPUSeconds        float64 `json:"cpuSeconds"`
	CPUSecondsPer1000 float64 `json:"cpuSecondsPer1000Records"`
	// PeakRSSMB is the process's largest resident set since it started
	// (VmHWM); 0 when unknown.
	PeakRSSMB float64 `json:"peakRssMB,omitempty"`
	Note      string  `json:"note,omitempty"`
}

// NewProcessCost computes a ProcessCost from samples before and after.
func NewProcessCost(name string, pid int, before, after supervise.Sample, records int) ProcessCost {
	cpu := (after.CPU - before.CPU).Seconds()
	return ProcessCost{
		Name: name, PID: pid, CPUSeconds: round3(cpu), CPUSecondsPer1000: round3(cpu / float64(records) * 1000),
		PeakRSSMB: round1(float64(after.PeakRSS) / (1 << 20)),
	}
}

// Agreement compares the pipeline's results with the baseline's: the same
// records must get the same outcomes, and every group the same members.
type Agreement struct {
	Outcomes    bool   `json:"outcomes"`
	Memberships bool   `json:"memberships"`
	Detail      string `json:"detail,omitempty"`
}

// Compare fills an Agreement.
func Compare(pipe, base Outcomes, pipeMembers, baseMembers map[string]int64) *Agreement {
	a := &Agreement{Outcomes: outcomesEqual(pipe, base), Memberships: len(pipeMembers) == len(baseMembers)}
	for g, n := range pipeMembers {
		if baseMembers[g] != n {
			a.Memberships = false
		}
	}
	var d []string
	if !a.Outcomes {
		d = append(d, fmt.Sprintf("outcomes: pipeline %+v, baseline %+v", pipe, base))
	}
	if !a.Memberships {
		d = append(d, fmt.Sprintf("members per group: pipeline %v, baseline %v", pipeMembers, baseMembers))
	}
	a.Detail = strings.Join(d, "; ")
	return a
}

func outcomesEqual(a, b Outcomes) bool {
	if a.Success != b.Success || a.Unmatched != b.Unmatched || a.Ambiguous != b.Ambiguous || a.Invalid != b.Invalid || a.Failed != b.Failed {
		return false
	}
	for k, v := range a.MatchedBy {
		if b.MatchedBy[k] != v {
			return false
		}
	}
	return true
}

// Headline holds the figures a reader wants first; the last line bench
// prints on standard output is this, as JSON.
type Headline struct {
	EndToEndRecordsPerSec float64 `json:"endToEndRecordsPerSec"`
	IngestRecordsPerSec   float64 `json:"ingestRecordsPerSec"`
	BatchP50Ms            float64 `json:"batchP50Ms"`
	BatchP99Ms            float64 `json:"batchP99Ms"`
	BaselineRecordsPerSec float64 `json:"baselineRecordsPerSec,omitempty"`
	// PipelineOverBaseline is end-to-end records/s over the baseline's.
	PipelineOverBaseline float64 `json:"pipelineOverBaseline,omitempty"`
	// StageRecordsPerSec is the stage's throughput alone (--stage).
	StageRecordsPerSec float64 `json:"stageRecordsPerSec,omitempty"`
	// PeakRSSMB is the largest peak RSS of the system's processes.
	PeakRSSMB float64 `json:"peakRssMB,omitempty"`
	// CPUSecondsPer1000 is the CPU of every measured process (PostgreSQL's
	// backends included when visible) per 1,000 records.
	CPUSecondsPer1000 float64 `json:"cpuSecondsPer1000Records,omitempty"`
	// NeighbourP50Ms, NeighbourP95Ms and NeighbourMaxMs are the small
	// tenant's batch latency, accept → final (--neighbour).
	NeighbourP50Ms float64 `json:"neighbourP50Ms,omitempty"`
	NeighbourP95Ms float64 `json:"neighbourP95Ms,omitempty"`
	NeighbourMaxMs float64 `json:"neighbourMaxMs,omitempty"`
}

// Finish computes the headline from the rest of the report.
func (r *Report) Finish() {
	h := &r.Headline
	if p := r.Pipeline; p != nil {
		h.EndToEndRecordsPerSec = p.EndToEndRecordsPerSec
		h.IngestRecordsPerSec = p.IngestRecordsPerSec
		h.BatchP50Ms, h.BatchP99Ms = p.BatchLatency.P50, p.BatchLatency.P99
		h.CPUSecondsPer1000, h.PeakRSSMB = costOf(p.Processes)
		if n := p.Neighbour; n != nil {
			h.NeighbourP50Ms, h.NeighbourP95Ms, h.NeighbourMaxMs = n.BatchLatency.P50, n.BatchLatency.P95, n.BatchLatency.Max
		}
	}
	if st := r.Stage; st != nil {
		h.StageRecordsPerSec = st.RecordsPerSec
		h.CPUSecondsPer1000, h.PeakRSSMB = costOf(st.Processes)
	}
	if b := r.Baseline; b != nil {
		h.BaselineRecordsPerSec = b.RecordsPerSec
		if r.Pipeline != nil && b.RecordsPerSec > 0 {
			h.PipelineOverBaseline = round3(r.Pipeline.EndToEndRecordsPerSec / b.RecordsPerSec)
		}
	}
}

// costOf sums the CPU per 1,000 records of the system's processes (the load
// generator's excluded) and finds their largest peak RSS.
func costOf(procs []ProcessCost) (cpuPer1000, peakRSSMB float64) {
	for _, c := range procs {
		peakRSSMB = max(peakRSSMB, c.PeakRSSMB)
		if c.Name != "bench" {
			cpuPer1000 += c.CPUSecondsPer1000
		}
	}
	return round3(cpuPer1000), peakRSSMB
}

// WriteJSON writes the report, indented, to path.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// WriteText writes the report for people, ending with the headline as one
// line of JSON.
func (r *Report) WriteText(w io.Writer) error {
	bw := bufio.NewWriter(w)
	m := r.Machine
	fmt.Fprintf(bw, "groupmatch bench, %s\n", r.Date.Format(time.RFC3339))
	fmt.Fprintf(bw, "machine: %d CPUs (%s), %d MB, Linux %s, %s, PostgreSQL %s (fsync %s, synchronous_commit %s), load average %.2f at start\n",
		m.CPUs, m.CPUModel, m.MemoryMB, m.Kernel, m.Go, m.Postgres, m.Fsync, m.SynchronousCommit, m.LoadAvgBefore)
	s := r.Setup
	wl := s.Workload
	fmt.Fprintf(bw, "setup: %s via %s, %s customers, %s records in requests of %d, mix %s, match rate %.2f, delete share %.2f, %d groups per record of %d, %d clients, rate %s\n",
		s.Mode, s.Via, thousands(float64(wl.Customers)), thousands(float64(wl.Records)), wl.BatchSize, wl.Mix, wl.MatchRate, wl.DeleteShare,
		wl.Groups, wl.GroupNames, s.Clients, rateText(s.Rate))
	if s.Partitions > 0 {
		fmt.Fprintf(bw, "       %d partitions, matcher chunk %d, %d consumers per matcher process, sink chunk %d, %d consumers per sink process, %d PostgreSQL connections per process, tenant rate %s\n",
			s.Partitions, s.MatcherChunk, s.MatcherConsumers, s.SinkChunk, s.SinkConsumers, s.DBMaxConns, tenantRateText(s.TenantRate))
	}
	if r.DirectorySeconds > 0 {
		fmt.Fprintf(bw, "directory: %s customers loaded in %.1f s\n", thousands(float64(wl.Customers)), r.DirectorySeconds)
	}
	if p := r.Pipeline; p != nil {
		fmt.Fprintf(bw, "pipeline:\n")
		fmt.Fprintf(bw, "  ingest accepted      %10s records/s  (%s records in %.1f s, %d retried)\n",
			thousands(p.IngestRecordsPerSec), thousands(float64(p.Records)), p.IngestSeconds, p.Retried)
		fmt.Fprintf(bw, "  end to end           %10s records/s  (first accept → last record applied: %.1f s)\n",
			thousands(p.EndToEndRecordsPerSec), p.EndToEndSeconds)
		if p.DrainSeconds > 0 {
			fmt.Fprintf(bw, "  backlog drained      %10s records/s  (matcher and sink started → last record applied: %.1f s)\n",
				thousands(p.DrainRecordsPerSec), p.DrainSeconds)
		}
		l := p.BatchLatency
		fmt.Fprintf(bw, "  batch accept→final   p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  max %.0f ms  (%d batches)\n", l.P50, l.P95, l.P99, l.Max, l.Count)
		if q := p.RequestLatency; q != nil {
			fmt.Fprintf(bw, "  batchAdd round trip  p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  max %.0f ms\n", q.P50, q.P95, q.P99, q.Max)
		}
		o := p.Outcomes
		fmt.Fprintf(bw, "  outcomes             success %d, unmatched %d, ambiguous %d, invalid %d, failed %d; matched by %s\n",
			o.Success, o.Unmatched, o.Ambiguous, o.Invalid, o.Failed, matchedByText(o.MatchedBy))
		for _, st := range []string{"matcher", "sink"} {
			if c, ok := p.Chunks[st]; ok {
				fmt.Fprintf(bw, "  %-7s chunks        %d, %.0f records each, %.1f ms each", st, c.Chunks, c.RecordsPerChunk, c.ChunkMs)
				if c.LookupMs > 0 {
					fmt.Fprintf(bw, " (directory look-up %.1f ms, %.0f values per query)", c.LookupMs, c.ValuesPerQuery)
				}
				fmt.Fprintf(bw, ", %.0f retries\n", c.Retries)
			}
		}
		writeProcesses(bw, p.Processes)
		if n := p.Neighbour; n != nil {
			l := n.BatchLatency
			fmt.Fprintf(bw, "neighbour: tenant %s (%s customers), a batch of %d records every %s while the big tenant's backlog drained:\n",
				n.Tenant, thousands(float64(n.Customers)), n.BatchSize, time.Duration(n.IntervalS*float64(time.Second)))
			fmt.Fprintf(bw, "  batch accept→final   p50 %.0f ms  p95 %.0f ms  p99 %.0f ms  max %.0f ms  (%d batches, %d retried)\n",
				l.P50, l.P95, l.P99, l.Max, l.Count, n.Retried)
			o := n.Outcomes
			fmt.Fprintf(bw, "  outcomes             success %d, unmatched %d, ambiguous %d, invalid %d, failed %d\n",
				o.Success, o.Unmatched, o.Ambiguous, o.Invalid, o.Failed)
			fmt.Fprintf(bw, "  big tenant           %10s records/s end to end, tenant rate %s\n", thousands(n.BigTenantRecordsPerSec), tenantRateText(s.TenantRate))
		}
	}
	if st := r.Stage; st != nil {
		fmt.Fprintf(bw, "%s alone (%d process(es), the whole input waiting in Kafka):\n", st.Stage, st.Instances)
		fmt.Fprintf(bw, "  resolved             %10s records/s  (%s records; first commit → last: %.1f s, start-up %.1f s)\n",
			thousands(st.RecordsPerSec), thousands(float64(st.Records)), st.Seconds, st.StartupSeconds)
		if c := st.Chunks; c != nil {
			fmt.Fprintf(bw, "  chunks               %d, %.0f records each, %.1f ms each (directory look-up %.1f ms, %.0f values per query), %.0f retries\n",
				c.Chunks, c.RecordsPerChunk, c.ChunkMs, c.LookupMs, c.ValuesPerQuery, c.Retries)
		}
		writeProcesses(bw, st.Processes)
	}
	if b := r.Baseline; b != nil {
		fmt.Fprintf(bw, "baseline (COPY + set-based SQL, %d workers, %d records per transaction):\n", b.Workers, b.ChunkRecords)
		fmt.Fprintf(bw, "  applied              %10s records/s  (%s records in %.1f s)\n", thousands(b.RecordsPerSec), thousands(float64(b.Records)), b.Seconds)
		if b.PostgresCPUSeconds > 0 {
			fmt.Fprintf(bw, "  postgres CPU         %10.2f s, %.3f s per 1000 records\n", b.PostgresCPUSeconds, b.PostgresCPUPer1000)
		}
		o := b.Outcomes
		fmt.Fprintf(bw, "  outcomes             success %d, unmatched %d, ambiguous %d; matched by %s\n",
			o.Success, o.Unmatched, o.Ambiguous, matchedByText(o.MatchedBy))
	}
	if a := r.Agreement; a != nil {
		fmt.Fprintf(bw, "pipeline and baseline agree: outcomes %v, members of every group %v\n", a.Outcomes, a.Memberships)
		if a.Detail != "" {
			fmt.Fprintf(bw, "  %s\n", a.Detail)
		}
	}
	h, err := json.Marshal(r.Headline)
	if err != nil {
		return err
	}
	bw.Write(h)
	bw.WriteByte('\n')
	return bw.Flush()
}

// writeProcesses writes a table of process costs.
func writeProcesses(bw *bufio.Writer, procs []ProcessCost) {
	if len(procs) == 0 {
		return
	}
	fmt.Fprintf(bw, "  %-22s %10s %14s %12s\n", "process", "CPU s", "CPU s/1000 rec", "peak RSS MB")
	for _, c := range procs {
		rss := "-"
		if c.PeakRSSMB > 0 {
			rss = strconv.FormatFloat(c.PeakRSSMB, 'f', 1, 64)
		}
		fmt.Fprintf(bw, "  %-22s %10.2f %14.3f %12s  %s\n", c.Name, c.CPUSeconds, c.CPUSecondsPer1000, rss, c.Note)
	}
}

func rateText(r float64) string {
	if r <= 0 {
		return "unlimited"
	}
	return thousands(r) + " records/s"
}

// tenantRateText describes the per-tenant records quota.
func tenantRateText(r float64) string {
	if r <= 0 {
		return "off"
	}
	return thousands(r) + " records/s"
}

func matchedByText(m map[string]int64) string {
	var parts []string
	for _, k := range []string{"unionid", "openid", "phone", "id"} {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// thousands formats x rounded to an integer with thousands separators.
func thousands(x float64) string {
	s := strconv.FormatInt(int64(x+0.5), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// Thousands formats x for progress lines.
func Thousands(x float64) string { return thousands(x) }

func round3(x float64) float64 { return float64(int64(x*1000+0.5)) / 1000 }

// DescribeMachine reads the machine and the database's settings.
func DescribeMachine(ctx context.Context, db *pgxpool.Pool) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range bytes.SplitSeq(b, []byte{'\n'}) {
			if k, v, ok := bytes.Cut(line, []byte{':'}); ok && string(bytes.TrimSpace(k)) == "model name" {
				m.CPUModel = string(bytes.TrimSpace(v))
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		m.MemoryMB = meminfoKB(b, "MemTotal:") >> 10
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.LoadAvgBefore = LoadAvg()
	if db != nil {
		_ = db.QueryRow(ctx, `SELECT current_setting('server_version'), current_setting('fsync'), current_setting('synchronous_commit')`).
			Scan(&m.Postgres, &m.Fsync, &m.SynchronousCommit)
	}
	return m
}

// LoadAvg is the 1-minute load average, or 0 when unknown.
func LoadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func round1(x float64) float64 { return float64(int64(x*10+0.5)) / 10 }

// StageChunks describes how a consuming stage cut its work, from its
// Prometheus metrics.
type StageChunks struct {
	Chunks          int64   `json:"chunks"`
	RecordsPerChunk float64 `json:"recordsPerChunk"`
	ChunkMs         float64 `json:"chunkMsAvg"`
	// LookupMs is the matcher's directory round trip per chunk.
	LookupMs float64 `json:"lookupMsAvg,omitempty"`
	// ValuesPerQuery is the distinct values a matcher look-up query asked
	// about, on average.
	ValuesPerQuery float64 `json:"valuesPerQuery,omitempty"`
	Retries        float64 `json:"retries"`
}

// ParseMetrics reads a /metrics answer in the Prometheus text format
// (prometheus/common's expfmt parser) and returns, for every metric name,
// the sum of its samples over all label sets; a histogram or summary gives
// <name>_count and <name>_sum. A malformed answer is an error.
func ParseMetrics(r io.Reader) (map[string]float64, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("bench: metrics: %w", err)
	}
	out := make(map[string]float64, len(families))
	for name, f := range families {
		for _, m := range f.GetMetric() {
			switch {
			case m.Counter != nil:
				out[name] += m.GetCounter().GetValue()
			case m.Gauge != nil:
				out[name] += m.GetGauge().GetValue()
			case m.Untyped != nil:
				out[name] += m.GetUntyped().GetValue()
			case m.Histogram != nil:
				out[name+"_count"] += float64(m.GetHistogram().GetSampleCount())
				out[name+"_sum"] += m.GetHistogram().GetSampleSum()
			case m.Summary != nil:
				out[name+"_count"] += float64(m.GetSummary().GetSampleCount())
				out[name+"_sum"] += m.GetSummary().GetSampleSum()
			}
		}
	}
	return out, nil
}

// ChunksOf reads a stage's chunk statistics from its metrics; records is
// how many records the stage consumed.
func ChunksOf(m map[string]float64, stage string) (StageChunks, bool) {
	n := m["groupmatch_"+stage+"_chunk_duration_seconds_count"]
	if n == 0 {
		return StageChunks{}, false
	}
	c := StageChunks{Chunks: int64(n), ChunkMs: round1(m["groupmatch_"+stage+"_chunk_duration_seconds_sum"] / n * 1000)}
	switch stage {
	case "matcher":
		c.RecordsPerChunk = round1(m["groupmatch_matcher_records_total"] / n)
		if l := m["groupmatch_matcher_lookup_duration_seconds_count"]; l > 0 {
			c.LookupMs = round1(m["groupmatch_matcher_lookup_duration_seconds_sum"] / l * 1000)
		}
		if q := m["groupmatch_matcher_lookup_values_count"]; q > 0 {
			c.ValuesPerQuery = round1(m["groupmatch_matcher_lookup_values_sum"] / q)
		}
	case "sink":
		c.RecordsPerChunk = round1(m["groupmatch_sink_records_total"] / n)
	}
	c.Retries = m["groupmatch_retries_total"]
	return c, true
}

// meminfoKB is the value, in kB, of the line of /proc/meminfo starting
// with key; 0 when there is none.
func meminfoKB(meminfo []byte, key string) int64 {
	for line := range bytes.SplitSeq(meminfo, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			if f := strings.Fields(string(v)); len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n
			}
		}
	}
	return 0
}
