package ingest

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

// Config configures a Service. Zero values take the documented defaults;
// negative values are refused by Validate.
type Config struct {
	Brokers []string        // required
	Topics  pipeline.Topics // default pipeline.DefaultTopics()
	// Security secures the Kafka connections; nil is plaintext.
	Security *stream.Security
	// RateLimit is each application's sustained request rate per second,
	// default DefaultRateLimit (100); RateBurst its burst, default
	// DefaultRateBurst (200).
	RateLimit float64
	RateBurst int
	// RequestTimeout bounds accepting one batch (PostgreSQL and Kafka);
	// default DefaultRequestTimeout (10 s).
	RequestTimeout time.Duration
	// PendingTimeout is the age after which a batch never accepted is
	// aborted by the janitor; default pipeline.DefaultPendingTimeout
	// (60 s). It must exceed RequestTimeout.
	PendingTimeout time.Duration
	// MaxInFlight bounds the batchAdd requests served at once; beyond it
	// ingest answers 503 at once instead of queueing. Default
	// DefaultMaxInFlight (256).
	MaxInFlight int
	// AuthFailRate is the failed authentications per second each client
	// address may make, default DefaultAuthFailRate (20); AuthFailBurst
	// how many in a row, default DefaultAuthFailBurst (100). Beyond them
	// the address is answered 429 before its credentials are checked.
	// AuthFailClients bounds the addresses tracked, default
	// DefaultAuthFailClients (65,536; see failureLimiter).
	AuthFailRate    float64
	AuthFailBurst   int
	AuthFailClients int
	// TrustedProxies are the proxies whose X-Forwarded-For names the
	// client address (see clientAddr); none by default, and then the
	// header is ignored.
	TrustedProxies []netip.Prefix
	// TokenRate is the token pairs (getOrgAccessToken and refresh) each
	// application may get per minute, also its burst; default
	// DefaultTokenRate (10).
	TokenRate float64
	// TenantRate is each tenant's records quota per second over batchAdd
	// and the requests topic; 0 (the default) means none. Its burst is
	// max(TenantRate, 500), so any batch fits into a full bucket.
	TenantRate float64
	Logger     *slog.Logger // default: discard
}

// Defaults of Config, used where a field is zero; cmd/groupmatch's flags
// default to them too, so they are written only here.
const (
	DefaultRateLimit       = 100.0 // requests per second per application
	DefaultRateBurst       = 200
	DefaultRequestTimeout  = 10 * time.Second
	DefaultMaxInFlight     = 256
	DefaultAuthFailRate    = 20.0 // failed authentications per second per client address
	DefaultAuthFailBurst   = 100
	DefaultAuthFailClients = 1 << 16
	DefaultTokenRate       = 10.0 // token pairs per minute per application
)

// Validate reports the first setting New cannot use: no brokers, a
// negative value, topics given without the records topic, or a
// PendingTimeout (after defaults) not beyond RequestTimeout.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("ingest: no brokers")
	case c.Topics != (pipeline.Topics{}) && c.Topics.Records == "":
		return errors.New("ingest: Topics.Records is empty; leave Topics zero for the default names")
	}
	for _, f := range []struct {
		name     string
		negative bool
		value    any
	}{
		{"RateLimit", c.RateLimit < 0, c.RateLimit},
		{"RateBurst", c.RateBurst < 0, c.RateBurst},
		{"RequestTimeout", c.RequestTimeout < 0, c.RequestTimeout},
		{"PendingTimeout", c.PendingTimeout < 0, c.PendingTimeout},
		{"MaxInFlight", c.MaxInFlight < 0, c.MaxInFlight},
		{"AuthFailRate", c.AuthFailRate < 0, c.AuthFailRate},
		{"AuthFailBurst", c.AuthFailBurst < 0, c.AuthFailBurst},
		{"AuthFailClients", c.AuthFailClients < 0, c.AuthFailClients},
		{"TokenRate", c.TokenRate < 0, c.TokenRate},
		{"TenantRate", c.TenantRate < 0, c.TenantRate},
	} {
		if f.negative {
			return fmt.Errorf("ingest: %s must not be negative, got %v", f.name, f.value)
		}
	}
	if d := c.withDefaults(); d.PendingTimeout <= d.RequestTimeout {
		return fmt.Errorf("ingest: PendingTimeout must exceed RequestTimeout, got %s and %s", d.PendingTimeout, d.RequestTimeout)
	}
	return nil
}

// withDefaults returns c with every zero field given its default.
func (c Config) withDefaults() Config {
	if c.Topics == (pipeline.Topics{}) {
		c.Topics = pipeline.DefaultTopics()
	}
	if c.RateLimit == 0 {
		c.RateLimit = DefaultRateLimit
	}
	if c.RateBurst == 0 {
		c.RateBurst = DefaultRateBurst
	}
	if c.RequestTimeout == 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.PendingTimeout == 0 {
		c.PendingTimeout = pipeline.DefaultPendingTimeout
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.AuthFailRate == 0 {
		c.AuthFailRate = DefaultAuthFailRate
	}
	if c.AuthFailBurst == 0 {
		c.AuthFailBurst = DefaultAuthFailBurst
	}
	if c.AuthFailClients == 0 {
		c.AuthFailClients = DefaultAuthFailClients
	}
	if c.TokenRate == 0 {
		c.TokenRate = DefaultTokenRate
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return c
}
