package main

import (
	"bytes"
	"context"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

const flagSecret = "flag-S3cret-value"

// --help documents every Kafka security setting and never shows the
// password, nor any other environment value (issue 14: it shows the
// built-in defaults), even when the environment holds one.
func TestHelpShowsNoKafkaPassword(t *testing.T) {
	t.Setenv("KAFKA_SASL_PASSWORD", flagSecret)
	t.Setenv("KAFKA_SASL_USERNAME", "feed-user")
	for _, cmd := range []string{"serve", "ingest", "matcher", "sink", "topics", "bench"} {
		var out bytes.Buffer
		err := run(context.Background(), []string{cmd, "--help"}, &out, &out)
		if err != flag.ErrHelp {
			t.Fatalf("%s --help: %v", cmd, err)
		}
		help := out.String()
		if strings.Contains(help, flagSecret) {
			t.Errorf("%s --help shows the password:\n%s", cmd, help)
		}
		for _, want := range []string{"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD)", "KAFKA_SASL_PASSWORD_FILE",
			"KAFKA_TLS)", "KAFKA_TLS_CA_FILE", "KAFKA_TLS_CERT_FILE", "KAFKA_TLS_KEY_FILE"} {
			if !strings.Contains(help, want) {
				t.Errorf("%s --help lacks %s", cmd, want)
			}
		}
		if strings.Contains(help, "feed-user") {
			t.Errorf("%s --help shows the environment's KAFKA_SASL_USERNAME as a default", cmd)
		}
		if cmd != "topics" && !strings.Contains(help, "GROUP_PREFIX") {
			t.Errorf("%s --help lacks GROUP_PREFIX", cmd)
		}
	}
}

// A bad security setting stops every command at start-up with the flag and
// variable at fault, never the password, before anything is dialled.
func TestKafkaSecurityErrors(t *testing.T) {
	dir := t.TempDir()
	cert := filepath.Join(dir, "client.pem")
	if err := os.WriteFile(cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"unknown mechanism", map[string]string{"KAFKA_SASL_MECHANISM": "GSSAPI", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": flagSecret}, nil,
			`--kafka-sasl-mechanism (KAFKA_SASL_MECHANISM): unknown mechanism "GSSAPI"`},
		{"username without password", map[string]string{"KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "u"}, nil,
			"--kafka-sasl-password (KAFKA_SASL_PASSWORD): required with SASL mechanism SCRAM-SHA-512"},
		{"password without mechanism", nil, []string{"--kafka-sasl-password", flagSecret},
			"--kafka-sasl-mechanism (KAFKA_SASL_MECHANISM): a SASL username or password is set but no mechanism"},
		{"missing password file", map[string]string{"KAFKA_SASL_MECHANISM": "PLAIN", "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD_FILE": filepath.Join(dir, "nope")}, nil,
			"--kafka-sasl-password-file (KAFKA_SASL_PASSWORD_FILE): cannot read the password file"},
		{"cert without key", map[string]string{"KAFKA_TLS_CERT_FILE": cert}, nil,
			"--kafka-tls-key-file (KAFKA_TLS_KEY_FILE): required with a client certificate file"},
		{"missing CA", map[string]string{"KAFKA_TLS": "true", "KAFKA_TLS_CA_FILE": filepath.Join(dir, "ca.pem")}, nil,
			"--kafka-tls-ca-file (KAFKA_TLS_CA_FILE): cannot read the CA file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			for _, cmd := range []string{"topics", "serve", "matcher"} {
				var out bytes.Buffer
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err := run(ctx, append([]string{cmd, "--kafka-brokers", "127.0.0.1:1"}, tc.args...), &out, &out)
				cancel()
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%s: %v, want %q", cmd, err, tc.want)
					continue
				}
				if strings.Contains(err.Error()+out.String(), flagSecret) {
					t.Errorf("%s: the password is shown: %v\n%s", cmd, err, out.String())
				}
			}
		})
	}
}

