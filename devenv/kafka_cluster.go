package devenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// KafkaClusterConfig configures StartKafkaCluster. Zero values take the
// documented defaults.
type KafkaClusterConfig struct {
	// Nodes is the number of nodes; default 3. Each node is broker and
	// controller, and the controllers of all nodes form the KRaft quorum,
	// so the cluster keeps working, controller included, while fewer than
	// half of the nodes are down.
	Nodes int
	// Host is the address every listener binds and advertises; default
	// 127.0.0.1. Every port is picked free by the OS.
	Host string
	// DataDir holds one folder per node (node-1, node-2, …); empty uses a
	// fresh temporary folder that Close removes.
	DataDir string
	// Settings are server.properties entries applied over
	// KafkaClusterSettings(Nodes); nil adds nothing.
	Settings map[string]string
	// Version, LibsDir, Java and StartTimeout are as in KafkaConfig, the
	// time bounding each start of a node (all nodes start at once).
	Version      string
	LibsDir      string
	Java         string
	StartTimeout time.Duration
	// Log receives the output of every node; the nodes write to it
	// concurrently, so it must be safe for that. Nil discards it; each
	// node keeps its last lines (KafkaCluster.Node(i).Output).
	Log io.Writer
}

// KafkaClusterSettings are KafkaSettings for a cluster of n nodes: the
// internal topics (committed offsets, transactions) with min(n, 3)
// replicas and, for transactions, at least two of them in sync when there
// are three. The broker-wide default min.insync.replicas stays Kafka's
// (1): a topic's producers get the guarantee of acks from all replicas
// from the topic's own min.insync.replicas, which `groupmatch topics`
// (or the caller) sets. The map is new on each call; the caller owns it.
func KafkaClusterSettings(n int) map[string]string {
	s := KafkaSettings()
	rf := min(n, 3)
	s["offsets.topic.replication.factor"] = strconv.Itoa(rf)
	s["transaction.state.log.replication.factor"] = strconv.Itoa(rf)
	s["transaction.state.log.min.isr"] = strconv.Itoa(max(1, rf-1))
	return s
}

// KafkaCluster is a running Apache Kafka cluster of KRaft nodes started
// by StartKafkaCluster, each node a JVM that is broker and controller.
// Nodes are numbered from 0; node i has node.id i+1. A node can be killed
// (SIGKILL, as a crash) and restarted on the same log and ports, as a
// machine that reboots. Its methods are safe for concurrent use.
type KafkaCluster struct {
	cfg      KafkaClusterConfig // with defaults
	nodeCfgs []KafkaConfig      // how node i starts: fixed addresses and DataDir
	voters   string
	tempDir  string // removed by Close; "" when the caller named DataDir

	mu    sync.Mutex
	nodes []*Kafka // the current JVM of each node

	closeOnce sync.Once
	closeErr  error
}

