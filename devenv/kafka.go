package devenv

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
)

// KafkaVersion is the Apache Kafka release that StartKafka runs by default:
// the one .ci/kafka/pom.xml fetches (its kafka.version property) and
// docker-compose.yml pins (apache/kafka:<KafkaVersion>). A test of this
// package checks that the three agree.
const KafkaVersion = "4.4.0"

// KafkaLibsEnv names the environment variable that, when set, is the folder
// of the broker's jars instead of KafkaLibsDir's default.
const KafkaLibsEnv = "GROUPMATCH_KAFKA_LIBS"

// KafkaLibsDir returns the folder .ci/ensure-kafka.sh copies the jars of
// Apache Kafka version into: $GROUPMATCH_KAFKA_LIBS if set, else
// <user cache dir>/groupmatch/kafka-<version>/libs (on Linux
// $XDG_CACHE_HOME or ~/.cache), else /var/tmp/groupmatch/kafka-<version>/libs
// when there is no home. The script computes the same path.
func KafkaLibsDir(version string) string {
	if dir := os.Getenv(KafkaLibsEnv); dir != "" {
		return dir
	}
	base, err := os.UserCacheDir()
	if err != nil {
		base = "/var/tmp"
	}
	return filepath.Join(base, "groupmatch", "kafka-"+version, "libs")
}

// KafkaSettings are the broker settings that suit a single node, as
// server.properties entries: internal topics with one replica, no delay
// before a group's first rebalance, no automatic topic creation (topics are
// created by `groupmatch topics`). StartKafka applies them, and
// docker-compose.yml sets the same (a test checks). The map is new on each
// call; the caller owns it.
func KafkaSettings() map[string]string {
	return map[string]string{
		"offsets.topic.replication.factor":         "1",
		"offsets.topic.num.partitions":             "8",
		"transaction.state.log.replication.factor": "1",
		"transaction.state.log.min.isr":            "1",
		"group.initial.rebalance.delay.ms":         "0",
		"auto.create.topics.enable":                "false",
		"num.partitions":                           "8",
	}
}

// KafkaConfig configures StartKafka. Zero values take the documented
// defaults.
type KafkaConfig struct {
	// Addr is the host:port of the client (PLAINTEXT) listener, also
	// advertised to clients; default DefaultBrokerAddr ("127.0.0.1:9092").
	// Port 0 picks a free port; Kafka.Addr reports it.
	Addr string
	// ControllerAddr is the host:port of the KRaft controller listener;
	// default a free port on Addr's host. A broker restarted on a DataDir
	// must be given the same ControllerAddr (Kafka.ControllerAddr).
	ControllerAddr string
	// DataDir holds the log (log.dirs) and the KRaft metadata. It is
	// formatted on the first start and reused as it is later, so records,
	// topics and committed offsets survive a restart. Empty uses a fresh
	// temporary folder that Close removes.
	DataDir string
	// Settings are server.properties entries applied over KafkaSettings
	// and the listener settings StartKafka writes; nil adds nothing.
	Settings map[string]string
	// Version is the Apache Kafka release; default KafkaVersion. It names
	// the default LibsDir.
	Version string
	// LibsDir is the folder of the broker's jars (.ci/ensure-kafka.sh
	// fetches them); default KafkaLibsDir(Version).
	LibsDir string
	// Java is the java executable; default $JAVA_HOME/bin/java when
	// JAVA_HOME is set, else "java" from PATH.
	Java string
	// Log receives the broker's output: warnings, errors and the start
	// and stop messages. Nil discards it; the last lines are kept for the
	// errors of StartKafka either way.
	Log io.Writer
	// StartTimeout bounds StartKafka from the JVM's start until the broker
	// answers metadata requests; default 2 minutes.
	StartTimeout time.Duration

	clusterID string // set by StartKafkaCluster: the id its nodes are formatted with
}

// Kafka is a running single-node Apache Kafka (KRaft, broker and
// controller in one JVM) started by StartKafka, or one node of a
// KafkaCluster. Its methods are safe for concurrent use.
type Kafka struct {
	addr, controllerAddr, dataDir string
	cmd                           *exec.Cmd
	exited                        chan struct{} // closed once cmd has been waited for
	waitErr                       error         // cmd.Wait's result, set before exited closes
	out                           *tailWriter
	tempDirs                      []string // removed by Close

	closeOnce sync.Once
	closeErr  error
}

