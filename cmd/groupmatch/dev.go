package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/stream"
)

// defaultDataDir is dev's data folder: under the user's cache directory, or
// under /var/tmp for root, whose home the postgres user (which a private
// cluster runs as, since initdb refuses root) cannot enter.
func defaultDataDir() string {
	if os.Geteuid() == 0 {
		return "/var/tmp/groupmatch/dev"
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		dir = os.TempDir()
	}
	return filepath.Join(dir, "groupmatch", "dev")
}

func cmdBroker(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("broker [--addr 127.0.0.1:9092] [--partitions 8] [--data DIR]", stderr)
	addr := fs.String("addr", "127.0.0.1:9092", "listen address of the broker; port 0 picks a free one (KAFKA_ADDR)")
	partitions := fs.Int("partitions", 8, "partitions of auto-created topics (TOPIC_PARTITIONS)")
	data := fs.String("data", "", "folder keeping the broker's log across restarts; empty keeps it in memory (GROUPMATCH_DATA)")
	sync := fs.Bool("sync-writes", false, "fsync every produced batch")
	var o options
	o.addLog(fs)
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	dir := *data
	if dir != "" {
		dir = filepath.Join(dir, "kafka")
	}
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: *addr, DataDir: dir, Partitions: *partitions, SyncWrites: *sync, Logger: log})
	if err != nil {
		return err
	}
	defer b.Close()
	fmt.Fprintf(stdout, "KAFKA_BROKERS=%s\n", b.Addr())
	log.Info("broker started; for development and tests only", "addr", b.Addr(), "data", dir)
	<-ctx.Done()
	return nil
}

// cmdKafka runs Apache Kafka (devenv.StartKafka: one JVM, KRaft, the
// jars .ci/ensure-kafka.sh fetched) until ctx is done, then stops it
// cleanly. For development and tests, never production.
func cmdKafka(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("kafka [--addr 127.0.0.1:9092] [--data DIR]", stderr)
	addr := fs.String("addr", "127.0.0.1:9092", "listen and advertised address of the broker; port 0 picks a free one (KAFKA_ADDR)")
	controller := fs.String("controller-addr", "", "address of the KRaft controller listener; default a free port, which a restart on the same --data must repeat (KAFKA_CONTROLLER_ADDR)")
	data := fs.String("data", "", "folder keeping the broker's log across restarts; empty uses a temporary folder removed on exit (KAFKA_DATA)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	start := time.Now()
	k, err := devenv.StartKafka(ctx, devenv.KafkaConfig{Addr: *addr, ControllerAddr: *controller, DataDir: *data, Log: stderr})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "KAFKA_BROKERS=%s\n", k.Addr())
	fmt.Fprintf(stderr, "Apache Kafka %s ready after %s; controller %s, log in %s; Ctrl-C stops it\n",
		devenv.KafkaVersion, time.Since(start).Round(time.Millisecond), k.ControllerAddr(), k.DataDir())
	select {
	case <-ctx.Done():
	case <-k.Done():
		return errors.New("kafka: the broker exited on its own; its output is above")
	}
	fmt.Fprintln(stderr, "stopping Apache Kafka")
	return k.Close()
}

