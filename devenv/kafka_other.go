//go:build !linux

package devenv

import "syscall"

// kafkaProcAttr sets nothing where Linux's parent-death signal is missing.
func kafkaProcAttr() *syscall.SysProcAttr { return nil }
