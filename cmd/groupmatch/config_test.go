package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// commandLines are the command lines whose flags the README documents:
// every command but bench, whose settings docs/performance.md describes.
var commandLines = [][]string{
	{"dev"}, {"serve"}, {"ingest"}, {"matcher"}, {"sink"}, {"broker"}, {"kafka"}, {"migrate"}, {"topics"},
	{"app", "create"}, {"app", "disable"}, {"directory", "load"}, {"healthcheck"}, {"prune"}, {"version"},
}

// helpOf runs "groupmatch <line> --help" in this process and returns what
// it printed.
func helpOf(t *testing.T, line []string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), append(append([]string{}, line...), "--help"), &out, &errOut)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("%v --help: %v, want flag.ErrHelp", line, err)
	}
	if code := exitCode(err, &bytes.Buffer{}); code != 0 {
		t.Errorf("%v --help exits %d, want 0", line, code)
	}
	return out.String() + errOut.String()
}

// helpFlag is a flag as --help lists it.
type helpFlag struct{ name, env string }

var (
	helpFlagLine = regexp.MustCompile(`^  -([a-z0-9-]+)`)
	helpEnv      = regexp.MustCompile(`\(([A-Z][A-Z0-9_]*)\)(?: \(default .*\))?$`)
)

// flagsOf parses --help output into its flags and their variables.
func flagsOf(help string) []helpFlag {
	var out []helpFlag
	for _, l := range strings.Split(help, "\n") {
		if m := helpFlagLine.FindStringSubmatch(l); m != nil {
			out = append(out, helpFlag{name: m[1]})
			continue
		}
		if len(out) > 0 && strings.HasPrefix(l, "    \t") {
			if m := helpEnv.FindStringSubmatch(l); m != nil {
				out[len(out)-1].env = m[1]
			}
		}
	}
	return out
}

// A bad environment value stops the command with a usage error (exit 2)
// naming the variable and the flag, never the value; the same value as a
// flag is rejected too.
func TestBadEnvironmentValues(t *testing.T) {
	for _, tt := range []struct {
		line        []string
		name, value string
		flag        string
	}{
		{[]string{"migrate"}, "DB_MAX_CONNS", "abc-secret-1", "--db-max-conns"},
		{[]string{"matcher"}, "PENDING_TIMEOUT", "90", "--pending-timeout"},
		{[]string{"sink"}, "DRAIN_DELAY", "5", "--drain-delay"},
		{[]string{"ingest"}, "RATE_LIMIT", "fast-secret-2", "--rate-limit"},
		{[]string{"ingest"}, "PPROF", "yes-secret-3", "--pprof"},
		{[]string{"topics"}, "TOPIC_PARTITIONS", "8.5", "--partitions"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(tt.name, tt.value)
			var out, errOut bytes.Buffer
			err := run(context.Background(), tt.line, &out, &errOut)
			var report bytes.Buffer
			if code := exitCode(err, &report); code != 2 {
				t.Fatalf("%v with %s set: exit %d (%v), want 2", tt.line, tt.name, code, err)
			}
			msg := report.String()
			if !strings.Contains(msg, tt.name) || !strings.Contains(msg, tt.flag) {
				t.Errorf("error %q names neither %s nor %s", msg, tt.name, tt.flag)
			}
			if strings.Contains(msg, tt.value) || strings.Contains(errOut.String(), tt.value) {
				t.Errorf("error %q echoes the value", msg)
			}
			// The same value on the command line is rejected as well.
			err = run(context.Background(), append(append([]string{}, tt.line...), tt.flag+"="+tt.value), &out, &errOut)
			if code := exitCode(err, &bytes.Buffer{}); code != 2 {
				t.Errorf("%s=%s: exit %d, want 2", tt.flag, tt.value, code)
			}
		})
	}
}

