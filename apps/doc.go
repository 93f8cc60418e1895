// Package apps manages tenants, self-built applications (自建应用) and their
// access tokens (SPEC §3). Secrets and tokens are random 256-bit values, so
// they are stored as SHA-256 hashes: a leaked table reveals no usable
// credential, and checking one costs a single index look-up.
//
// It never stores, logs or returns a secret or token after issuing it, and
// never touches batches, customers or groups.
package apps
