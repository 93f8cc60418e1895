package main

import (
	"bytes"
	"context"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/apps"
	"github.com/groupmatch/groupmatch/devenv"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/stream"
)

// Passwords of the secured broker's users; none may appear in any output.
const (
	adminPassword   = "admin-Pw-7c1e"   // PLAIN, super user: runs topics
	stagesPassword  = "stages-Pw-93ad"  // SCRAM-SHA-512, super user: runs the stages
	feedPassword    = "feed-Pw-5b20"    // PLAIN, a feed of tenant acme
	feed512Password = "feed512-Pw-e4f8" // SCRAM-SHA-512, the same feed's rights
	storePassword   = "store-Pw-0a77"   // the broker's keystore and truststore
)

// Apache Kafka with a SASL_SSL listener (mutual TLS, PLAIN and
// SCRAM-SHA-512) and ACLs (StandardAuthorizer): groupmatch's admin
// (topics), writers and consumers (every stage, events per tenant) work
// over it, and a feed principal allowed only to write the requests topic
// and read its tenant's events is refused everything else. No password
// shows in any output.
func TestSecuredKafka(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dir := t.TempDir()
	pki := newKafkaPKI(t, dir)
	plain, controller, secure := freeAddr(t), freeAddr(t), freeAddr(t)
	jaasPlain := `org.apache.kafka.common.security.plain.PlainLoginModule required user_admin="` + adminPassword + `" user_feed="` + feedPassword + `";`
	var brokerLog bytes.Buffer
	k, err := devenv.StartKafka(ctx, devenv.KafkaConfig{Addr: plain, ControllerAddr: controller, Log: &brokerLog, Settings: map[string]string{
		// PLAINTEXT stays for the test's set-up (its ANONYMOUS principal
		// is a super user); groupmatch speaks to SASL_SSL.
		"listeners":                                             "PLAINTEXT://" + plain + ",CONTROLLER://" + controller + ",SASL_SSL://" + secure,
		"advertised.listeners":                                  "PLAINTEXT://" + plain + ",SASL_SSL://" + secure,
		"listener.security.protocol.map":                        "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL",
		"sasl.enabled.mechanisms":                               "PLAIN,SCRAM-SHA-512",
		"listener.name.sasl_ssl.plain.sasl.jaas.config":         jaasPlain,
		"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
		"ssl.keystore.type":                                     "PKCS12",
		"ssl.keystore.location":                                 pki.keystore,
		"ssl.keystore.password":                                 storePassword,
		"ssl.key.password":                                      storePassword,
		"ssl.truststore.type":                                   "PKCS12",
		"ssl.truststore.location":                               pki.truststore,
		"ssl.truststore.password":                               storePassword,
		// Mutual TLS on a SASL_SSL listener takes the listener's prefix
		// (KIP-684); the bare setting applies to SSL listeners only.
		"listener.name.sasl_ssl.ssl.client.auth": "required",
		"authorizer.class.name":                  "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
		"super.users":                            "User:ANONYMOUS;User:admin;User:stages",
		"allow.everyone.if.no.acl.found":         "false",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Close() })

	// SCRAM users and the feeds' ACLs, set up over PLAINTEXT.
	admin := &kafka.Client{Addr: kafka.TCP(plain), Timeout: 20 * time.Second}
	scram := func(user, password string) kafka.UserScramCredentialsUpsertion {
		salt := make([]byte, 16)
		_, _ = rand.Read(salt)
		const iterations = 4096
		salted, err := pbkdf2.Key(sha512.New, password, salt, iterations, sha512.Size)
		if err != nil {
			t.Fatal(err)
		}
		return kafka.UserScramCredentialsUpsertion{Name: user, Mechanism: kafka.ScramMechanismSha512, Iterations: iterations, Salt: salt, SaltedPassword: salted}
	}
	users, err := admin.AlterUserScramCredentials(ctx, &kafka.AlterUserScramCredentialsRequest{
		Upsertions: []kafka.UserScramCredentialsUpsertion{scram("stages", stagesPassword), scram("feed512", feed512Password)}})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range users.Results {
		if u.Error != nil {
			t.Fatalf("SCRAM user %s: %v", u.User, u.Error)
		}
	}
	var acls []kafka.ACLEntry
	for _, p := range []string{"User:feed", "User:feed512"} {
		allow := func(rt kafka.ResourceType, name string, op kafka.ACLOperationType) kafka.ACLEntry {
			return kafka.ACLEntry{ResourceType: rt, ResourceName: name, ResourcePatternType: kafka.PatternTypeLiteral,
				Principal: p, Host: "*", Operation: op, PermissionType: kafka.ACLPermissionTypeAllow}
		}
		acls = append(acls,
			allow(kafka.ResourceTypeTopic, "groupmatch.requests", kafka.ACLOperationTypeWrite),
			allow(kafka.ResourceTypeTopic, "groupmatch.events.acme", kafka.ACLOperationTypeRead),
			allow(kafka.ResourceTypeGroup, "acme-feed", kafka.ACLOperationTypeRead))
	}
	created, err := admin.CreateACLs(ctx, &kafka.CreateACLsRequest{ACLs: acls})
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range created.Errors {
		if err != nil {
			t.Fatalf("ACL: %v", err)
		}
	}

	writeSecret := func(name, secret string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tlsFlags := []string{"--kafka-tls-ca-file", pki.ca, "--kafka-tls-cert-file", pki.clientCert, "--kafka-tls-key-file", pki.clientKey}
	var outputs bytes.Buffer // everything groupmatch printed, checked for passwords at the end
	topics := func(extra ...string) error {
		var out bytes.Buffer
		err := run(ctx, append(append([]string{"topics", "--kafka-brokers", secure, "--partitions", "2"}, tlsFlags...), extra...), &out, &out)
		outputs.Write(out.Bytes())
		if err != nil {
			outputs.WriteString(err.Error())
		}
		return err
	}

	// The admin (PLAIN, password from a file) creates the topics.
	adminFile := writeSecret("admin-password", adminPassword)
	if err := topics("--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "admin", "--kafka-sasl-password-file", adminFile, "--tenant", "acme"); err != nil {
		t.Fatalf("topics as admin: %v\n%s", err, outputs.String())
	}
	// Apache Kafka reports the settings the topics were created with: no
	// drift, until other settings are stated.
	asAdmin := []string{"--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "admin", "--kafka-sasl-password-file", adminFile, "--tenant", "acme"}
	mark := outputs.Len()
	if err := topics(append(asAdmin, "--check")...); err != nil || strings.Count(outputs.String()[mark:], ": exists as stated: ") != 7 {
		t.Fatalf("topics --check after creating them: %v\n%s", err, outputs.String()[mark:])
	}
	mark = outputs.Len()
	err = topics(append(asAdmin, "--check", "--retention", "24h", "--min-insync-replicas", "1", "--partitions", "3")...)
	if err == nil || !strings.Contains(outputs.String()[mark:], "topic groupmatch.records: drift: partitions 2, want 3; retention.ms 604800000, want 86400000\n") {
		t.Errorf("topics --check with other settings: %v\n%s", err, outputs.String()[mark:])
	}

	// A wrong password, and a feed's rights, do not create topics.
	t.Setenv("KAFKA_SASL_PASSWORD", "not-"+adminPassword)
	if err := topics("--kafka-sasl-mechanism", "PLAIN", "--kafka-sasl-username", "admin"); err == nil {
		t.Error("topics with a wrong password succeeded")
	}
	t.Setenv("KAFKA_SASL_PASSWORD", feed512Password)
	if err := topics("--kafka-sasl-mechanism", "SCRAM-SHA-512", "--kafka-sasl-username", "feed512", "--tenant", "other"); !errors.Is(err, kafka.TopicAuthorizationFailed) {
		t.Errorf("topics as the feed: %v, want TopicAuthorizationFailed", err)
	}

	// Every stage runs as the SCRAM-SHA-512 user, over mutual TLS.
	pool, dbURL := schematest.NewPool(t)
	o := &options{
		brokers: secure, databaseURL: dbURL, httpAddr: "127.0.0.1:0", topicPrefix: "groupmatch.",
		partitions: 2, rateLimit: 1000, rateBurst: 1000, matcherChunk: 500, sinkChunk: 500,
		dbMaxConns: 8, pendingTimeout: 30 * time.Second, eventsPerTenant: true,
		kafkaSecurity: stream.SecurityConfig{SASLMechanism: "SCRAM-SHA-512", SASLUsername: "stages",
			SASLPasswordFile: writeSecret("stages-password", stagesPassword),
			TLSCAFile:        pki.ca, TLSCertFile: pki.clientCert, TLSKeyFile: pki.clientKey},
	}
	logs := &lockedWriter{w: &bytes.Buffer{}}
	base, adminURL := runStagesOn(t, o, slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})), false)
	s := &system{t: t, base: base, admin: adminURL, pool: pool, apps: apps.NewStore(pool), opts: o, logs: logs}
	_, token := s.app("acme", apps.ScopeGroup)

	feedSec := func(mech, user, password string) *stream.Security {
		sec, err := stream.SecurityConfig{SASLMechanism: mech, SASLUsername: user, SASLPassword: password,
			TLSCAFile: pki.ca, TLSCertFile: pki.clientCert, TLSKeyFile: pki.clientKey}.Build()
		if err != nil {
			t.Fatal(err)
		}
		return sec
	}
	for _, feed := range []struct {
		name string
		sec  *stream.Security
	}{
		{"PLAIN", feedSec("PLAIN", "feed", feedPassword)},
		{"SCRAM-SHA-512", feedSec("SCRAM-SHA-512", "feed512", feed512Password)},
	} {
		t.Run(feed.name, func(t *testing.T) {
			// The feed publishes a request and reads its answer and the
			// batch's end on its tenant's topic, in its own group.
			key := "order-" + feed.name
			w := stream.NewWriter([]string{secure}, "groupmatch.requests", feed.sec)
			defer w.Close()
			body := `{"publicParams":{"isMatching":false,"optType":"add"},"data":[{"thirdId":"s-1","groups":"secured"}]}`
			if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(key), Value: []byte(body),
				Headers: []kafka.Header{{Key: "x-token", Value: []byte(token)}}}); err != nil {
				t.Fatalf("publish a request: %v", err)
			}
			c, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: []string{secure}, GroupID: "acme-feed", Topic: "groupmatch.events.acme", Security: feed.sec})
			if err != nil {
				t.Fatal(err)
			}
			cctx, stop := context.WithTimeout(ctx, 60*time.Second)
			defer stop()
			var batch int64
			var finished bool
			err = c.Run(cctx, func(_ context.Context, msgs []kafka.Message) error {
				for _, m := range msgs {
					var e event
					mustUnmarshal(t, m.Value, &e)
					if e.Type == "request.accepted" && e.RequestKey == key {
						batch = e.BatchID
					}
					if e.Type == "batch.finished" && batch != 0 && e.BatchID == batch && e.Status == "SUCCESS" {
						finished = true
						stop()
					}
				}
				return nil
			})
			if err != nil || !finished {
				t.Fatalf("the feed's events: %v; accepted batch %d, finished %v", err, batch, finished)
			}

			// Everything else is refused.
			denied := stream.NewWriter([]string{secure}, "groupmatch.records", feed.sec)
			denied.MaxAttempts = 1
			defer denied.Close()
			if err := denied.WriteMessages(ctx, kafka.Message{Value: []byte(`{}`)}); err == nil {
				t.Error("the feed wrote the records topic")
			}
			for _, topic := range []string{"groupmatch.records", "groupmatch.resolved", "groupmatch.events"} {
				dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				conn, err := feed.sec.Dialer(10*time.Second).DialLeader(dctx, "tcp", secure, topic, 0)
				cancel()
				if conn != nil {
					conn.Close()
				}
				if !errors.Is(err, kafka.TopicAuthorizationFailed) {
					t.Errorf("the feed reached %s: %v, want TopicAuthorizationFailed", topic, err)
				}
			}
			rd := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{secure}, Topic: "groupmatch.resolved", GroupID: "acme-feed",
				Dialer: feed.sec.Dialer(10 * time.Second), MaxWait: 100 * time.Millisecond})
			defer rd.Close()
			rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
			defer rcancel()
			if _, err := rd.FetchMessage(rctx); err == nil {
				t.Error("the feed read the resolved topic")
			}
		})
	}

	// Without a client certificate the TLS handshake is refused.
	noCert, err := stream.SecurityConfig{SASLMechanism: "PLAIN", SASLUsername: "feed", SASLPassword: feedPassword, TLSCAFile: pki.ca}.Build()
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	if err := stream.Ping(pctx, []string{secure}, noCert); err == nil {
		t.Error("a client without a certificate was let in")
	}
	pcancel()

	all := outputs.String() + logs.String() + brokerLog.String()
	for _, pw := range []string{adminPassword, stagesPassword, feedPassword, feed512Password} {
		if strings.Contains(all, pw) {
			t.Errorf("a password is in the output")
		}
	}
	if !strings.Contains(logs.String(), `"kafka_security":"SASL_SSL (SCRAM-SHA-512 as \"stages\") with a client certificate"`) {
		t.Errorf("the stages' start-up log does not name their Kafka security")
	}
}

