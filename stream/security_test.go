package stream_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/groupmatch/groupmatch/stream"
)

const testPassword = "s3cret-Pa55word"

// Every bad combination is refused with the field at fault, and neither
// the error nor the config's String ever shows the password.
func TestSecurityConfigBuildErrors(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pwFile := write("password", testPassword+"\n", 0o600)
	empty := write("empty", "\n", 0o600)
	notPEM := write("not-pem", "hello "+testPassword, 0o600)
	unreadable := write("unreadable", testPassword, 0o000)
	if f, err := os.Open(unreadable); err == nil { // running as root: any file is readable
		f.Close()
		unreadable = filepath.Join(dir, "missing")
	}

	for _, tc := range []struct {
		name  string
		cfg   stream.SecurityConfig
		field string
		want  string
	}{
		{"unknown mechanism", stream.SecurityConfig{SASLMechanism: "GSSAPI", SASLUsername: "u", SASLPassword: testPassword}, "SASLMechanism", `unknown mechanism "GSSAPI"`},
		{"username without mechanism", stream.SecurityConfig{SASLUsername: "u"}, "SASLMechanism", "no mechanism"},
		{"password without mechanism", stream.SecurityConfig{SASLPassword: testPassword}, "SASLMechanism", "no mechanism"},
		{"mechanism without username", stream.SecurityConfig{SASLMechanism: "PLAIN", SASLPassword: testPassword}, "SASLUsername", "required with SASL mechanism PLAIN"},
		{"username without password", stream.SecurityConfig{SASLMechanism: "scram-sha-512", SASLUsername: "u"}, "SASLPassword", "required with SASL mechanism SCRAM-SHA-512"},
		{"password and file", stream.SecurityConfig{SASLMechanism: "PLAIN", SASLUsername: "u", SASLPassword: testPassword, SASLPasswordFile: pwFile}, "SASLPasswordFile", "not both"},
		{"unreadable password file", stream.SecurityConfig{SASLMechanism: "PLAIN", SASLUsername: "u", SASLPasswordFile: unreadable}, "SASLPasswordFile", "cannot read the password file"},
		{"empty password file", stream.SecurityConfig{SASLMechanism: "PLAIN", SASLUsername: "u", SASLPasswordFile: empty}, "SASLPasswordFile", "is empty"},
		{"unreadable CA", stream.SecurityConfig{TLS: true, TLSCAFile: unreadable}, "TLSCAFile", "cannot read the CA file"},
		{"CA not PEM", stream.SecurityConfig{TLSCAFile: notPEM}, "TLSCAFile", "holds no PEM certificate"},
		{"cert without key", stream.SecurityConfig{TLS: true, TLSCertFile: pki.clientCert}, "TLSKeyFile", "required with a client certificate"},
		{"key without cert", stream.SecurityConfig{TLS: true, TLSKeyFile: pki.clientKey}, "TLSCertFile", "required with a client key"},
		{"unreadable key", stream.SecurityConfig{TLS: true, TLSCertFile: pki.clientCert, TLSKeyFile: unreadable}, "TLSKeyFile", "cannot read the key file"},
		{"key of another certificate", stream.SecurityConfig{TLS: true, TLSCertFile: pki.clientCert, TLSKeyFile: pki.brokerKey}, "TLSKeyFile", "are not a certificate and its key"},
		{"key not PEM", stream.SecurityConfig{TLS: true, TLSCertFile: pki.clientCert, TLSKeyFile: notPEM}, "TLSKeyFile", "are not a certificate and its key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sec, err := tc.cfg.Build()
			var ce *stream.ConfigError
			if !errors.As(err, &ce) {
				t.Fatalf("Build() = %v, %v; want a *stream.ConfigError", sec, err)
			}
			if ce.Field != tc.field || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q (field %s); want field %s and %q", err, ce.Field, tc.field, tc.want)
			}
			for _, s := range []string{err.Error(), tc.cfg.String(), fmt.Sprintf("%v %+v %#v", tc.cfg, tc.cfg, tc.cfg)} {
				if strings.Contains(s, testPassword) {
					t.Errorf("the password is shown: %s", s)
				}
			}
		})
	}
}

