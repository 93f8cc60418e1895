package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version is the release this binary was built as. Builds from a Git
// checkout also carry the VCS revision (go build stamps it); the
// Dockerfile, whose build context has no .git, sets both with
//
//	-ldflags "-X main.version=$VERSION -X main.revision=$REVISION"
var (
	version  = ""
	revision = ""
)

// buildInfo describes the running binary.
type buildInfo struct {
	Version   string // main.version, else the module version ("(devel)" for a local build)
	Revision  string // VCS revision, "" if unknown
	Time      string // VCS commit time, "" if unknown
	Modified  string // "true" if the work tree had uncommitted changes, "false", or "" if go build did not stamp it
	GoVersion string
}

// readBuildInfo reads runtime/debug.ReadBuildInfo and what -ldflags set.
func readBuildInfo() buildInfo {
	b := buildInfo{Version: version, Revision: revision, GoVersion: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		if b.Version == "" {
			b.Version = "unknown"
		}
		return b
	}
	if b.Version == "" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" {
		b.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			if b.Revision == "" {
				b.Revision = s.Value
			}
		case "vcs.time":
			b.Time = s.Value
		case "vcs.modified":
			b.Modified = s.Value
		}
	}
	return b
}

func cmdVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("version", stderr)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	b := readBuildInfo()
	fmt.Fprintf(stdout, "groupmatch %s\n", b.Version)
	rev := b.Revision
	if rev == "" {
		rev = "unknown"
	}
	fmt.Fprintf(stdout, "revision:  %s\n", rev)
	if b.Time != "" {
		fmt.Fprintf(stdout, "time:      %s\n", b.Time)
	}
	mod := b.Modified
	if mod == "" {
		mod = "unknown"
	}
	fmt.Fprintf(stdout, "modified:  %s\n", mod)
	fmt.Fprintf(stdout, "go:        %s\n", b.GoVersion)
	return nil
}

// registerBuildInfo registers groupmatch_build_info{version,revision,goversion} 1.
func registerBuildInfo(reg prometheus.Registerer) {
	b := readBuildInfo()
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "groupmatch_build_info",
		Help:        "Always 1; its labels name the version, VCS revision and Go version of the running binary.",
		ConstLabels: prometheus.Labels{"version": b.Version, "revision": b.Revision, "goversion": b.GoVersion},
	})
	g.Set(1)
	reg.MustRegister(g)
}
