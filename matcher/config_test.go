package matcher

import (
	"strings"
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/stream"
)

func TestConfigValidate(t *testing.T) {
	b := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid; else a substring of the error
	}{
		{"zero but brokers takes the defaults", Config{Brokers: b}, ""},
		{"everything set", Config{Brokers: b, Topics: pipeline.TopicsFor("t."), GroupID: "g", MaxChunk: 1, Consumers: 1,
			Linger: time.Millisecond}, ""},
		{"no brokers", Config{}, "matcher: no brokers"},
		{"topics without resolved", Config{Brokers: b, Topics: pipeline.Topics{Records: "r", DLQ: "d"}},
			"matcher: Topics.Records, Topics.Resolved and Topics.DLQ must all be set"},
		{"negative chunk", Config{Brokers: b, MaxChunk: -1}, "matcher: MaxChunk must be 0 to 50000, got -1"},
		{"huge chunk", Config{Brokers: b, MaxChunk: 1 << 40}, "matcher: MaxChunk must be 0 to 50000, got 1099511627776"},
		{"largest chunk", Config{Brokers: b, MaxChunk: stream.MaxChunkLimit}, ""},
		{"negative consumers", Config{Brokers: b, Consumers: -3}, "matcher: Consumers must be 0 to 64, got -3"},
		{"too many consumers", Config{Brokers: b, Consumers: 65}, "matcher: Consumers must be 0 to 64, got 65"},
		{"negative linger", Config{Brokers: b, Linger: -time.Millisecond}, "matcher: Linger must not be negative, got -1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkValidate(t, tc.cfg.Validate(), tc.want) })
	}
}

func TestRematchConfigValidate(t *testing.T) {
	b := []string{"127.0.0.1:9092"}
	for _, tc := range []struct {
		name string
		cfg  RematchConfig
		want string // "" for valid; else a substring of the error
	}{
		{"zero but brokers takes the defaults", RematchConfig{Brokers: b}, ""},
		{"everything set", RematchConfig{Brokers: b, Topics: pipeline.TopicsFor("t."), GroupID: "g", MaxChunk: 1,
			Linger: time.Millisecond}, ""},
		{"no brokers", RematchConfig{}, "rematcher: no brokers"},
		{"topics without directory", RematchConfig{Brokers: b, Topics: pipeline.Topics{Resolved: "r", DLQ: "d"}},
			"rematcher: Topics.Directory, Topics.Resolved and Topics.DLQ must all be set"},
		{"negative chunk", RematchConfig{Brokers: b, MaxChunk: -1}, "rematcher: MaxChunk must be 0 to 50000, got -1"},
		{"huge chunk", RematchConfig{Brokers: b, MaxChunk: 50001}, "rematcher: MaxChunk must be 0 to 50000, got 50001"},
		{"negative linger", RematchConfig{Brokers: b, Linger: -time.Millisecond}, "rematcher: Linger must not be negative, got -1ms"},
	} {
		t.Run(tc.name, func(t *testing.T) { checkValidate(t, tc.cfg.Validate(), tc.want) })
	}
}

// checkValidate fails t unless err is nil for want "", or holds want.
func checkValidate(t *testing.T, err error, want string) {
	t.Helper()
	switch {
	case want == "" && err != nil:
		t.Errorf("Validate() = %v, want nil", err)
	case want != "" && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("Validate() = %v, want %q", err, want)
	}
}