// Group ids are <prefix><stage>, the prefix defaulting to the topic prefix
// with its final '.' made '-': the default keeps the ids of earlier releases.
func TestGroupIDs(t *testing.T) {
	for _, tc := range []struct {
		env  map[string]string
		args []string
		want string
	}{
		{nil, nil, "groupmatch-matcher"},
		{nil, []string{"--topic-prefix", "staging.gm."}, "staging.gm-matcher"},
		{nil, []string{"--topic-prefix", "staging_"}, "staging_-matcher"},
		{map[string]string{"GROUP_PREFIX": "blue."}, []string{"--topic-prefix", "staging.gm."}, "blue.matcher"},
		{map[string]string{"GROUP_PREFIX": "blue-"}, []string{"--group-prefix", "green-"}, "green-matcher"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var o options
			fs := newFlagSet("matcher", &bytes.Buffer{})
			o.addKafka(fs)
			o.addGroups(fs)
			if err := parse(fs, tc.args, 0); err != nil {
				t.Fatal(err)
			}
			if got := o.groupID(stageMatcher); got != tc.want {
				t.Errorf("groupID = %q, want %q", got, tc.want)
			}
		})
	}
}

// topics creates topics with the stated settings, reports existing ones
// that differ without changing them, and fails on drift only with --check.
func TestTopicsDrift(t *testing.T) {
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// An older records topic: fewer partitions, another retention.
	if err := stream.CreateTopics(ctx, []string{b.Addr()}, nil, []stream.TopicSpec{{Name: "groupmatch.records", Partitions: 3, Retention: time.Hour}}); err != nil {
		t.Fatal(err)
	}
	topics := func(extra ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := run(ctx, append([]string{"topics", "--kafka-brokers", b.Addr(), "--partitions", "4", "--retention", "48h"}, extra...), &out, &errOut)
		return out.String() + errOut.String(), err
	}
	out, err := topics("--tenant", "acme")
	if err != nil {
		t.Fatalf("topics: %v\n%s", err, out)
	}
	for _, want := range []string{
		"topic groupmatch.requests: created: 4 partitions, replication factor 1, min.insync.replicas 1, retention 48h0m0s\n",
		"topic groupmatch.records: drift: partitions 3, want 4; retention.ms 3600000, want 172800000\n",
		"topic groupmatch.events: created: 1 partitions, replication factor 1, min.insync.replicas 1, retention 48h0m0s\n",
		"topic groupmatch.events.acme: created: 1 partitions, replication factor 1, min.insync.replicas 1, retention 48h0m0s\n",
		"topic groupmatch.directory: created: 4 partitions, replication factor 1, min.insync.replicas 1, retention 48h0m0s\n",
		"1 existing topic(s) differ from the settings stated; nothing was changed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("topics output lacks %q:\n%s", want, out)
		}
	}
	// Again, with --check: the topics created are as stated, the old one
	// still drifts, and that is now an error.
	out, err = topics("--tenant", "acme", "--check")
	if err == nil || err.Error() != "topics: 1 topic(s) drifted" {
		t.Errorf("topics --check: %v, want 1 topic drifted", err)
	}
	for _, want := range []string{
		"topic groupmatch.requests: exists as stated: 4 partitions",
		"topic groupmatch.events.acme: exists as stated: 1 partitions",
		"topic groupmatch.records: drift: partitions 3, want 4; retention.ms 3600000, want 172800000\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("topics --check output lacks %q:\n%s", want, out)
		}
	}
	// min.insync.replicas is stated too: asking for another is drift.
	out, _ = topics("--min-insync-replicas", "2", "--replication-factor", "2")
	if !strings.Contains(out, "topic groupmatch.dlq: drift: replication factor 1, want 2; min.insync.replicas 1, want 2\n") {
		t.Errorf("drift of min.insync.replicas not reported:\n%s", out)
	}
	for _, bad := range [][]string{{"--tenant", "a b"}, {"--tenant", ""}, {"--min-insync-replicas", "3", "--replication-factor", "2"}, {"--replication-factor", "0"}} {
		if _, err := topics(bad...); err == nil {
			t.Errorf("topics %v succeeded", bad)
		}
	}
}