// Good configurations build, describe themselves without the password,
// and the zero config is plaintext (nil).
func TestSecurityConfigBuild(t *testing.T) {
	dir := t.TempDir()
	pki := newTestPKI(t, dir)
	pwFile := filepath.Join(dir, "pw")
	if err := os.WriteFile(pwFile, []byte(testPassword+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cfg  stream.SecurityConfig
		want string
	}{
		{stream.SecurityConfig{}, "PLAINTEXT"},
		{stream.SecurityConfig{TLS: true}, "SSL"},
		{stream.SecurityConfig{TLSCAFile: pki.ca}, "SSL"},
		{stream.SecurityConfig{TLSCAFile: pki.ca, TLSCertFile: pki.clientCert, TLSKeyFile: pki.clientKey}, "SSL with a client certificate"},
		{stream.SecurityConfig{SASLMechanism: "plain", SASLUsername: "feed", SASLPassword: testPassword}, `SASL_PLAINTEXT (PLAIN as "feed")`},
		{stream.SecurityConfig{SASLMechanism: "SCRAM-SHA-256", SASLUsername: "feed", SASLPasswordFile: pwFile, TLS: true}, `SASL_SSL (SCRAM-SHA-256 as "feed")`},
		{stream.SecurityConfig{SASLMechanism: "SCRAM-SHA-512", SASLUsername: "feed", SASLPassword: testPassword, TLSCAFile: pki.ca}, `SASL_SSL (SCRAM-SHA-512 as "feed")`},
	} {
		sec, err := tc.cfg.Build()
		if err != nil {
			t.Fatalf("%v: %v", tc.cfg, err)
		}
		if got := sec.String(); got != tc.want {
			t.Errorf("%v: String() = %q, want %q", tc.cfg, got, tc.want)
		}
		if s := fmt.Sprintf("%v %+v %#v %s", sec, sec, sec, tc.cfg); strings.Contains(s, testPassword) {
			t.Errorf("the password is shown: %s", s)
		}
	}
}

// The clients of this package reach a cluster over mutual TLS with every
// SASL mechanism, and the broker's ACLs hold: a feed principal may write
// its requests topic and read its events topic with its group, and is
// refused everything else.
func TestSecureClients(t *testing.T) {
	pki := newTestPKI(t, t.TempDir())
	c, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.TLS(pki.serverTLS(t)),
		kfake.EnableSASL(),
		kfake.EnableACLs(),
		kfake.Superuser("SCRAM-SHA-256", "admin", "admin-"+testPassword),
		kfake.User("PLAIN", "feed", testPassword, feedACLs("feed")...),
		kfake.User("SCRAM-SHA-512", "feed512", testPassword, feedACLs("feed512")...),
	)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	brokers := c.ListenAddrs()
	ctx := testContext(t)
	build := func(cfg stream.SecurityConfig) *stream.Security {
		t.Helper()
		cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile = pki.ca, pki.clientCert, pki.clientKey
		sec, err := cfg.Build()
		if err != nil {
			t.Fatal(err)
		}
		return sec
	}
	admin := build(stream.SecurityConfig{SASLMechanism: "SCRAM-SHA-256", SASLUsername: "admin", SASLPassword: "admin-" + testPassword})

	states, err := stream.EnsureTopics(ctx, brokers, admin, []stream.TopicSpec{
		{Name: "gm.requests", Partitions: 2}, {Name: "gm.records", Partitions: 2}, {Name: "gm.events.t1", Partitions: 1}})
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range states {
		if !s.Created {
			t.Errorf("%s not created", s.Spec.Name)
		}
	}

	if err := stream.Ping(ctx, brokers, admin); err != nil {
		t.Fatal(err)
	}

	// Refused: no TLS, no client certificate, a wrong password.
	for name, sec := range map[string]*stream.Security{
		"plaintext":      nil,
		"wrong password": build(stream.SecurityConfig{SASLMechanism: "PLAIN", SASLUsername: "feed", SASLPassword: "wrong"}),
	} {
		pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		if err := stream.Ping(pctx, brokers, sec); err == nil {
			t.Errorf("%s: Ping succeeded", name)
		} else if strings.Contains(err.Error(), testPassword) {
			t.Errorf("%s: the password is in the error: %v", name, err)
		}
		cancel()
	}
	noCert, err := stream.SecurityConfig{TLSCAFile: pki.ca, SASLMechanism: "PLAIN", SASLUsername: "feed", SASLPassword: testPassword}.Build()
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := stream.Ping(pctx, brokers, noCert); err == nil {
		t.Error("Ping without a client certificate succeeded")
	}
	cancel()

	for _, mech := range []string{"PLAIN", "SCRAM-SHA-512"} {
		t.Run(mech, func(t *testing.T) {
			user := map[string]string{"PLAIN": "feed", "SCRAM-SHA-512": "feed512"}[mech]
			sec := build(stream.SecurityConfig{SASLMechanism: mech, SASLUsername: user, SASLPassword: testPassword})
			w := stream.NewWriter(brokers, "gm.requests", sec)
			defer w.Close()
			if err := w.WriteMessages(ctx, kafka.Message{Key: []byte(user), Value: []byte(`{}`)}); err != nil {
				t.Fatalf("write the requests topic: %v", err)
			}
			// The broker leaves topics the principal may not describe out of
			// metadata, so kafka-go's writer sees no such topic; asked
			// about the topic itself, the broker says why.
			denied := stream.NewWriter(brokers, "gm.records", sec)
			denied.MaxAttempts = 1
			defer denied.Close()
			if err := denied.WriteMessages(ctx, kafka.Message{Value: []byte(`{}`)}); !errors.Is(err, kafka.TopicAuthorizationFailed) && !errors.Is(err, kafka.UnknownTopicOrPartition) {
				t.Errorf("write the records topic: %v, want TopicAuthorizationFailed or UnknownTopicOrPartition", err)
			}
			if conn, err := sec.Dialer(5*time.Second).DialLeader(ctx, "tcp", brokers[0], "gm.records", 0); !errors.Is(err, kafka.TopicAuthorizationFailed) {
				if conn != nil {
					conn.Close()
				}
				t.Errorf("dial the leader of the records topic: %v, want TopicAuthorizationFailed", err)
			}

			// The admin (superuser) puts an event; the feed reads it in its group.
			aw := stream.NewWriter(brokers, "gm.events.t1", admin)
			defer aw.Close()
			if err := aw.WriteMessages(ctx, kafka.Message{Key: []byte(user), Value: []byte(`{"v":1}`)}); err != nil {
				t.Fatal(err)
			}
			cons, err := stream.NewConsumer(stream.ConsumerConfig{Brokers: brokers, GroupID: user, Topic: "gm.events.t1", Security: sec})
			if err != nil {
				t.Fatal(err)
			}
			cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			var got []string
			err = cons.Run(cctx, func(_ context.Context, msgs []kafka.Message) error {
				for _, m := range msgs {
					got = append(got, string(m.Key))
					if string(m.Key) == user {
						cancel()
					}
				}
				return nil
			})
			if err != nil || !slices.Contains(got, user) {
				t.Fatalf("consume the events topic: %v, got keys %v", err, got)
			}

			// Reading a topic it has no Read on is refused.
			rd := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: "gm.records", Partition: 0,
				Dialer: sec.Dialer(5 * time.Second), MaxWait: 100 * time.Millisecond})
			defer rd.Close()
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			if _, err := rd.FetchMessage(rctx); !errors.Is(err, kafka.TopicAuthorizationFailed) {
				t.Errorf("read the records topic: %v, want TopicAuthorizationFailed", err)
			}
			// Creating topics is the admin's.
			if _, err := stream.EnsureTopics(ctx, brokers, sec, []stream.TopicSpec{{Name: "gm.other", Partitions: 1}}); !errors.Is(err, kafka.TopicAuthorizationFailed) {
				t.Errorf("create a topic: %v, want TopicAuthorizationFailed", err)
			}
		})
	}

	// The lag collector reads offsets over the same secured connections.
	lag, err := stream.NewLagCollector(stream.LagConfig{Brokers: brokers, Security: admin,
		Targets: []stream.LagTarget{{Group: "feed", Topic: "gm.events.t1"}}})
	if err != nil {
		t.Fatal(err)
	}
	defer lag.Close()
	lags, err := lag.Lag(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(lags) != 1 || lags[0].Committed < 1 {
		t.Errorf("lag of the feed group: %+v, want one partition with a committed offset", lags)
	}
}

