package sink

import (
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/pipeline"
)

// mustPruner is NewPruner failing the test on error.
func mustPruner(t testing.TB, db *pgxpool.Pool, cfg PruneConfig) *Pruner {
	t.Helper()
	p, err := NewPruner(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// mustDeadline is NewDeadline failing the test on error.
func mustDeadline(t testing.TB, db *pgxpool.Pool, cfg DeadlineConfig) *Deadline {
	t.Helper()
	d, err := NewDeadline(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// mustRelay is NewRelay failing the test on error.
func mustRelay(t testing.TB, db *pgxpool.Pool, cfg RelayConfig) *Relay {
	t.Helper()
	r, err := NewRelay(db, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// validator is what every Config of the package has.
type validator interface{ Validate() error }

func TestConfigValidate(t *testing.T) {
	b := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  validator
		want string // "" for valid; else a substring of the error
	}{
		{"stage: zero but brokers", &Config{Brokers: b}, ""},
		{"stage: everything set", &Config{Brokers: b, Topics: pipeline.TopicsFor("t."), GroupID: "g", MaxChunk: 1,
			Linger: time.Millisecond}, ""},
		{"stage: no brokers", &Config{}, "sink: no brokers"},
		{"stage: topics without dlq", &Config{Brokers: b, Topics: pipeline.Topics{Resolved: "r"}},
			"sink: Topics.Resolved and Topics.DLQ must both be set"},
		{"stage: negative chunk", &Config{Brokers: b, MaxChunk: -1}, "sink: MaxChunk must be 0 to 50000, got -1"},
		{"stage: huge chunk", &Config{Brokers: b, MaxChunk: 1 << 40}, "sink: MaxChunk must be 0 to 50000, got 1099511627776"},
		{"stage: negative linger", &Config{Brokers: b, Linger: -time.Second}, "sink: Linger must not be negative, got -1s"},
		{"stage: negative consumers", &Config{Brokers: b, Consumers: -1}, "sink: Consumers must be 0 to 64, got -1"},
		{"stage: too many consumers", &Config{Brokers: b, Consumers: 1000000}, "sink: Consumers must be 0 to 64, got 1000000"},

		{"relay: zero but brokers", &RelayConfig{Brokers: b}, ""},
		{"relay: no brokers", &RelayConfig{}, "sink: relay: no brokers"},
		{"relay: topics without events", &RelayConfig{Brokers: b, Topics: pipeline.Topics{Records: "r"}},
			"sink: relay: Topics.Events is empty"},
		{"relay: negative interval", &RelayConfig{Brokers: b, Interval: -time.Millisecond},
			"sink: relay: Interval must not be negative, got -1ms"},

		{"deadline: zero", &DeadlineConfig{}, ""},
		{"deadline: set", &DeadlineConfig{After: time.Minute, Interval: time.Second}, ""},
		{"deadline: negative after", &DeadlineConfig{After: -time.Hour}, "sink: deadline: After must not be negative, got -1h0m0s"},
		{"deadline: negative interval", &DeadlineConfig{Interval: -time.Second},
			"sink: deadline: Interval must not be negative, got -1s"},

		{"prune: zero", &PruneConfig{}, ""},
		{"prune: set", &PruneConfig{Retention: time.Hour, AbortedRetention: time.Hour, KeyWindow: time.Hour,
			Interval: time.Second, Rows: 1}, ""},
		{"prune: negative rows", &PruneConfig{Rows: -1}, "sink: prune: Rows must not be negative, got -1"},
		{"prune: negative retention", &PruneConfig{Retention: -time.Hour},
			"sink: prune: Retention must not be negative, got -1h0m0s"},
		{"prune: negative key window", &PruneConfig{KeyWindow: -time.Minute},
			"sink: prune: KeyWindow must not be negative, got -1m0s"},
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
