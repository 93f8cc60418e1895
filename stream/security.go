package stream

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// SASL mechanisms SecurityConfig accepts.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
)

// SecurityConfig describes how groupmatch's Kafka clients authenticate to
// the cluster and protect their connections. The zero value is a plaintext
// connection without authentication (Kafka's PLAINTEXT listener).
//
// SASLPassword is a secret: nothing in this package prints it, and String
// and GoString leave it out.
type SecurityConfig struct {
	// SASLMechanism is "" (no SASL), PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512,
	// in any letter case.
	SASLMechanism string
	// SASLUsername and a password are required with a mechanism and
	// refused without one.
	SASLUsername string
	// SASLPassword, or else the contents of SASLPasswordFile (one trailing
	// line break removed); never both.
	SASLPassword     string
	SASLPasswordFile string
	// TLS encrypts connections, verifying the brokers' certificates against
	// TLSCAFile (PEM) or, when empty, the system's roots. Any TLS file
	// turns TLS on.
	TLS       bool
	TLSCAFile string
	// TLSCertFile and TLSKeyFile (PEM, both or neither) are the client
	// certificate presented for mutual TLS.
	TLSCertFile string
	TLSKeyFile  string
}

// String describes the configuration without the password.
func (c SecurityConfig) String() string {
	pw := ""
	switch {
	case c.SASLPassword != "":
		pw = " password=<redacted>"
	case c.SASLPasswordFile != "":
		pw = " password-file=" + c.SASLPasswordFile
	}
	return fmt.Sprintf("{sasl=%q user=%q%s tls=%t ca=%q cert=%q key=%q}",
		c.SASLMechanism, c.SASLUsername, pw, c.TLS, c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile)
}

// GoString is String, so that %#v does not print the password either.
func (c SecurityConfig) GoString() string { return c.String() }

// ConfigError is a SecurityConfig setting that cannot be used. Field names
// the SecurityConfig field (e.g. "SASLPasswordFile"), so that callers can
// name their own flag or environment variable. The error never contains the
// password.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string {
	return "stream: kafka security: " + e.Field + ": " + e.Err.Error()
}
func (e *ConfigError) Unwrap() error { return e.Err }

// Security is how every Kafka client of a process reaches the cluster:
// the SASL mechanism (with its credentials) and the TLS configuration, read
// and checked once by SecurityConfig.Build. A nil *Security is a plaintext
// connection without authentication. It is immutable and safe to share
// between clients and goroutines; hand the same value to every constructor
// of this package.
type Security struct {
	mechanism sasl.Mechanism // nil: no SASL
	tls       *tls.Config    // nil: plaintext; never modified after Build
	desc      string         // for String: protocol, mechanism and user
	// writers is the transport every writer built with s shares, as
	// writers without a transport share kafka.DefaultTransport.
	writers *kafka.Transport
}

// Build checks the configuration, reads its files and returns the
// Security to hand to every client. A zero config returns nil, a plaintext
// connection. Errors are *ConfigError.
func (c SecurityConfig) Build() (*Security, error) {
	if c == (SecurityConfig{}) {
		return nil, nil
	}
	s := &Security{}
	mech := strings.ToUpper(strings.TrimSpace(c.SASLMechanism))
	password := c.SASLPassword
	switch {
	case c.SASLPassword != "" && c.SASLPasswordFile != "":
		return nil, &ConfigError{"SASLPasswordFile", errors.New("set either the password or the password file, not both")}
	case c.SASLPasswordFile != "":
		b, err := os.ReadFile(c.SASLPasswordFile)
		if err != nil {
			return nil, &ConfigError{"SASLPasswordFile", fmt.Errorf("cannot read the password file: %w", err)}
		}
		password = strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
		if password == "" {
			return nil, &ConfigError{"SASLPasswordFile", fmt.Errorf("the password file %s is empty", c.SASLPasswordFile)}
		}
	}
	switch mech {
	case "":
		if c.SASLUsername != "" || password != "" {
			return nil, &ConfigError{"SASLMechanism", errors.New("a SASL username or password is set but no mechanism (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)")}
		}
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if c.SASLUsername == "" {
			return nil, &ConfigError{"SASLUsername", fmt.Errorf("required with SASL mechanism %s", mech)}
		}
		if password == "" {
			return nil, &ConfigError{"SASLPassword", fmt.Errorf("required with SASL mechanism %s (or a password file)", mech)}
		}
		if mech == SASLPlain {
			s.mechanism = plain.Mechanism{Username: c.SASLUsername, Password: password}
			break
		}
		algo := scram.SHA256
		if mech == SASLScramSHA512 {
			algo = scram.SHA512
		}
		m, err := scram.Mechanism(algo, c.SASLUsername, password)
		if err != nil {
			// Only a username or password SASLprep refuses fails here;
			// the underlying error never quotes the password.
			return nil, &ConfigError{"SASLPassword", errors.New("the username or password contains characters SCRAM does not allow")}
		}
		s.mechanism = m
	default:
		return nil, &ConfigError{"SASLMechanism", fmt.Errorf("unknown mechanism %q: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", c.SASLMechanism)}
	}

	if c.TLS || c.TLSCAFile != "" || c.TLSCertFile != "" || c.TLSKeyFile != "" {
		cfg, err := c.tlsConfig()
		if err != nil {
			return nil, err
		}
		s.tls = cfg
	}
	proto := "PLAINTEXT"
	switch {
	case s.tls != nil && s.mechanism != nil:
		proto = "SASL_SSL"
	case s.tls != nil:
		proto = "SSL"
	case s.mechanism != nil:
		proto = "SASL_PLAINTEXT"
	}
	s.desc = proto
	s.writers = s.Transport(5 * time.Second)
	if s.mechanism != nil {
		s.desc += fmt.Sprintf(" (%s as %q)", mech, c.SASLUsername)
	}
	if s.tls != nil && len(s.tls.Certificates) > 0 {
		s.desc += " with a client certificate"
	}
	return s, nil
}

