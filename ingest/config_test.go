package ingest

import (
	"strings"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
)

func TestConfigValidate(t *testing.T) {
	b := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid; else a substring of the error
	}{
		{"zero but brokers takes the defaults", Config{Brokers: b}, ""},
		{"everything set", Config{Brokers: b, Topics: pipeline.TopicsFor("t."), RateLimit: 1, RateBurst: 1,
			RequestTimeout: time.Second, PendingTimeout: 2 * time.Second, MaxInFlight: 1, AuthFailRate: 1,
			AuthFailBurst: 1, AuthFailClients: 1, TokenRate: 1, TenantRate: 1}, ""},
		{"no brokers", Config{}, "ingest: no brokers"},
		{"topics without records", Config{Brokers: b, Topics: pipeline.Topics{Events: "e"}}, "ingest: Topics.Records is empty"},
		{"negative rate", Config{Brokers: b, RateLimit: -1}, "ingest: RateLimit must not be negative, got -1"},
		{"negative burst", Config{Brokers: b, RateBurst: -2}, "ingest: RateBurst must not be negative, got -2"},
		{"negative in flight", Config{Brokers: b, MaxInFlight: -1}, "ingest: MaxInFlight must not be negative"},
		{"negative auth fail rate", Config{Brokers: b, AuthFailRate: -0.5}, "ingest: AuthFailRate must not be negative, got -0.5"},
		{"negative auth fail clients", Config{Brokers: b, AuthFailClients: -1}, "ingest: AuthFailClients must not be negative"},
		{"negative token rate", Config{Brokers: b, TokenRate: -1}, "ingest: TokenRate must not be negative"},
		{"negative tenant rate", Config{Brokers: b, TenantRate: -1}, "ingest: TenantRate must not be negative"},
		{"negative request timeout", Config{Brokers: b, RequestTimeout: -time.Second}, "ingest: RequestTimeout must not be negative, got -1s"},
		{"pending not beyond request", Config{Brokers: b, RequestTimeout: time.Minute, PendingTimeout: time.Minute},
			"ingest: PendingTimeout must exceed RequestTimeout, got 1m0s and 1m0s"},
		{"pending default not beyond request", Config{Brokers: b, RequestTimeout: 2 * time.Minute},
			"ingest: PendingTimeout must exceed RequestTimeout, got 1m0s and 2m0s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestFeedConfigValidate(t *testing.T) {
	b := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  FeedConfig
		want string
	}{
		{"zero but brokers", FeedConfig{Brokers: b}, ""},
		{"everything set", FeedConfig{Brokers: b, Topics: pipeline.TopicsFor("t."), GroupID: "g", MaxChunk: 1}, ""},
		{"no brokers", FeedConfig{}, "ingest: feed: no brokers"},
		{"topics without requests", FeedConfig{Brokers: b, Topics: pipeline.Topics{Events: "e"}},
			"ingest: feed: Topics.Requests and Topics.Events must both be set"},
		{"negative chunk", FeedConfig{Brokers: b, MaxChunk: -1}, "ingest: feed: MaxChunk must not be negative, got -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Validate() = %v, want nil", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Validate() = %v, want %q", err, tc.want)
			}
		})
	}
}
