//go:build !unix

package devenv

// lockFile does nothing where flock is unavailable: two brokers on one
// DataDir are then not prevented.
func lockFile(string) (func() error, error) {
	return func() error { return nil }, nil
}
