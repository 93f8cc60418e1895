package main

import "syscall"

// childProcAttr makes a process bench starts receive SIGTERM when bench
// dies, so that no stage outlives an interrupted run.
func childProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
}