// The environment fills the flags the command line leaves out, with their
// own parsers; the command line wins; unset or empty variables leave the
// default.
func TestEnvironmentFallback(t *testing.T) {
	var o options
	fs := newFlagSet("sink [flags]", &bytes.Buffer{})
	o.addDatabase(fs)
	o.addStages(fs, []string{stageSink}, "", ":9182")
	t.Setenv("DB_MAX_CONNS", "17")
	t.Setenv("PENDING_TIMEOUT", "90s")
	t.Setenv("BATCH_DEADLINE", "")
	t.Setenv("SINK_CHUNK", "300")
	if err := parse(fs, []string{"--sink-chunk", "40"}, 0); err != nil {
		t.Fatal(err)
	}
	if o.dbMaxConns != 17 || o.pendingTimeout != 90*time.Second || o.batchDeadline != time.Hour || o.sinkChunk != 40 {
		t.Errorf("db-max-conns %d, pending-timeout %s, batch-deadline %s, sink-chunk %d; want 17, 1m30s, 1h0m0s, 40",
			o.dbMaxConns, o.pendingTimeout, o.batchDeadline, o.sinkChunk)
	}
}

// --help shows the coded defaults, never an environment value: a
// DATABASE_URL with a password stays hidden.
func TestHelpShowsNoEnvironmentValue(t *testing.T) {
	t.Setenv("DATABASE_URL", "postgres://u:s3cret-pw@db.example:5432/prod")
	t.Setenv("KAFKA_SASL_PASSWORD", "sasl-s3cret")
	t.Setenv("KAFKA_BROKERS", "env-broker.example:9093")
	t.Setenv("DB_MAX_CONNS", "77")
	for _, line := range append(commandLines, []string{"bench"}) {
		help := helpOf(t, line)
		for _, v := range []string{"s3cret", "env-broker", "77"} {
			if strings.Contains(help, v) {
				t.Errorf("%v --help shows the environment's %q:\n%s", line, v, help)
			}
		}
	}
	if help := helpOf(t, []string{"migrate"}); !strings.Contains(help, defaultDatabaseURL) {
		t.Errorf("migrate --help lacks the default database URL:\n%s", help)
	}
}

// Each stage lists only its own settings.
func TestStageHelpListsItsOwnFlags(t *testing.T) {
	own := map[string][]string{
		"ingest":  {"rate-limit", "max-in-flight", "tenant-rate", "trusted-proxies", "events-per-tenant"},
		"matcher": {"matcher-chunk", "matcher-consumers"},
		"sink":    {"sink-chunk", "sink-consumers", "max-groups-per-tenant", "batch-deadline", "events-per-tenant"},
	}
	for stage := range own {
		listed := map[string]bool{}
		for _, f := range flagsOf(helpOf(t, []string{stage})) {
			listed[f.name] = true
		}
		for other, flags := range own {
			for _, f := range flags {
				mine := false
				for _, g := range own[stage] {
					mine = mine || g == f
				}
				if listed[f] != mine {
					t.Errorf("%s --help lists --%s: %t, want %t (a flag of %s)", stage, f, listed[f], mine, other)
				}
			}
		}
	}
	serve := map[string]bool{}
	for _, f := range flagsOf(helpOf(t, []string{"serve"})) {
		serve[f.name] = true
	}
	for _, flags := range own {
		for _, f := range flags {
			if !serve[f] {
				t.Errorf("serve --help lacks --%s", f)
			}
		}
	}
}

// Exit statuses of the binary itself: 0 for help and version, 2 for a usage
// error, 1 for a failure at run time (here an unreachable database).
func TestExitCodes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := binary(t)
	for _, tt := range []struct {
		args []string
		env  []string
		want int
	}{
		{[]string{"version"}, nil, 0},
		{[]string{"migrate", "--help"}, nil, 0},
		{[]string{"no-such-command"}, nil, 2},
		{[]string{"migrate", "--no-such-flag"}, nil, 2},
		{[]string{"migrate"}, []string{"DB_MAX_CONNS=abc"}, 2},
		{[]string{"migrate"}, []string{"DATABASE_URL=postgres://u:pw-s3cret@127.0.0.1:notaport/none"}, 2},
		{[]string{"topics"}, []string{"KAFKA_SASL_MECHANISM=BOGUS", "KAFKA_SASL_PASSWORD=pw-s3cret"}, 2},
		{[]string{"ingest", "--rate-limit", "-1"}, nil, 2}, // Config.Validate: no restart fixes it
		{[]string{"sink", "--sink-chunk", "-5"}, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}, 2},
		{[]string{"sink"}, []string{"SINK_CONSUMERS=100000", "DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}, 2},
		{[]string{"matcher", "--matcher-chunk", "99999999"}, []string{"DATABASE_URL=postgres://postgres@127.0.0.1:1/none"}, 2},
		{[]string{"migrate"}, []string{"DATABASE_URL=postgres://postgres:pw-s3cret@127.0.0.1:1/none?connect_timeout=5"}, 1},
	} {
		cmd := exec.Command(bin, tt.args...)
		cmd.Env = append(os.Environ(), tt.env...)
		out, err := cmd.CombinedOutput()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tt.want {
			t.Errorf("groupmatch %v %v: exit %d, want %d\n%s", tt.args, tt.env, code, tt.want, out)
		}
		if strings.Contains(string(out), "pw-s3cret") {
			t.Errorf("groupmatch %v prints the database password:\n%s", tt.args, out)
		}
	}
}

