package supervise

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// Spec says how to start a process.
type Spec struct {
	// Name names the process in errors, e.g. "ingest" or "matcher-2".
	// Default: the first of Args, or the base name of Path.
	Name string
	// Path is the executable; required.
	Path string
	// Args are the arguments after the program name.
	Args []string
	// Env is added to this process's environment; a later entry wins over
	// an earlier one and over the inherited one.
	Env []string
	// Stdin is the process's standard input; default none.
	Stdin io.Reader
	// Output receives every line the process writes to stdout or stderr,
	// interleaved, each ending in '\n'. Default: kept in memory for
	// Output. It is written from one goroutine only.
	Output io.Writer
}

// Proc is a running (or exited) child process. Its methods may be called
// from several goroutines at once, but only one goroutine at a time should
// wait for output lines (Await): a line goes to one waiter.
type Proc struct {
	name  string
	cmd   *exec.Cmd
	lines chan string   // output lines, while someone may wait for one
	done  chan struct{} // closed when the process has exited and its output is read
	err   error         // how it exited; read after done

	mu  sync.Mutex
	out bytes.Buffer // the output, when Spec.Output is nil
}

// Start starts the process described by spec. On Linux the child receives
// SIGTERM when the thread that started it dies, so that no stage outlives
// an interrupted parent. The caller must end the process (Stop or Kill)
// or wait for it (Done).
func Start(spec Spec) (*Proc, error) {
	if spec.Path == "" {
		return nil, errors.New("supervise: no executable")
	}
	name := spec.Name
	if name == "" && len(spec.Args) > 0 {
		name = spec.Args[0]
	}
	p := &Proc{name: name, lines: make(chan string, 4096), done: make(chan struct{})}
	out := spec.Output
	if out == nil {
		out = lockedWriter{&p.mu, &p.out}
	}
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("supervise: %s: %w", name, err)
	}
	p.cmd = exec.Command(spec.Path, spec.Args...)
	p.cmd.Env = append(os.Environ(), spec.Env...)
	p.cmd.Stdin = spec.Stdin
	p.cmd.Stdout, p.cmd.Stderr = w, w
	p.cmd.SysProcAttr = childProcAttr()
	err = p.cmd.Start()
	w.Close() // the child has its copy
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("supervise: start %s: %w", name, err)
	}
	output := make(chan struct{})
	go func() { // exits when every writer of the pipe (the child and its children) has closed it
		defer close(output)
		defer r.Close()
		sc := bufio.NewScanner(r)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			_, _ = out.Write(append(sc.Bytes(), '\n'))
			select {
			case p.lines <- sc.Text():
			default: // nobody waits for lines now
			}
		}
	}()
	go func() { // exits when the child has
		p.err = p.cmd.Wait()
		<-output
		close(p.done)
	}()
	return p, nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// Name is the process's name in errors.
func (p *Proc) Name() string { return p.name }

// PID is the process id.
func (p *Proc) PID() int { return p.cmd.Process.Pid }

// Output is what the process has written so far, when Spec.Output was nil;
// else empty.
func (p *Proc) Output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

// Done is closed when the process has exited and all its output is read.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is how the process exited (nil for status 0); valid once Done is
// closed.
func (p *Proc) Err() error { return p.err }

// Exited reports whether the process has exited, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Signal sends sig to the process; it does nothing once the process has
// exited.
func (p *Proc) Signal(sig os.Signal) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	return p.cmd.Process.Signal(sig)
}

// Await returns the submatches of the first output line, from now on,
// that matches re: m[0] is the whole match. It fails when the process
// exits first, when within passes, or when ctx ends.
func (p *Proc) Await(ctx context.Context, re *regexp.Regexp, within time.Duration) ([]string, error) {
	timeout := time.NewTimer(within)
	defer timeout.Stop()
	for {
		select {
		case line := <-p.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				return m, nil
			}
		case <-p.done:
			return nil, &NotReadyError{Name: p.name, Want: re.String(), Exited: true, Err: p.err}
		case <-timeout.C:
			return nil, &NotReadyError{Name: p.name, Want: re.String(), Within: within}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// NotReadyError means a process exited, or took too long, before it printed
// the line awaited.
type NotReadyError struct {
	Name   string
	Want   string        // the pattern awaited
	Exited bool          // it exited; else Within passed
	Err    error         // how it exited
	Within time.Duration // how long Await waited
}

func (e *NotReadyError) Error() string {
	if e.Exited {
		return fmt.Sprintf("%s exited (%v) before it was ready", e.Name, e.Err)
	}
	return fmt.Sprintf("%s not ready within %s", e.Name, e.Within)
}

func (e *NotReadyError) Unwrap() error { return e.Err }

// startedRE finds, in a stage's "started" log line (JSON), its public
// address (ingest only) and its admin address.
var startedRE = regexp.MustCompile(`"msg":"started"(?:.*"http_addr":"([^"]+)")?.*"admin_addr":"([^"]+)"`)

// Started is what a stage's "started" line announces: it serves from then
// on.
type Started struct {
	HTTPAddr  string // host:port of the public API; ingest only, else empty
	AdminAddr string // host:port of /healthz, /readyz, /metrics, /debug/pprof/
}

// AwaitStarted waits for the "started" line a stage (ingest, matcher,
// sink) logs in JSON once it serves on its admin address, as Await does.
func (p *Proc) AwaitStarted(ctx context.Context, within time.Duration) (Started, error) {
	m, err := p.Await(ctx, startedRE, within)
	if err != nil {
		return Started{}, err
	}
	return Started{HTTPAddr: m[1], AdminAddr: m[2]}, nil
}

// ErrKilled means Stop had to kill a process that did not exit within the
// time allowed after SIGTERM.
var ErrKilled = errors.New("killed: no exit within the shutdown timeout")

// Stop sends SIGTERM and waits for the exit; if the process takes longer
// than grace it is killed and Stop returns ErrKilled. An exit with a
// non-zero status is returned as an error. Stopping a process that has
// exited already returns nil.
func (p *Proc) Stop(grace time.Duration) error {
	if done, _ := p.Exited(); done {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
		if p.err != nil {
			return fmt.Errorf("exited with %w after SIGTERM", p.err)
		}
		return nil
	case <-t.C:
		_ = p.cmd.Process.Kill()
		<-p.done
		return ErrKilled
	}
}

// Kill ends the process at once (SIGKILL) and waits for its exit, at most
// within; it reports whether the process has exited.
func (p *Proc) Kill(within time.Duration) bool {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	t := time.NewTimer(within)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// Sample reads the process's CPU time and memory from /proc.
func (p *Proc) Sample() (Sample, error) { return SampleProc(p.PID()) }