func cmdDev(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o options
	fs := newFlagSet("dev [--http-addr :8080] [--admin-addr :9180] [--kafka-addr 127.0.0.1:9092] [--data DIR] [--demo]", stderr)
	kafkaAddr := fs.String("kafka-addr", "127.0.0.1:9092", "listen address of the in-process Kafka broker (KAFKA_ADDR)")
	data := fs.String("data", defaultDataDir(), "folder for the broker's log and a private PostgreSQL (GROUPMATCH_DATA)")
	demo := fs.Bool("demo", false, "create a demo tenant, application and directory, and print credentials and a curl command")
	o.addStages(fs, allStages, ":8080", ":9180")
	o.addLog(fs)
	fs.IntVar(&o.partitions, "partitions", 8, "partitions of the topics (TOPIC_PARTITIONS)")
	fs.IntVar(&o.dbMaxConns, "db-max-conns", 8, "largest PostgreSQL connection pool (DB_MAX_CONNS)")
	if err := parse(fs, args, 0); err != nil {
		return err
	}
	if err := o.checkStages(allStages); err != nil {
		return err
	}
	o.topicPrefix = pipeline.DefaultTopicPrefix
	log, err := o.logger(stderr)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*data, 0o755); err != nil {
		return fmt.Errorf("--data: %w", err)
	}

	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: *kafkaAddr, DataDir: filepath.Join(*data, "kafka"), Partitions: o.partitions, Logger: log})
	if err != nil {
		return err
	}
	defer b.Close()
	o.brokers = b.Addr()

	pg, err := devenv.EnsurePostgres(ctx, devenv.PostgresConfig{URL: os.Getenv("DATABASE_URL"), DataDir: *data, Logger: log})
	if err != nil {
		return err
	}
	defer pg.Stop(context.WithoutCancel(ctx))
	o.databaseURL = pg.URL
	if _, err := migrate(ctx, pg.URL); err != nil {
		return err
	}
	if err := createTopics(ctx, &o); err != nil {
		return err
	}

	return runStages(ctx, &o, []string{stageIngest, stageMatcher, stageSink}, log, func(httpAddr, adminAddr string) {
		base := localURL(httpAddr)
		fmt.Fprintf(stdout, "groupmatch dev is running\n  HTTP API:      %s\n  admin:         %s/metrics, /readyz, /healthz\n  KAFKA_BROKERS=%s\n  DATABASE_URL=%s\n  data folder:   %s\n",
			base, localURL(adminAddr), b.Addr(), pg.URL, *data)
		if *demo {
			if err := printDemo(ctx, pg.URL, base, stdout); err != nil {
				log.Error("demo set-up failed", "err", redact.Error(err))
			}
		}
	})
}

// createTopics creates the topics with one replica, over o's Kafka
// security.
func createTopics(ctx context.Context, o *options) error {
	sec, err := o.security()
	if err != nil {
		return err
	}
	return stream.CreateTopics(ctx, o.brokerList(), sec, topicSpecs(o, topicSettings{replication: 1}))
}

// demoDirectory is the demo tenant's customers: the curl example matches
// three of them, by unionid, phone and thirdId, and misses one.
const demoDirectory = `{"customerId": 1001, "thirdId": "crm-1", "unionid": "o6_demo_union_1001", "phones": ["13800000001"]}
{"customerId": 1002, "thirdId": "crm-2", "phones": ["13800000002"], "openids": [{"openid": "oDemoOpen1002", "appType": "gzh", "appId": "wxdemo"}]}
{"customerId": 1003, "thirdId": "crm-3", "unionid": "o6_demo_union_1003"}
`

func printDemo(ctx context.Context, dbURL, base string, stdout io.Writer) error {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	store := apps.NewStore(pool)
	creds, err := store.Create(ctx, "demo", "demo-app", []string{apps.ScopeGroup})
	if err != nil {
		return err
	}
	tenantID, err := store.TenantID(ctx, "demo")
	if err != nil {
		return err
	}
	if _, err := directory.NewLoader(pool).Load(ctx, tenantID, strings.NewReader(demoDirectory)); err != nil {
		return err
	}
	tok, err := store.IssueToken(ctx, creds.AppID, creds.Secret)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, `
Demo tenant "demo": instanceAppid=%s instanceSecrect=%s
A token (valid 2 h; get another with
  curl '%s/api/open/app/getOrgAccessToken?instanceAppid=%s&instanceSecrect=%s'):

export TOKEN=%s
curl -s -X POST %s/api/integrate/audience/group/rel/batchAdd -H "X-Token: $TOKEN" -H 'Content-Type: application/json' \
  -d '{"publicParams":{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add"},"data":[{"unionid":"o6_demo_union_1001","groups":"vip,new"},{"phone":"+86 138-0000-0002","groups":"vip"},{"thirdId":"crm-3","groups":"vip"},{"thirdId":"nobody","groups":"vip"}]}'
curl -s "%s/api/integrate/audience/group/rel/batchResult?batchId=<the data above>" -H "X-Token: $TOKEN"
curl -s "%s/api/integrate/audience/group/members?groupName=vip" -H "X-Token: $TOKEN"
`, creds.AppID, creds.Secret, base, creds.AppID, creds.Secret, tok.Access, base, base, base)
	return nil
}

// localURL is the http URL of a listener's address, on 127.0.0.1 when it
// listens on every address.
func localURL(addr string) string {
	if strings.HasPrefix(addr, "[::]:") || strings.HasPrefix(addr, "0.0.0.0:") {
		return "http://127.0.0.1:" + addr[strings.LastIndex(addr, ":")+1:]
	}
	return "http://" + addr
}