// feedACLs let a feed principal write gm.requests, read gm.events.t1 and
// use the consumer group named like it.
func feedACLs(user string) []kfake.ACL {
	allow := func(res kmsg.ACLResourceType, name string, op kmsg.ACLOperation) kfake.ACL {
		return kfake.ACL{Resource: res, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: op, Allow: true}
	}
	return []kfake.ACL{
		allow(kmsg.ACLResourceTypeTopic, "gm.requests", kmsg.ACLOperationWrite),
		allow(kmsg.ACLResourceTypeTopic, "gm.events.t1", kmsg.ACLOperationRead),
		allow(kmsg.ACLResourceTypeGroup, user, kmsg.ACLOperationRead),
	}
}

// testPKI is a CA and a broker and a client certificate it signed, as PEM
// files.
type testPKI struct {
	ca, brokerCert, brokerKey, clientCert, clientKey string
}

func newTestPKI(t *testing.T, dir string) testPKI {
	t.Helper()
	caKey := newKey(t)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "groupmatch test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	p := testPKI{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, p.ca, "CERTIFICATE", caDER)
	issue := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key := newKey(t)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		cert, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, cert, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
		return cert, keyFile
	}
	p.brokerCert, p.brokerKey = issue("broker", 2, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey = issue("client", 3, x509.ExtKeyUsageClientAuth)
	return p
}

// serverTLS is the broker's side: its certificate, and client certificates
// of the CA required.
func (p testPKI) serverTLS(t *testing.T) *tls.Config {
	cert, err := tls.LoadX509KeyPair(p.brokerCert, p.brokerKey)
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	return &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