// StartKafkaCluster picks free ports for every node's client and
// controller listeners, formats each node's log folder with one cluster id
// (unless formatted before), starts all nodes at once and returns once
// each answers metadata listing every broker and a leader for every
// partition. ctx bounds the start only. On error nothing is left running.
func StartKafkaCluster(ctx context.Context, cfg KafkaClusterConfig) (*KafkaCluster, error) {
	if cfg.Nodes == 0 {
		cfg.Nodes = 3
	}
	if cfg.Nodes < 1 {
		return nil, fmt.Errorf("devenv: kafka cluster: %d nodes", cfg.Nodes)
	}
	if cfg.Host == "" {
		cfg.Host = "127.0.0.1"
	}
	c := &KafkaCluster{cfg: cfg, nodes: make([]*Kafka, cfg.Nodes)}
	root := cfg.DataDir
	if root == "" {
		var err error
		if root, err = os.MkdirTemp("", "groupmatch-kafka-cluster-"); err != nil {
			return nil, fmt.Errorf("devenv: kafka cluster: %w", err)
		}
		c.tempDir = root
	}
	settings := KafkaClusterSettings(cfg.Nodes)
	maps.Copy(settings, cfg.Settings)
	clusterID := newClusterID()
	var voters []string
	for i := range cfg.Nodes {
		nc := KafkaConfig{
			Addr: cfg.Host + ":0", ControllerAddr: cfg.Host + ":0",
			DataDir:  filepath.Join(root, fmt.Sprintf("node-%d", i+1)),
			Settings: settings, Version: cfg.Version, LibsDir: cfg.LibsDir, Java: cfg.Java,
			Log: cfg.Log, StartTimeout: cfg.StartTimeout, clusterID: clusterID,
		}
		nc, err := nc.withDefaults()
		if err != nil {
			c.removeTemp()
			return nil, fmt.Errorf("devenv: kafka cluster: %w", err)
		}
		// Every node must know every controller's address before the
		// first starts, so the ports are fixed now.
		if nc.Addr, err = resolvePort(nc.Addr); err == nil {
			nc.ControllerAddr, err = resolvePort(nc.ControllerAddr)
		}
		if err != nil {
			c.removeTemp()
			return nil, fmt.Errorf("devenv: kafka cluster: ports: %w", err)
		}
		voters = append(voters, fmt.Sprintf("%d@%s", i+1, nc.ControllerAddr))
		c.nodeCfgs = append(c.nodeCfgs, nc)
	}
	c.voters = strings.Join(voters, ",")

	// Start all nodes at once: none is ready before a majority of the
	// controllers runs.
	errs := make([]error, cfg.Nodes)
	var wg sync.WaitGroup
	for i := range cfg.Nodes {
		wg.Go(func() {
			k, err := launchKafka(ctx, c.nodeCfgs[i], kafkaNode{id: i + 1, voters: c.voters})
			c.mu.Lock()
			c.nodes[i] = k
			c.mu.Unlock()
			if err != nil {
				errs[i] = fmt.Errorf("node %d: %w", i, err)
				return
			}
			if err := k.awaitReady(ctx, c.nodeCfgs[i].StartTimeout, cfg.Nodes); err != nil {
				errs[i] = fmt.Errorf("node %d: %w\nlast output of the node:\n%s", i, err, k.out.tail())
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		for _, k := range c.nodes {
			if k != nil {
				k.kill()
				k.removeTemp()
			}
		}
		c.removeTemp()
		return nil, fmt.Errorf("devenv: kafka cluster: %w", err)
	}
	return c, nil
}

// Size returns the number of nodes.
func (c *KafkaCluster) Size() int { return len(c.nodeCfgs) }

// Addrs returns every node's client address, in node order: the bootstrap
// list (KAFKA_BROKERS is strings.Join(Addrs(), ",")).
func (c *KafkaCluster) Addrs() []string {
	out := make([]string, len(c.nodeCfgs))
	for i, nc := range c.nodeCfgs {
		out[i] = nc.Addr
	}
	return out
}

// Node returns the current JVM of node i (a new one after Restart).
func (c *KafkaCluster) Node(i int) *Kafka {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i]
}

// Kill ends node i's JVM at once (SIGKILL), as a crash would, and waits
// for it. Its log stays for Restart.
func (c *KafkaCluster) Kill(i int) { c.Node(i).Kill() }

// Restart starts node i again, with the same node id, ports and log
// folder, after Kill (or after it died). It returns once the node answers
// metadata listing every broker and a leader for every partition. It
// fails if the node's JVM is still running.
func (c *KafkaCluster) Restart(ctx context.Context, i int) error {
	old := c.Node(i)
	select {
	case <-old.Done():
	default:
		return fmt.Errorf("devenv: kafka cluster: node %d is running", i)
	}
	_ = old.Close() // removes its configuration folder only
	k, err := launchKafka(ctx, c.nodeCfgs[i], kafkaNode{id: i + 1, voters: c.voters})
	if err != nil {
		return fmt.Errorf("devenv: kafka cluster: restart node %d: %w", i, err)
	}
	c.mu.Lock()
	c.nodes[i] = k
	c.mu.Unlock()
	if err := k.awaitReady(ctx, c.nodeCfgs[i].StartTimeout, len(c.nodeCfgs)); err != nil {
		k.kill()
		return fmt.Errorf("devenv: kafka cluster: restart node %d: %w\nlast output of the node:\n%s", i, err, k.out.tail())
	}
	return nil
}

// Leaders returns, for each partition of topic (indexed by partition id),
// the node that leads it as a running node's metadata says, or -1 when the
// partition has no leader. Right after a node dies the metadata still
// names it until the controller fences it (broker.session.timeout.ms,
// 9 s by default). Each call dials anew: no cached metadata answers.
func (c *KafkaCluster) Leaders(ctx context.Context, topic string) ([]int, error) {
	var last error
	for i, addr := range c.Addrs() {
		select {
		case <-c.Node(i).Done():
			continue
		default:
		}
		parts, err := c.partitions(ctx, addr, topic)
		if err != nil {
			last = err
			continue
		}
		out := make([]int, len(parts))
		for _, p := range parts {
			if p.ID < 0 || p.ID >= len(out) {
				return nil, fmt.Errorf("devenv: kafka cluster: %s has partition %d of %d", topic, p.ID, len(parts))
			}
			out[p.ID] = -1
			if p.Leader.Host != "" && p.Leader.ID >= 1 && p.Leader.ID <= len(c.nodeCfgs) {
				out[p.ID] = p.Leader.ID - 1
			}
		}
		return out, nil
	}
	if last == nil {
		last = errors.New("no node is running")
	}
	return nil, fmt.Errorf("devenv: kafka cluster: leaders of %s: %w", topic, last)
}

// Leader returns the node that leads topic's partition; see Leaders.
func (c *KafkaCluster) Leader(ctx context.Context, topic string, partition int) (int, error) {
	leaders, err := c.Leaders(ctx, topic)
	if err != nil {
		return -1, err
	}
	if partition < 0 || partition >= len(leaders) {
		return -1, fmt.Errorf("devenv: kafka cluster: %s has no partition %d", topic, partition)
	}
	return leaders[partition], nil
}

func (c *KafkaCluster) partitions(ctx context.Context, addr, topic string) ([]kafka.Partition, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	conn, err := (&kafka.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
		return nil, err
	}
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, err
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("no partitions of %s", topic)
	}
	return parts, nil
}

// Close stops every node at once (SIGTERM, as Kafka.Close: killed after
// 30 s), waits for them and removes the temporary folders. Calls after the
// first return the first result.
func (c *KafkaCluster) Close() error {
	c.closeOnce.Do(func() {
		c.mu.Lock()
		nodes := append([]*Kafka(nil), c.nodes...)
		c.mu.Unlock()
		errs := make([]error, len(nodes))
		var wg sync.WaitGroup
		for i, k := range nodes {
			wg.Go(func() {
				if err := k.Close(); err != nil {
					errs[i] = fmt.Errorf("node %d: %w", i, err)
				}
			})
		}
		wg.Wait()
		c.removeTemp()
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

func (c *KafkaCluster) removeTemp() {
	if c.tempDir != "" {
		_ = os.RemoveAll(c.tempDir)
	}
}