// With --events-per-tenant a tenant's request and batch events go to its
// own topic when that exists; other tenants' events, and answers to
// requests whose token names no tenant, go to the shared events topic. A
// tenant topic created while the stages run is used from then on.
func TestEventsPerTenant(t *testing.T) {
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := run(ctx, []string{"topics", "--kafka-brokers", b.Addr(), "--partitions", "4", "--tenant", "acme"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	pool, dbURL := schematest.NewPool(t)
	o := &options{
		brokers: b.Addr(), databaseURL: dbURL, httpAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 4, rateLimit: 1000, rateBurst: 1000, matcherChunk: 500, sinkChunk: 500,
		dbMaxConns: 8, pendingTimeout: 30 * time.Second, eventsPerTenant: true, groupPrefix: "env-a.",
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	base, admin := runStagesOn(t, o, slog.New(slog.NewJSONHandler(logs, nil)), false)
	s := &system{t: t, base: base, admin: admin, pool: pool, apps: apps.NewStore(pool), opts: o, logs: logs}
	_, acme := s.app("acme", apps.ScopeGroup)
	_, other := s.app("other", apps.ScopeGroup)

	w := stream.NewWriter(brokers, "groupmatch.requests", nil)
	defer w.Close()
	body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"t-1","groups":"per-tenant"}]}`
	publish := func(key, token string) {
		t.Helper()
		if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(key), Value: []byte(body),
			Headers: []kafka.Header{{Key: "x-token", Value: []byte(token)}}}); err != nil {
			t.Fatal(err)
		}
	}
	publish("acme-1", acme)
	publish("other-1", other)
	publish("forged-1", "forged")

	// events reads a topic until want finds what it needs.
	events := func(topic string, want func([]event) bool) []event {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			var evs []event
			for _, m := range readTopic(t, brokers, topic) {
				var e event
				mustUnmarshal(t, m.Value, &e)
				evs = append(evs, e)
			}
			if want(evs) {
				return evs
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never held the events wanted; it holds %+v", topic, evs)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	finished := func(key string) func([]event) bool {
		return func(evs []event) bool {
			var id int64
			for _, e := range evs {
				if e.Type == "request.accepted" && e.RequestKey == key {
					id = e.BatchID
				}
				if e.Type == "batch.finished" && id != 0 && e.BatchID == id {
					return true
				}
			}
			return false
		}
	}
	for _, e := range events("groupmatch.events.acme", finished("acme-1")) {
		if e.RequestKey != "" && e.RequestKey != "acme-1" {
			t.Errorf("acme's topic holds another's event %+v", e)
		}
	}
	shared := events("groupmatch.events", func(evs []event) bool {
		rejected := false
		for _, e := range evs {
			rejected = rejected || e.Type == "request.rejected" && e.RequestKey == "forged-1" && e.ErrorCode == "TOKEN_INVALID"
		}
		return rejected && finished("other-1")(evs)
	})
	for _, e := range shared {
		if e.RequestKey == "acme-1" {
			t.Errorf("acme's event on the shared topic: %+v", e)
		}
	}
	if !strings.Contains(logs.String(), `"topic":"groupmatch.events.other"`) {
		t.Errorf("no warning about the missing topic of tenant other in the logs")
	}

	// The writers of tenants' topics report under one topic label.
	resp, err := http.Get(admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !bytes.Contains(metrics, []byte(`groupmatch_kafka_writer_messages_total{stage="ingest",topic="groupmatch.events.*"}`)) ||
		bytes.Contains(metrics, []byte(`topic=""`)) {
		t.Errorf("writer metrics of the events writers:\n%s", metrics)
	}

	// The consumer groups carry the prefix asked for.
	client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
	groups, err := client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{"env-a.ingest", "env-a.matcher", "env-a.sink"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range groups.Groups {
		if g.Error != nil || len(g.Members) == 0 {
			t.Errorf("group %s: %v, %d members", g.GroupID, g.Error, len(g.Members))
		}
	}

	// Once the topic of tenant other exists, its events go there.
	if err := run(ctx, []string{"topics", "--kafka-brokers", b.Addr(), "--partitions", "4", "--tenant", "other"}, &bytes.Buffer{}, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for i := 2; ; i++ {
		key := "other-" + strconv.Itoa(i)
		publish(key, other)
		ownTopic := func(evs []event) bool {
			for _, e := range evs {
				if e.RequestKey == key {
					return true
				}
			}
			return false
		}
		time.Sleep(time.Second)
		var evs []event
		for _, m := range readTopic(t, brokers, "groupmatch.events.other") {
			var e event
			mustUnmarshal(t, m.Value, &e)
			evs = append(evs, e)
		}
		if ownTopic(evs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("tenant other's events never reached its new topic; it holds %+v", evs)
		}
	}
}

// A stage whose group would start from scratch while the group of earlier
// releases has offsets on the same topic refuses to start; once the new
// group has offsets of its own (copied, or after --group-prefix
// groupmatch-), it starts.
func TestGroupUpgradeGuard(t *testing.T) {
	b, err := devenv.StartBroker(devenv.BrokerConfig{Addr: "127.0.0.1:0", Partitions: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(b.Close)
	brokers := []string{b.Addr()}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	o := &options{topicPrefix: "staging.", partitions: 2}
	if err := stream.CreateTopics(ctx, brokers, nil, topicSpecs(o, topicSettings{replication: 1})); err != nil {
		t.Fatal(err)
	}
	commit := func(group string) {
		t.Helper()
		client := &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 10 * time.Second}
		resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1,
			Topics: map[string][]kafka.OffsetCommit{"staging.records": {{Partition: 0, Offset: 0}}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, ps := range resp.Topics {
			for _, p := range ps {
				if p.Error != nil {
					t.Fatal(p.Error)
				}
			}
		}
	}
	stages := []string{stageIngest, stageMatcher, stageSink}
	if err := checkGroupUpgrade(ctx, o, brokers, nil, stages); err != nil {
		t.Fatalf("a new installation: %v", err)
	}
	commit("groupmatch-matcher")
	err = checkGroupUpgrade(ctx, o, brokers, nil, stages)
	if err == nil || !strings.HasPrefix(err.Error(), "consumer group staging-matcher has committed nothing on staging.records but groupmatch-matcher") {
		t.Fatalf("an upgrade without the old offsets: %v", err)
	}
	if err := checkGroupUpgrade(ctx, &options{topicPrefix: "staging.", groupPrefix: "groupmatch-"}, brokers, nil, stages); err != nil {
		t.Fatalf("keeping the old groups: %v", err)
	}
	commit("staging-matcher")
	if err := checkGroupUpgrade(ctx, o, brokers, nil, stages); err != nil {
		t.Fatalf("after copying the offsets: %v", err)
	}
}

// A system bench starts itself runs on its own plaintext broker, whatever
// Kafka security the environment holds for --target runs.
func TestBenchOwnBrokerIsPlaintext(t *testing.T) {
	t.Setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
	t.Setenv("KAFKA_SASL_USERNAME", "bench")
	t.Setenv("KAFKA_SASL_PASSWORD", flagSecret)
	t.Setenv("KAFKA_TLS", "true")
	r, _ := runBenchCmd(t, "--customers", "200", "--records", "1000", "--clients", "2", "--via", "kafka")
	if r.Pipeline == nil || r.Setup.Workload.Records != 1000 {
		t.Fatalf("report %+v", r)
	}
}