// jvmFlags suit a small test broker on a 2-core machine: a bounded heap, the
// serial collector (no GC threads competing with the tests), the C1
// compiler only (faster start, less CPU spent compiling) and class-data
// sharing for the JDK's classes.
var jvmFlags = []string{
	"-Xms64m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto",
	"-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true",
}

// StartKafka formats storage if needed and starts an Apache Kafka broker
// in a JVM, and returns once the broker answers metadata requests with
// itself as the only broker and a leader for every partition. (After a
// restart a partition may still answer NOT_LEADER_OR_FOLLOWER for a moment
// while its log is recovered; clients retry.) ctx bounds the start only; the broker runs
// until Close or Kill. On error nothing is left running; the error carries
// the last lines of the broker's output.
func StartKafka(ctx context.Context, cfg KafkaConfig) (*Kafka, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	k, err := launchKafka(ctx, cfg, kafkaNode{id: 1})
	if err != nil {
		return nil, err
	}
	if err := k.awaitReady(ctx, cfg.StartTimeout, 1); err != nil {
		k.kill()
		k.removeTemp()
		return nil, fmt.Errorf("devenv: kafka: %w\nlast output of the broker:\n%s", err, k.out.tail())
	}
	return k, nil
}

// kafkaNode says which node of a KRaft quorum a JVM is.
type kafkaNode struct {
	id     int    // node.id
	voters string // controller.quorum.voters; empty: this node alone
}

// launchKafka resolves cfg's ports, formats the DataDir unless an earlier
// broker did, and starts the JVM without waiting for it to answer. cfg has
// its defaults. On error nothing is left running or on disk but a DataDir
// the caller named.
func launchKafka(ctx context.Context, cfg KafkaConfig, node kafkaNode) (*Kafka, error) {
	if _, err := os.Stat(cfg.LibsDir); err != nil {
		return nil, fmt.Errorf("devenv: kafka: no broker jars (run `make deps` or .ci/ensure-kafka.sh): %w", err)
	}
	k := &Kafka{exited: make(chan struct{}), out: newTailWriter(cfg.Log, 64<<10)}
	ok := false
	defer func() {
		if !ok {
			k.removeTemp()
		}
	}()
	var err error
	if k.addr, err = resolvePort(cfg.Addr); err != nil {
		return nil, fmt.Errorf("devenv: kafka: address: %w", err)
	}
	if cfg.ControllerAddr == "" {
		host, _, _ := net.SplitHostPort(k.addr)
		cfg.ControllerAddr = net.JoinHostPort(host, "0")
	}
	if k.controllerAddr, err = resolvePort(cfg.ControllerAddr); err != nil {
		return nil, fmt.Errorf("devenv: kafka: controller address: %w", err)
	}
	if node.voters == "" {
		node.voters = fmt.Sprintf("%d@%s", node.id, k.controllerAddr)
	}
	k.dataDir = cfg.DataDir
	if k.dataDir == "" {
		if k.dataDir, err = os.MkdirTemp("", "groupmatch-kafka-data-"); err != nil {
			return nil, fmt.Errorf("devenv: kafka: %w", err)
		}
		k.tempDirs = append(k.tempDirs, k.dataDir)
	} else if err := os.MkdirAll(k.dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("devenv: kafka: data dir: %w", err)
	}
	confDir, err := os.MkdirTemp("", "groupmatch-kafka-conf-")
	if err != nil {
		return nil, fmt.Errorf("devenv: kafka: %w", err)
	}
	k.tempDirs = append(k.tempDirs, confDir)
	props := filepath.Join(confDir, "server.properties")
	if err := os.WriteFile(props, k.serverProperties(node, cfg.Settings), 0o644); err != nil {
		return nil, fmt.Errorf("devenv: kafka: %w", err)
	}
	logProps := filepath.Join(confDir, "log4j.properties")
	if err := os.WriteFile(logProps, []byte(log4jProperties), 0o644); err != nil {
		return nil, fmt.Errorf("devenv: kafka: %w", err)
	}
	logProps2 := filepath.Join(confDir, "log4j2.properties")
	if err := os.WriteFile(logProps2, []byte(log4j2Properties), 0o644); err != nil {
		return nil, fmt.Errorf("devenv: kafka: %w", err)
	}
	java := append(slices.Clone(jvmFlags),
		"-Dlog4j.configuration=file:"+logProps, "-Dlog4j2.configurationFile="+logProps2,
		"-cp", filepath.Join(cfg.LibsDir, "*"))

	// Format the storage unless an earlier broker did: a formatted DataDir
	// keeps its cluster id (the storage tool refuses another one). The
	// nodes of one cluster share the id in cfg.clusterID.
	if _, err := os.Stat(filepath.Join(k.dataDir, "meta.properties")); errors.Is(err, os.ErrNotExist) {
		id := cfg.clusterID
		if id == "" {
			id = newClusterID()
		}
		format := exec.CommandContext(ctx, cfg.Java, append(slices.Clone(java),
			"kafka.tools.StorageTool", "format", "--cluster-id="+id, "-c", props)...)
		if out, err := format.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("devenv: kafka: formatting %s: %w\n%s", k.dataDir, err, out)
		}
	} else if err != nil {
		return nil, fmt.Errorf("devenv: kafka: data dir: %w", err)
	}

	k.cmd = exec.Command(cfg.Java, append(java, "kafka.Kafka", props)...)
	k.cmd.Stdout, k.cmd.Stderr = k.out, k.out
	k.cmd.SysProcAttr = kafkaProcAttr()
	if err := k.cmd.Start(); err != nil {
		return nil, fmt.Errorf("devenv: kafka: starting %s: %w", cfg.Java, err)
	}
	go func() {
		k.waitErr = k.cmd.Wait()
		close(k.exited)
	}()
	ok = true
	return k, nil
}

