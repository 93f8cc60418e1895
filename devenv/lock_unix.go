//go:build unix

package devenv

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// errLocked means another process (or another Broker in this one) holds the
// lock.
var errLocked = errors.New("in use by another broker")

// lockFile takes an exclusive, non-blocking lock on path, creating it if
// needed. The returned function releases it. The lock dies with the
// process, so a crash never leaves it held.
func lockFile(path string) (func() error, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("lock %s: %w", path, errLocked)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f.Close, nil
}
