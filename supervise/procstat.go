package supervise

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Sample is what /proc says of one process at one moment.
type Sample struct {
	// CPU is the user and system time the process has used so far.
	CPU time.Duration
	// PeakRSS is the largest resident set the process has had (VmHWM);
	// RSS the current one (VmRSS). Bytes.
	PeakRSS, RSS int64
}

// ErrNoStats means /proc cannot tell: not Linux, or the process is gone.
var ErrNoStats = errors.New("supervise: process statistics unavailable")

// SampleProc reads /proc/<pid>/stat and /proc/<pid>/status of any
// process, child or not; it fails with ErrNoStats where there is no /proc.
func SampleProc(pid int) (Sample, error) {
	var s Sample
	f, err := procStatFields(pid)
	if err != nil {
		return s, err
	}
	s.CPU = ticks(f[11]) + ticks(f[12]) // utime, stime
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return s, ErrNoStats
	}
	s.PeakRSS = statusKB(status, "VmHWM:")
	s.RSS = statusKB(status, "VmRSS:")
	return s, nil
}

// procStatFields returns the fields of /proc/<pid>/stat after the command
// name: f[0] is the state (field 3 of proc(5)), f[11] utime, f[12] stime,
// f[13] cutime, f[14] cstime.
func procStatFields(pid int) ([]string, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil, ErrNoStats
	}
	// The command name is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, ErrNoStats
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return nil, ErrNoStats
	}
	return f, nil
}

func ticks(s string) time.Duration {
	n, _ := strconv.ParseInt(s, 10, 64)
	return time.Duration(n) * time.Second / time.Duration(clockTicks)
}

func statusKB(status []byte, key string) int64 {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if v, ok := bytes.CutPrefix(line, []byte(key)); ok {
			f := strings.Fields(string(v))
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n << 10
			}
		}
	}
	return 0
}

// clockTicks is USER_HZ, the unit of /proc's CPU times: AT_CLKTCK of the
// auxiliary vector, or 100 (every Linux architecture Go runs on).
var clockTicks = func() int64 {
	b, err := os.ReadFile("/proc/self/auxv")
	if err != nil {
		return 100
	}
	const atClkTck = 17
	for len(b) >= 16 {
		k, v := binary.NativeEndian.Uint64(b), binary.NativeEndian.Uint64(b[8:])
		if k == atClkTck && v > 0 {
			return int64(v)
		}
		b = b[16:]
	}
	return 100
}()
