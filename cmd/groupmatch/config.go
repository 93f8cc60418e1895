package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/groupmatch/groupmatch/ingest"
	"github.com/groupmatch/groupmatch/matcher"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/sink"
	"github.com/groupmatch/groupmatch/stream"
)

// options are the settings shared by the commands. Each flag falls back to
// an environment variable, named in its help text.
type options struct {
	brokers          string
	kafkaSecurity    stream.SecurityConfig
	groupPrefix      string
	eventsPerTenant  bool
	databaseURL      string
	httpAddr         string // public: the API; ingest only
	adminAddr        string // /healthz, /readyz, /metrics, /debug/pprof/
	topicPrefix      string
	partitions       int
	rateLimit        float64
	rateBurst        int
	matcherChunk     int
	matcherConsumers int
	sinkConsumers    int
	rematch          bool // run the re-matcher beside the matcher (SPEC §13)
	sinkChunk        int
	dbMaxConns       int
	pendingTimeout   time.Duration
	maxGroups        int
	batchDeadline    time.Duration
	resultRetention  time.Duration
	deferTTL         time.Duration
	authFailRate     float64
	authFailBurst    int
	authFailClients  int
	trustedProxies   string
	tokenRate        float64
	tenantRate       float64
	maxInFlight      int
	drainDelay       time.Duration
	logLevel         string
	logFormat        string
	pprof            bool
	// statements, set only by tests, is also told of every statement the
	// stages' pool sends (see teeTracer).
	statements sqlObserver
}

const defaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/groupmatch?sslmode=disable"