func TestVersion(t *testing.T) {
	var out bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &out, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	b := readBuildInfo()
	for _, want := range []string{"groupmatch " + b.Version + "\n", "revision:", "modified:", "go:        " + runtime.Version() + "\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("version output lacks %q:\n%s", want, out.String())
		}
	}
	if b.Version == "" {
		t.Error("empty version")
	}
}

func TestBuildInfoMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	registerBuildInfo(reg)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "groupmatch_build_info" || len(mfs[0].GetMetric()) != 1 {
		t.Fatalf("gathered %v", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	b := readBuildInfo()
	if m.GetGauge().GetValue() != 1 || labels["goversion"] != runtime.Version() || labels["version"] != b.Version ||
		labels["revision"] != b.Revision || len(labels) != 3 {
		t.Errorf("groupmatch_build_info %v = %v", labels, m.GetGauge().GetValue())
	}
}

// The README's configuration table and the code agree: every flag with an
// environment variable has a row naming both, every row's flags and
// variables exist, and every flag without a variable is named in the
// README's command or configuration sections.
func TestReadmeConfigTable(t *testing.T) {
	raw, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	start := strings.Index(readme, "## Configuration")
	if start < 0 {
		t.Fatal("README has no Configuration section")
	}
	section := readme[start:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	tick := regexp.MustCompile("`(--[a-z0-9-]+|[A-Z][A-Z0-9_]+)`")
	rowEnvs := map[string]map[string]bool{} // flag -> variables of its rows
	tableEnvs := map[string]bool{}
	for _, l := range strings.Split(section, "\n") {
		cols := strings.Split(l, "|")
		if len(cols) < 5 || !strings.HasPrefix(l, "| `") {
			continue
		}
		var envs []string
		for _, m := range tick.FindAllStringSubmatch(cols[2], -1) {
			envs = append(envs, m[1])
			tableEnvs[m[1]] = true
		}
		for _, m := range tick.FindAllStringSubmatch(cols[1], -1) {
			if rowEnvs[m[1]] == nil {
				rowEnvs[m[1]] = map[string]bool{}
			}
			for _, e := range envs {
				rowEnvs[m[1]][e] = true
			}
		}
	}
	codeFlags, codeEnvs := map[string]bool{}, map[string]bool{}
	for _, line := range commandLines {
		for _, f := range flagsOf(helpOf(t, line)) {
			codeFlags["--"+f.name] = true
			if f.env == "" {
				if !strings.Contains(readme, "`--"+f.name) && !strings.Contains(readme, "--"+f.name+" ") {
					t.Errorf("README never names --%s (%v)", f.name, line)
				}
				continue
			}
			codeEnvs[f.env] = true
			if !rowEnvs["--"+f.name][f.env] {
				t.Errorf("README's configuration table has no row for --%s with %s (%v)", f.name, f.env, line)
			}
		}
	}
	for f := range rowEnvs {
		if !codeFlags[f] {
			t.Errorf("README's configuration table lists %s, which no command has", f)
		}
	}
	for e := range tableEnvs {
		if !codeEnvs[e] {
			t.Errorf("README's configuration table lists %s, which no flag reads", e)
		}
	}
}
