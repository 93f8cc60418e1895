package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	"github.com/testcontainers/testcontainers-go/wait"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
)

// Images of the container test: those of docker-compose.yml (the Kafka
// version is devenv.KafkaVersion, which compose pins too).
const (
	kafkaImage    = "apache/kafka:" + devenv.KafkaVersion
	postgresImage = "postgres:15.10"
)

// The documented flow end to end against real Apache Kafka (KRaft) and
// PostgreSQL containers, where a Docker engine answers; skipped, saying
// so, where none does (Apache Kafka from the jars make deps fetches and the
// local PostgreSQL run the same flow in TestEndToEndHTTP and the
// operations tests).
func TestEndToEndContainers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts containers")
	}
	testcontainers.SkipIfProviderIsNotHealthy(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	pg, err := tcpostgres.Run(ctx, postgresImage,
		tcpostgres.WithDatabase("groupmatch"), tcpostgres.WithUsername("groupmatch"), tcpostgres.WithPassword("groupmatch"),
		tcpostgres.BasicWaitStrategies())
	testcontainers.CleanupContainer(t, pg)
	if err != nil {
		t.Fatalf("postgres container: %v", err)
	}
	dbURL, err := pg.ConnectionString(ctx, "sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	brokers := startKafkaContainer(ctx, t)
	if _, err := migrate(ctx, dbURL); err != nil {
		t.Fatal(err)
	}

	o := &options{
		brokers: brokers, databaseURL: dbURL, httpAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 4, rateLimit: 1000, rateBurst: 1000, matcherChunk: 500, sinkChunk: 500,
		dbMaxConns: 8, pendingTimeout: 30 * time.Second,
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	base, admin := runStagesOn(t, o, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), false)
	s := newSystemOn(ctx, t, base, admin, dbURL, o, logs)
	_, token := s.app("ops", apps.ScopeGroup)
	s.loadDirectory("ops", opsDirectory)
	id := s.postBatch(token, opsBatch)
	// Real Kafka: the first consumer-group join takes seconds.
	res := s.waitFinal(token, id, 90*time.Second)
	if res.Status != "PARTIAL_SUCCESS" || res.Processed != 6 || res.Success != 3 || res.Unmatched != 1 || res.Ambiguous != 1 || res.Invalid != 1 {
		t.Fatalf("result %+v", res)
	}
	if fmt.Sprint(res.MatchedBy) != fmt.Sprint(map[string]int{"unionid": 1, "openid": 1, "id": 1}) {
		t.Errorf("matchedBy %v", res.MatchedBy)
	}
	if got := s.members(token, "ops-vip", 10); !equalIDs(got, 71, 72) {
		t.Errorf("ops-vip members %v, want 71 72", got)
	}
}

// startKafkaContainer runs a single-node Apache Kafka in KRaft mode and
// returns its bootstrap address on this host.
//
// testcontainers-go's kafka module starts only confluentinc/confluent-local
// images (its start script is Confluent's), and compose runs apache/kafka,
// so the container is built here the way that module builds its own: the
// entrypoint waits for a start script that knows the mapped port, so the
// broker advertises an address this host can reach.
func startKafkaContainer(ctx context.Context, t *testing.T) string {
	t.Helper()
	const script = "/tmp/groupmatch_start.sh"
	c, err := testcontainers.Run(ctx, kafkaImage,
		testcontainers.WithExposedPorts("9093/tcp"),
		testcontainers.WithEnv(map[string]string{
			"KAFKA_NODE_ID":                                  "1",
			"KAFKA_PROCESS_ROLES":                            "broker,controller",
			"KAFKA_LISTENERS":                                "PLAINTEXT://0.0.0.0:9093,BROKER://0.0.0.0:9092,CONTROLLER://0.0.0.0:9094",
			"KAFKA_LISTENER_SECURITY_PROTOCOL_MAP":           "BROKER:PLAINTEXT,PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
			"KAFKA_INTER_BROKER_LISTENER_NAME":               "BROKER",
			"KAFKA_CONTROLLER_LISTENER_NAMES":                "CONTROLLER",
			"KAFKA_CONTROLLER_QUORUM_VOTERS":                 "1@localhost:9094",
			"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "1",
			"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
			"KAFKA_TRANSACTION_STATE_LOG_MIN_ISR":            "1",
			"KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS":         "0",
			"KAFKA_AUTO_CREATE_TOPICS_ENABLE":                "false",
		}),
		testcontainers.WithEntrypoint("sh", "-c", "while [ ! -f "+script+" ]; do sleep 0.1; done; exec sh "+script),
		testcontainers.WithAdditionalLifecycleHooks(testcontainers.ContainerLifecycleHooks{
			PostStarts: []testcontainers.ContainerHook{func(ctx context.Context, c testcontainers.Container) error {
				host, err := c.Host(ctx)
				if err != nil {
					return err
				}
				port, err := c.MappedPort(ctx, "9093/tcp")
				if err != nil {
					return err
				}
				start := fmt.Sprintf("export KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://%s:%s,BROKER://localhost:9092\nexec /etc/kafka/docker/run\n", host, port.Port())
				return c.CopyToContainer(ctx, []byte(start), script, 0o755)
			}},
		}),
		testcontainers.WithWaitStrategy(wait.ForLog("Kafka Server started").WithStartupTimeout(2*time.Minute)),
	)
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		t.Fatalf("kafka container: %v", err)
	}
	ep, err := c.PortEndpoint(ctx, "9093/tcp", "")
	if err != nil {
		t.Fatal(err)
	}
	return ep
}

// newSystemOn is a system handle for stages already running at base (the
// API) and admin on dbURL's database.
func newSystemOn(ctx context.Context, t *testing.T, base, admin, dbURL string, o *options, logs *lockedWriter) *system {
	t.Helper()
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return &system{t: t, base: base, admin: admin, pool: pool, apps: apps.NewStore(pool), opts: o, logs: logs}
}
