package devenv

import "syscall"

// kafkaProcAttr puts the JVM in a process group of its own, so that a
// Ctrl-C in a terminal reaches only the Go process, which then stops the
// broker cleanly, and kills the JVM when the process that started it dies
// (a test binary that timed out or panicked leaves no broker behind).
func kafkaProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
