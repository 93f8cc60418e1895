package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/groupmatch/groupmatch/supervise"
)

// PostgresCPU sums the CPU time of the PostgreSQL backends serving the
// database dbName on this machine (processes whose command line reads
// "postgres: … <user> <dbName> …"). A backend that exits between two
// samples takes its time with it, so compare samples of long-lived pools.
// ok is false when no such backend is visible (a remote server).
func PostgresCPU(dbName string) (cpu time.Duration, backends int, ok bool) {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0, 0, false
	}
	want := " " + dbName + " "
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.HasPrefix(cmd, []byte("postgres: ")) || !bytes.Contains(cmd, []byte(want)) {
			continue
		}
		s, err := supervise.SampleProc(pid)
		if err != nil {
			continue
		}
		cpu += s.CPU
		backends++
	}
	return cpu, backends, backends > 0
}