// awaitReady polls the broker until its metadata lists brokers brokers
// (itself alone, for a single node) and a leader for every partition. Each
// attempt dials anew: a kafka.Client would answer from its transport's
// cached metadata, which outlives a broker on the same address.
func (k *Kafka) awaitReady(ctx context.Context, within time.Duration, brokers int) error {
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	probe := func() error {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		conn, err := (&kafka.Dialer{Timeout: 2 * time.Second}).DialContext(actx, "tcp", k.addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(2 * time.Second)); err != nil {
			return err
		}
		listed, err := conn.Brokers()
		if err != nil {
			return err
		}
		if len(listed) != brokers {
			return fmt.Errorf("metadata lists %d brokers, not %d", len(listed), brokers)
		}
		// A restarted broker lists its topics before their partitions
		// have leaders again.
		parts, err := conn.ReadPartitions()
		if err != nil {
			return err
		}
		for _, p := range parts {
			if p.Leader.Host == "" {
				return fmt.Errorf("%s/%d has no leader", p.Topic, p.ID)
			}
		}
		return nil
	}
	var last error
	for {
		if last = probe(); last == nil {
			return nil
		}
		select {
		case <-k.exited:
			return fmt.Errorf("broker exited during start-up: %v", k.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("not ready within %s: %v (last error: %w)", within, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Addr returns the host:port clients bootstrap from.
func (k *Kafka) Addr() string { return k.addr }

// ControllerAddr returns the KRaft controller listener's host:port.
func (k *Kafka) ControllerAddr() string { return k.controllerAddr }

// DataDir returns the folder of the broker's log and metadata.
func (k *Kafka) DataDir() string { return k.dataDir }

// Done is closed once the JVM has exited, for whatever reason.
func (k *Kafka) Done() <-chan struct{} { return k.exited }

// Close stops the broker cleanly (SIGTERM: a controlled shutdown that
// flushes the log), kills it if it is still running after 30 s, waits for
// the JVM to exit and removes the temporary folders (the DataDir only if
// StartKafka made it). A later broker may then start on the same DataDir.
// It returns an error when the broker had to be killed. Calls after the
// first return the first result.
func (k *Kafka) Close() error {
	k.closeOnce.Do(func() {
		select {
		case <-k.exited:
		default:
			_ = k.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-k.exited:
			case <-time.After(30 * time.Second):
				k.kill()
				k.closeErr = errors.New("devenv: kafka: killed after not stopping within 30 s of SIGTERM")
			}
		}
		k.removeTemp()
	})
	return k.closeErr
}

// Kill ends the JVM at once (SIGKILL), as a crash would, and waits for it.
// Nothing is flushed; the DataDir stays for a restart. Close is still
// needed to remove temporary folders.
func (k *Kafka) Kill() { k.kill() }

func (k *Kafka) kill() {
	select {
	case <-k.exited:
		return
	default:
	}
	_ = k.cmd.Process.Kill()
	<-k.exited
}

func (k *Kafka) removeTemp() {
	for _, d := range k.tempDirs {
		_ = os.RemoveAll(d)
	}
	k.tempDirs = nil
}

// Output returns the last lines the broker printed (up to 64 KiB).
func (k *Kafka) Output() string { return k.out.tail() }

// serverProperties returns the broker's server.properties: KRaft, the node
// broker and controller of the quorum node.voters, plaintext listeners on
// the resolved addresses, KafkaSettings, then extra.
func (k *Kafka) serverProperties(node kafkaNode, extra map[string]string) []byte {
	s := KafkaSettings()
	maps.Copy(s, map[string]string{
		"process.roles":                        "broker,controller",
		"node.id":                              strconv.Itoa(node.id),
		"controller.quorum.voters":             node.voters,
		"listeners":                            "PLAINTEXT://" + k.addr + ",CONTROLLER://" + k.controllerAddr,
		"advertised.listeners":                 "PLAINTEXT://" + k.addr,
		"controller.listener.names":            "CONTROLLER",
		"inter.broker.listener.name":           "PLAINTEXT",
		"listener.security.protocol.map":       "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
		"log.dirs":                             k.dataDir,
		"num.network.threads":                  "2",
		"num.io.threads":                       "4",
		"num.recovery.threads.per.data.dir":    "1",
		"auto.leader.rebalance.enable":         "false",
		"transaction.state.log.num.partitions": "4",
	})
	maps.Copy(s, extra)
	var b bytes.Buffer
	b.WriteString("# Written by groupmatch's devenv.StartKafka.\n")
	for _, key := range slices.Sorted(maps.Keys(s)) {
		fmt.Fprintf(&b, "%s=%s\n", key, s[key])
	}
	return b.Bytes()
}

// log4jProperties (Kafka 3.x, reload4j; for comparing with the 3.x line
// through GROUPMATCH_KAFKA_LIBS) and log4j2Properties (Kafka 4.x) print
// warnings, errors and the broker's start to standard error.
const log4jProperties = `log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.server.KafkaRaftServer=INFO
log4j.logger.kafka.Kafka$=INFO
`

const log4j2Properties = `status = warn
shutdownHook = disable
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = info
`

// withDefaults returns c with its zero fields set to their defaults.
func (c KafkaConfig) withDefaults() (KafkaConfig, error) {
	if c.Addr == "" {
		c.Addr = DefaultBrokerAddr
	}
	if c.Version == "" {
		c.Version = KafkaVersion
	}
	if c.LibsDir == "" {
		c.LibsDir = KafkaLibsDir(c.Version)
	}
	if c.Java == "" {
		c.Java = "java"
		if home := os.Getenv("JAVA_HOME"); home != "" {
			c.Java = filepath.Join(home, "bin", "java")
		}
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = 2 * time.Minute
	}
	for _, a := range []string{c.Addr, c.ControllerAddr} {
		if a == "" {
			continue
		}
		if _, _, err := net.SplitHostPort(a); err != nil {
			return c, fmt.Errorf("devenv: kafka: address %q: %w", a, err)
		}
	}
	return c, nil
}

// resolvePort returns addr with port 0 replaced by a port that was free a
// moment ago (the OS picks it; the JVM binds it shortly after, so another
// process could take it in between, which StartKafka reports as an error).
func resolvePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// newClusterID returns a random KRaft cluster id: 16 bytes, base64url
// without padding, as `kafka-storage.sh random-uuid` prints. Like Kafka's
// own, it never starts with "-", which command lines take for a flag.
func newClusterID() string {
	for {
		var b [16]byte
		_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
		if id := base64.RawURLEncoding.EncodeToString(b[:]); id[0] != '-' {
			return id
		}
	}
}

// tailWriter passes writes on to w (if any) and keeps the last max bytes.
type tailWriter struct {
	w   io.Writer
	max int

	mu  sync.Mutex
	buf []byte
}

func newTailWriter(w io.Writer, max int) *tailWriter { return &tailWriter{w: w, max: max} }

func (t *tailWriter) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
	}
	if t.w != nil {
		_, _ = t.w.Write(p) // the broker's output must never block on or fail with its reader
	}
	return len(p), nil
}

func (t *tailWriter) tail() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimLeft(string(t.buf), "\n")
}