func (c SecurityConfig) tlsConfig() (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.TLSCAFile != "" {
		pem, err := os.ReadFile(c.TLSCAFile)
		if err != nil {
			return nil, &ConfigError{"TLSCAFile", fmt.Errorf("cannot read the CA file: %w", err)}
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, &ConfigError{"TLSCAFile", fmt.Errorf("%s holds no PEM certificate", c.TLSCAFile)}
		}
		cfg.RootCAs = pool
	}
	switch {
	case c.TLSCertFile != "" && c.TLSKeyFile == "":
		return nil, &ConfigError{"TLSKeyFile", errors.New("required with a client certificate file")}
	case c.TLSCertFile == "" && c.TLSKeyFile != "":
		return nil, &ConfigError{"TLSCertFile", errors.New("required with a client key file")}
	case c.TLSCertFile != "":
		certPEM, err := os.ReadFile(c.TLSCertFile)
		if err != nil {
			return nil, &ConfigError{"TLSCertFile", fmt.Errorf("cannot read the certificate file: %w", err)}
		}
		keyPEM, err := os.ReadFile(c.TLSKeyFile)
		if err != nil {
			return nil, &ConfigError{"TLSKeyFile", fmt.Errorf("cannot read the key file: %w", err)}
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			// crypto/tls's messages name what is wrong, never the key.
			return nil, &ConfigError{"TLSKeyFile", fmt.Errorf("%s and %s are not a certificate and its key: %w", c.TLSCertFile, c.TLSKeyFile, err)}
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// String names the protocol (PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL),
// the mechanism and the user; never the password.
func (s *Security) String() string {
	if s == nil {
		return "PLAINTEXT"
	}
	return s.desc
}

// GoString is String, so that %#v does not print the credentials.
func (s *Security) GoString() string { return s.String() }

// Dialer returns a new dialer of connections with s's SASL and TLS, for
// kafka-go's Reader and Conn.
func (s *Security) Dialer(timeout time.Duration) *kafka.Dialer {
	d := &kafka.Dialer{Timeout: timeout, DualStack: true}
	if s != nil {
		d.SASLMechanism, d.TLS = s.mechanism, s.tls
	}
	return d
}

// Transport returns a new transport with s's SASL and TLS, for kafka-go's
// Writer and Client. The caller owns it: CloseIdleConnections releases its
// connections.
func (s *Security) Transport(dialTimeout time.Duration) *kafka.Transport {
	t := &kafka.Transport{DialTimeout: dialTimeout, IdleTimeout: time.Minute}
	if s != nil {
		t.SASL, t.TLS = s.mechanism, s.tls
	}
	return t
}

// writerTransport is the transport of writers: nil (kafka-go's default
// transport) for plaintext.
func (s *Security) writerTransport() kafka.RoundTripper {
	if s == nil {
		return nil
	}
	return s.writers
}

// Client returns an admin client of the cluster at brokers with its own
// transport; timeout bounds each request.
func (s *Security) Client(brokers []string, timeout time.Duration) *kafka.Client {
	return &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: timeout, Transport: s.Transport(timeout)}
}
