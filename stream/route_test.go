package stream_test

import (
	"testing"
	"time"

	"github.com/groupmatch/groupmatch/stream"
)

// A key is due once per interval.
func TestThrottle(t *testing.T) {
	var th stream.Throttle
	t0 := time.Now()
	for _, step := range []struct {
		key  string
		at   time.Duration
		want bool
	}{
		{"a", 0, true}, {"a", time.Second, false}, {"b", time.Second, true},
		{"a", 59 * time.Second, false}, {"a", time.Minute, true}, {"a", time.Minute + time.Second, false},
	} {
		if got := th.Due(step.key, t0.Add(step.at)); got != step.want {
			t.Errorf("Due(%s, +%s) = %v, want %v", step.key, step.at, got, step.want)
		}
	}
}