// freeAddr is a 127.0.0.1 address with a port the OS just gave out.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// kafkaPKI is a CA, the broker's PKCS12 keystore (its certificate and key)
// and truststore (the CA) for Java, and PEM files for Go: the CA and a
// client certificate and key.
type kafkaPKI struct {
	ca, clientCert, clientKey string
	keystore, truststore      string
}

// newKafkaPKI makes the certificates with openssl and the truststore with
// keytool, as an operator would.
func newKafkaPKI(t *testing.T, dir string) kafkaPKI {
	t.Helper()
	sh := func(name string, args ...string) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=groupmatch test CA")
	write("broker.ext", "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n")
	write("client.ext", "extendedKeyUsage=clientAuth\n")
	for _, name := range []string{"broker", "client"} {
		sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", name+".key", "-out", name+".csr", "-subj", "/CN="+name)
		sh("openssl", "x509", "-req", "-in", name+".csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
			"-out", name+".pem", "-days", "2", "-extfile", name+".ext")
	}
	sh("openssl", "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
		"-name", "broker", "-out", "broker.p12", "-passout", "pass:"+storePassword)
	sh("keytool", "-importcert", "-noprompt", "-alias", "ca", "-file", "ca.pem",
		"-keystore", "truststore.p12", "-storetype", "PKCS12", "-storepass", storePassword)
	p := func(name string) string { return filepath.Join(dir, name) }
	return kafkaPKI{ca: p("ca.pem"), clientCert: p("client.pem"), clientKey: p("client.key"),
		keystore: p("broker.p12"), truststore: p("truststore.p12")}
}