// newFlagSet returns a flag set whose usage prints synopsis and the flags.
func newFlagSet(synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(strings.Fields(synopsis)[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: groupmatch %s\n\nFlags (each falls back to the environment variable named):\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// addKafka registers --kafka-brokers, --topic-prefix and the settings of
// a secured cluster (see kafkaSecurityFlags).
func (o *options) addKafka(fs *flag.FlagSet) {
	fs.StringVar(&o.brokers, "kafka-brokers", "127.0.0.1:9092", "comma-separated Kafka bootstrap brokers (KAFKA_BROKERS)")
	fs.StringVar(&o.topicPrefix, "topic-prefix", pipeline.DefaultTopicPrefix, "prefix of the topic names: requests, records, resolved, events, dlq, directory (TOPIC_PREFIX)")
	s := &o.kafkaSecurity
	fs.StringVar(&s.SASLMechanism, "kafka-sasl-mechanism", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty for none (KAFKA_SASL_MECHANISM)")
	fs.StringVar(&s.SASLUsername, "kafka-sasl-username", "", "SASL username (KAFKA_SASL_USERNAME)")
	fs.Var((*secretFlag)(&s.SASLPassword), "kafka-sasl-password", "SASL `password`; never shown. Prefer the environment or a file: a flag is visible to other users of the machine (KAFKA_SASL_PASSWORD)")
	fs.StringVar(&s.SASLPasswordFile, "kafka-sasl-password-file", "", "file holding the SASL password, instead of --kafka-sasl-password (KAFKA_SASL_PASSWORD_FILE)")
	fs.BoolVar(&s.TLS, "kafka-tls", false, "connect to Kafka over TLS; implied by any --kafka-tls-*-file (KAFKA_TLS)")
	fs.StringVar(&s.TLSCAFile, "kafka-tls-ca-file", "", "PEM file of the CA certificates that sign the brokers' certificates; default the system's (KAFKA_TLS_CA_FILE)")
	fs.StringVar(&s.TLSCertFile, "kafka-tls-cert-file", "", "PEM file of the client certificate, for mutual TLS; needs --kafka-tls-key-file (KAFKA_TLS_CERT_FILE)")
	fs.StringVar(&s.TLSKeyFile, "kafka-tls-key-file", "", "PEM file of the client certificate's private key (KAFKA_TLS_KEY_FILE)")
}

// addGroups registers --group-prefix.
func (o *options) addGroups(fs *flag.FlagSet) {
	fs.StringVar(&o.groupPrefix, "group-prefix", "", "prefix of the stages' consumer group ids <prefix>ingest, <prefix>matcher, <prefix>rematcher, <prefix>sink; default the topic prefix with its final '.' made '-' (groupmatch. gives groupmatch-matcher) (GROUP_PREFIX)")
}

// secretFlag is a flag.Value whose value is never printed: --help shows
// no default for it.
type secretFlag string

func (s *secretFlag) String() string     { return "" }
func (s *secretFlag) Set(v string) error { *s = secretFlag(v); return nil }

// kafkaSecurityFlag names the flag and variable of a SecurityConfig field,
// for errors.
func kafkaSecurityFlag(field string) string {
	switch field {
	case "SASLMechanism":
		return "--kafka-sasl-mechanism (KAFKA_SASL_MECHANISM)"
	case "SASLUsername":
		return "--kafka-sasl-username (KAFKA_SASL_USERNAME)"
	case "SASLPassword":
		return "--kafka-sasl-password (KAFKA_SASL_PASSWORD)"
	case "SASLPasswordFile":
		return "--kafka-sasl-password-file (KAFKA_SASL_PASSWORD_FILE)"
	case "TLSCAFile":
		return "--kafka-tls-ca-file (KAFKA_TLS_CA_FILE)"
	case "TLSCertFile":
		return "--kafka-tls-cert-file (KAFKA_TLS_CERT_FILE)"
	case "TLSKeyFile":
		return "--kafka-tls-key-file (KAFKA_TLS_KEY_FILE)"
	}
	return "--kafka-tls (KAFKA_TLS)"
}

// security builds the Kafka security of the command: nil for a plaintext
// cluster. An error names the flag and environment variable at fault and
// never contains the password.
func (o *options) security() (*stream.Security, error) {
	sec, err := o.kafkaSecurity.Build()
	var ce *stream.ConfigError
	if errors.As(err, &ce) {
		return nil, usageError{fmt.Errorf("%s: %w", kafkaSecurityFlag(ce.Field), ce.Err)}
	}
	return sec, err
}

// groupID is the consumer group of a stage: the group prefix and the
// stage's name. The prefix defaults to the topic prefix with a final '.'
// made '-', so that environments with their own topics have their own
// groups, and the default topic prefix "groupmatch." gives the groups of
// earlier releases (groupmatch-ingest, groupmatch-matcher, groupmatch-sink):
// an upgrade keeps their committed offsets.
func (o *options) groupID(stage string) string {
	if o.groupPrefix != "" {
		return o.groupPrefix + stage
	}
	return strings.TrimSuffix(o.topicPrefix, ".") + "-" + stage
}

// addDatabase registers --database-url and --db-max-conns.
func (o *options) addDatabase(fs *flag.FlagSet) {
	fs.StringVar(&o.databaseURL, "database-url", defaultDatabaseURL, "PostgreSQL URL (DATABASE_URL)")
	fs.IntVar(&o.dbMaxConns, "db-max-conns", 8, "largest PostgreSQL connection pool per process (DB_MAX_CONNS)")
}

// addLog registers --log-level and --log-format.
func (o *options) addLog(fs *flag.FlagSet) {
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error (LOG_LEVEL)")
	fs.StringVar(&o.logFormat, "log-format", "json", "json or text (LOG_FORMAT)")
}

// addStages registers the settings of the given pipeline stages: those
// every stage has, then only those of the stages named, so that
// "groupmatch matcher --help" lists no setting of ingest or the sink.
// defaultAddr is the default of --http-addr, the public API address; ""
// registers no such flag (matcher and sink serve no API, so they have no
// public listener). defaultAdmin is the default of --admin-addr.
func (o *options) addStages(fs *flag.FlagSet, stages []string, defaultAddr, defaultAdmin string) {
	if defaultAddr != "" {
		fs.StringVar(&o.httpAddr, "http-addr", defaultAddr, "public HTTP address: the API only (HTTP_ADDR)")
	}
	fs.StringVar(&o.adminAddr, "admin-addr", defaultAdmin, "admin HTTP address, for operators and probes only: /healthz, /readyz, /metrics and with --pprof /debug/pprof/ (ADMIN_ADDR)")
	fs.DurationVar(&o.drainDelay, "drain-delay", 0, "on SIGTERM, how long to keep serving (answering 503, /readyz failing) before closing the listener, so load balancers notice (DRAIN_DELAY)")
	fs.DurationVar(&o.pendingTimeout, "pending-timeout", pipeline.DefaultPendingTimeout, "age at which a batch whose acceptance never completed is aborted (PENDING_TIMEOUT)")
	fs.BoolVar(&o.pprof, "pprof", false, "serve net/http/pprof under /debug/pprof/ on the admin address, for profiling (PPROF)")
	if slices.Contains(stages, stageIngest) {
		fs.Float64Var(&o.rateLimit, "rate-limit", ingest.DefaultRateLimit, "requests per second each application may send (RATE_LIMIT)")
		fs.IntVar(&o.rateBurst, "rate-burst", ingest.DefaultRateBurst, "burst of requests each application may send (RATE_BURST)")
		fs.Float64Var(&o.authFailRate, "auth-fail-rate", ingest.DefaultAuthFailRate, "failed authentications per second each client address may make; beyond, 429 before any check (AUTH_FAIL_RATE)")
		fs.IntVar(&o.authFailBurst, "auth-fail-burst", ingest.DefaultAuthFailBurst, "failed authentications in a row each client address may make (AUTH_FAIL_BURST)")
		fs.IntVar(&o.authFailClients, "auth-fail-clients", ingest.DefaultAuthFailClients, "most client addresses whose failures are tracked at once; bounds the table's memory (AUTH_FAIL_CLIENTS)")
		fs.StringVar(&o.trustedProxies, "trusted-proxies", "", "comma-separated addresses or CIDR prefixes of proxies whose X-Forwarded-For names the client address; empty: the header is ignored (TRUSTED_PROXIES)")
		fs.Float64Var(&o.tokenRate, "token-rate", ingest.DefaultTokenRate, "token pairs each application may get per minute (getOrgAccessToken and refresh), also its burst (TOKEN_RATE)")
		fs.Float64Var(&o.tenantRate, "tenant-rate", 0, "records per second each tenant may submit (burst: max(rate, 500)); 0 means no quota (TENANT_RATE)")
		fs.IntVar(&o.maxInFlight, "max-in-flight", ingest.DefaultMaxInFlight, "batchAdd requests served at once; beyond it ingest answers 503 (MAX_IN_FLIGHT)")
	}
	if slices.Contains(stages, stageMatcher) {
		fs.IntVar(&o.matcherChunk, "matcher-chunk", matcher.DefaultMaxChunk, "most records the matcher resolves together (MATCHER_CHUNK)")
		fs.IntVar(&o.matcherConsumers, "matcher-consumers", matcher.DefaultConsumers, "consumer-group members a matcher process runs, each resolving its own partitions' chunks (MATCHER_CONSUMERS)")
		fs.BoolVar(&o.rematch, "rematch", true, "run the re-matcher beside the matcher: it consumes <prefix>directory in the group <group prefix>rematcher and matches pending bindings (deferUnmatched) when the directory learns their customer (REMATCH)")
	}
	if slices.Contains(stages, stageSink) {
		fs.IntVar(&o.sinkChunk, "sink-chunk", sink.DefaultMaxChunk, "most records the sink applies in one transaction (SINK_CHUNK)")
		fs.IntVar(&o.sinkConsumers, "sink-consumers", sink.DefaultConsumers, "consumer-group members a sink process runs, each applying its own partitions' chunks in its own transactions (SINK_CONSUMERS)")
		fs.IntVar(&o.maxGroups, "max-groups-per-tenant", sink.DefaultMaxGroupsPerTenant, "most groups a tenant may have; an add that would create more leaves its record INVALID, reason GROUP_LIMIT (sink) (MAX_GROUPS_PER_TENANT)")
		fs.DurationVar(&o.batchDeadline, "batch-deadline", sink.DefaultBatchDeadline, "age at which a batch still PROCESSING is finished, its records without an outcome counted failed (TIMED_OUT); the sink enforces it (BATCH_DEADLINE)")
		o.addRetention(fs)
		fs.DurationVar(&o.deferTTL, "defer-ttl", pipeline.DefaultDeferTTL, "how long a NOT_FOUND record of a batch with deferUnmatched waits as a pending binding for its customer before it expires; applies to bindings stored from then on (sink) (DEFER_TTL)")
	}
	if slices.Contains(stages, stageIngest) || slices.Contains(stages, stageSink) {
		fs.BoolVar(&o.eventsPerTenant, "events-per-tenant", false, "publish each tenant's request and batch events to its own topic <prefix>events.<tenant> (created by groupmatch topics --tenant) when it exists, else to <prefix>events (EVENTS_PER_TENANT)")
	}
}

// checkStages rejects settings of addStages that cannot work.
func (o *options) checkStages(stages []string) error {
	if slices.Contains(stages, stageSink) && o.maxGroups < 1 {
		return usageError{fmt.Errorf("--max-groups-per-tenant must be at least 1, got %d", o.maxGroups)}
	}
	if slices.Contains(stages, stageSink) && o.deferTTL <= 0 {
		return usageError{fmt.Errorf("--defer-ttl must be positive, got %s", o.deferTTL)}
	}
	if slices.Contains(stages, stageSink) {
		return o.checkRetention()
	}
	return nil
}

// minResultRetention is the shortest --result-retention: pruning delete
// tombstones relies on no batch acceptance being in flight for longer
// (docs/operations.md, "Pruning"), and results should outlive any retry.
const minResultRetention = time.Hour

// addRetention registers --result-retention.
func (o *options) addRetention(fs *flag.FlagSet) {
	fs.DurationVar(&o.resultRetention, "result-retention", sink.DefaultResultRetention, "how long finished batches, their results and failures, delete tombstones and invisible groups are kept before the sink prunes them; batchResult then answers 404 (at least 1h) (RESULT_RETENTION)")
}

// checkRetention rejects a --result-retention below minResultRetention.
func (o *options) checkRetention() error {
	if o.resultRetention < minResultRetention {
		return usageError{fmt.Errorf("--result-retention must be at least %s, got %s", minResultRetention, o.resultRetention)}
	}
	return nil
}

// addPartitions registers --partitions.
func (o *options) addPartitions(fs *flag.FlagSet) {
	fs.IntVar(&o.partitions, "partitions", 8, "partitions of the records and resolved topics (TOPIC_PARTITIONS)")
}

// proxyPrefixes parses --trusted-proxies: addresses and CIDR prefixes.
func (o *options) proxyPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(o.trustedProxies, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		if p, err := netip.ParsePrefix(f); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, fmt.Errorf("--trusted-proxies: %q is neither an address nor a CIDR prefix", f)
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

func (o *options) brokerList() []string {
	var out []string
	for _, b := range strings.Split(o.brokers, ",") {
		if b = strings.TrimSpace(b); b != "" {
			out = append(out, b)
		}
	}
	return out
}

func (o *options) topics() pipeline.Topics { return pipeline.TopicsFor(o.topicPrefix) }

func (o *options) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, usageError{fmt.Errorf("--log-level: %w", err)}
	}
	hopts := &slog.HandlerOptions{Level: level}
	switch o.logFormat {
	case "json":
		return slog.New(slog.NewJSONHandler(w, hopts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, hopts)), nil
	}
	return nil, usageError{errors.New("--log-format must be json or text")}
}

// usageError is a mistake in the command line or the environment: a bad
// flag or environment value. main exits 2 for it, 1 for any other error.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// envVar is the environment variable a flag falls back to: the
// parenthesised upper-case name that ends its help text, "" if none. The
// help text is the only place that names it, so --help, the fallback and
// the README's table (TestReadmeConfigTable) cannot disagree.
func envVar(f *flag.Flag) string {
	u := strings.TrimSpace(f.Usage)
	if !strings.HasSuffix(u, ")") {
		return ""
	}
	i := strings.LastIndexByte(u, '(')
	if i < 0 {
		return ""
	}
	name := u[i+1 : len(u)-1]
	for _, r := range name {
		if (r < 'A' || r > 'Z') && (r < '0' || r > '9') && r != '_' {
			return ""
		}
	}
	return name
}

// applyEnv sets every flag of fs not given on the command line whose
// environment variable is set and not empty, with the flag's own parser:
// a bad value is an error naming the variable and the flag, never the
// value (it may be a secret). Defaults stay those of the flag
// definitions, so --help never shows an environment value.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		name := envVar(f)
		if name == "" || given[f.Name] {
			return
		}
		v, ok := lookup(name)
		if !ok || v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s: not a valid value for --%s (%s)", name, f.Name, valueKind(f)))
		}
	})
	return errors.Join(errs...)
}

// valueKind names what a flag's value must be, for errors that cannot
// quote the value itself.
func valueKind(f *flag.Flag) string {
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return "rejected"
	}
	switch g.Get().(type) {
	case bool:
		return "want true or false"
	case int, int64, uint, uint64:
		return "want an integer"
	case float64:
		return "want a number"
	case time.Duration:
		return "want a duration with a unit, such as 1m30s"
	}
	return "rejected"
}

// parse parses args and then the environment (see applyEnv), rejecting
// stray positional arguments unless allowed. Its errors, but
// flag.ErrHelp, are usageErrors.
func parse(fs *flag.FlagSet, args []string, positional int) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > positional {
		return usageError{fmt.Errorf("unexpected argument %q", fs.Arg(positional))}
	}
	if err := applyEnv(fs, os.LookupEnv); err != nil {
		return usageError{err}
	}
	return nil
}
