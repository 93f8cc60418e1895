package supervise

import "syscall"

// childProcAttr makes a child receive SIGTERM when its parent dies, so
// that no stage outlives an interrupted run.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
