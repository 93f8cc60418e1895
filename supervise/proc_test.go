package supervise

import (
	"context"
	"errors"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

func shell(t *testing.T) string {
	t.Helper()
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	return sh
}

func TestAwaitStartedThenStop(t *testing.T) {
	p, err := Start(Spec{Name: "stage", Path: shell(t), Args: []string{"-c",
		`echo noise; echo '{"msg":"started","http_addr":"127.0.0.1:1","admin_addr":"127.0.0.1:2"}'; exec sleep 30`}})
	if err != nil {
		t.Fatal(err)
	}
	s, err := p.AwaitStarted(context.Background(), 10*time.Second)
	if err != nil || s != (Started{HTTPAddr: "127.0.0.1:1", AdminAddr: "127.0.0.1:2"}) {
		t.Fatalf("started %+v, %v", s, err)
	}
	if _, err := p.Sample(); err != nil && !errors.Is(err, ErrNoStats) {
		t.Errorf("sample: %v", err)
	}
	// sleep dies of SIGTERM: an exit that is not clean.
	if err := p.Stop(10 * time.Second); err == nil || !strings.Contains(err.Error(), "after SIGTERM") {
		t.Errorf("stop: %v", err)
	}
	if !strings.Contains(p.Output(), "noise\n") {
		t.Errorf("output %q", p.Output())
	}
}

func TestAwaitExited(t *testing.T) {
	p, err := Start(Spec{Name: "quitter", Path: shell(t), Args: []string{"-c", "exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = p.Await(context.Background(), regexp.MustCompile("never"), 10*time.Second)
	var nr *NotReadyError
	if !errors.As(err, &nr) || !nr.Exited {
		t.Fatalf("await: %v", err)
	}
	if !p.Kill(time.Second) {
		t.Error("kill of an exited process did not return")
	}
}
