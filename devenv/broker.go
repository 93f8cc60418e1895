package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/twmb/franz-go/pkg/kfake"
)

// DefaultBrokerAddr is the address StartBroker listens on when
// BrokerConfig.Addr is empty.
const DefaultBrokerAddr = "127.0.0.1:9092"

// DefaultPartitions is the partition count of auto-created topics when
// BrokerConfig.Partitions is zero.
const DefaultPartitions = 8

// brokerLockFile is the file in BrokerConfig.DataDir that StartBroker holds
// an exclusive lock on, so that two brokers never share one log.
const brokerLockFile = "groupmatch-broker.lock"

// BrokerConfig configures StartBroker. Zero values take the documented
// defaults.
type BrokerConfig struct {
	// Addr is the host:port to listen on; default DefaultBrokerAddr
	// ("127.0.0.1:9092"). Port 0 lets the OS pick one; Broker.Addr reports
	// it. The host is also the one advertised to clients in metadata, so it
	// must be an address clients can dial.
	Addr string
	// DataDir, if set, is where the broker keeps its log, topics and
	// committed consumer-group offsets (kfake.DataDir); a broker started
	// later on the same DataDir reloads all of them. The directory is
	// created if missing and may be used by one broker at a time. Empty
	// keeps everything in memory, lost on Close.
	DataDir string
	// SyncWrites fsyncs each produced batch before it is acknowledged
	// (kfake.SyncWrites). Without it, an acknowledged record survives
	// Close and a crash of the process, but not a crash of the machine.
	SyncWrites bool
	// Partitions is the partition count of topics created automatically
	// (on metadata requests or CreateTopics with -1 partitions); default
	// DefaultPartitions (8).
	Partitions int
	// Logger receives the broker's warnings and errors; kfake's info and
	// debug messages are dropped. Nil discards everything.
	Logger *slog.Logger
}

// Broker is a running single-node Kafka-protocol broker. Its methods are
// safe for concurrent use.
type Broker struct {
	cluster *kfake.Cluster
	addr    string
	unlock  func() error

	closeOnce sync.Once
}

// StartBroker starts a single-node in-process Kafka-protocol broker that
// creates topics automatically. It returns once the broker accepts
// connections. With cfg.DataDir set, the broker first reloads the state
// persisted there by an earlier broker; an error means nothing was started
// (the address is in use, the DataDir is locked by another broker or its
// contents cannot be loaded).
func StartBroker(cfg BrokerConfig) (*Broker, error) {
	cfg = cfg.withDefaults()
	if cfg.Partitions < 0 {
		return nil, fmt.Errorf("devenv: broker: partitions must be positive, got %d", cfg.Partitions)
	}
	host, portStr, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("devenv: broker: address %q: %w", cfg.Addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("devenv: broker: address %q: bad port: %w", cfg.Addr, err)
	}

	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(int(port)),
		// kfake always asks for 127.0.0.1:<port>; listen on the host we
		// were given instead, keeping the port kfake asked for.
		kfake.ListenFn(func(network, address string) (net.Listener, error) {
			_, p, err := net.SplitHostPort(address)
			if err != nil {
				return nil, err
			}
			return net.Listen(network, net.JoinHostPort(host, p))
		}),
		kfake.AllowAutoTopicCreation(),
		kfake.DefaultNumPartitions(cfg.Partitions),
	}
	if cfg.Logger != nil {
		opts = append(opts, kfake.WithLogger(slogBridge{cfg.Logger}))
	}

	unlock := func() error { return nil }
	if cfg.DataDir != "" {
		if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
			return nil, fmt.Errorf("devenv: broker: data dir: %w", err)
		}
		unlock, err = lockFile(filepath.Join(cfg.DataDir, brokerLockFile))
		if err != nil {
			return nil, fmt.Errorf("devenv: broker: data dir %s: %w", cfg.DataDir, err)
		}
		opts = append(opts, kfake.DataDir(cfg.DataDir))
		if cfg.SyncWrites {
			opts = append(opts, kfake.SyncWrites())
		}
	}

	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("devenv: broker: %w", err), unlock())
	}
	addrs := c.ListenAddrs()
	if len(addrs) != 1 {
		c.Close()
		return nil, errors.Join(fmt.Errorf("devenv: broker: listening on %d addresses, want 1", len(addrs)), unlock())
	}
	return &Broker{cluster: c, addr: addrs[0], unlock: unlock}, nil
}

// Addr returns the host:port the broker listens on, with the port the OS
// chose when BrokerConfig.Addr asked for port 0.
func (b *Broker) Addr() string { return b.addr }

// Cluster returns the underlying kfake cluster, for fault injection in
// tests. Closing it directly skips releasing the DataDir lock; use Close.
func (b *Broker) Cluster() *kfake.Cluster { return b.cluster }

// Close stops the broker: it stops accepting connections, drops the open
// ones, writes its state to DataDir (if any) and releases the DataDir. It
// returns once a new broker can start on the same DataDir. Calls after the
// first do nothing.
func (b *Broker) Close() {
	b.closeOnce.Do(func() {
		b.cluster.Close()
		// An unlock error means the lock file could not be closed; the
		// lock is released with the descriptor regardless.
		_ = b.unlock()
	})
}

// withDefaults returns c with its zero fields set to their defaults.
func (c BrokerConfig) withDefaults() BrokerConfig {
	if c.Addr == "" {
		c.Addr = DefaultBrokerAddr
	}
	if c.Partitions == 0 {
		c.Partitions = DefaultPartitions
	}
	return c
}

// slogBridge passes kfake's warnings and errors to a slog.Logger and drops
// its info and debug messages.
type slogBridge struct{ l *slog.Logger }

var _ kfake.Logger = slogBridge{}

// Logf implements kfake.Logger.
func (s slogBridge) Logf(level kfake.LogLevel, format string, args ...any) {
	var sl slog.Level
	switch level {
	case kfake.LogLevelError:
		sl = slog.LevelError
	case kfake.LogLevelWarn:
		sl = slog.LevelWarn
	default:
		return
	}
	ctx := context.Background()
	if !s.l.Enabled(ctx, sl) {
		return
	}
	s.l.Log(ctx, sl, fmt.Sprintf(format, args...), slog.String("component", "kfake"))
}
