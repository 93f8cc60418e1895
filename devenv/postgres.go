package devenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// DefaultLocalPostgresAddr is where EnsurePostgres looks for a
	// PostgreSQL server already running on this machine when
	// PostgresConfig.LocalAddr is empty.
	DefaultLocalPostgresAddr = "127.0.0.1:5432"

	// DatabaseName is the database EnsurePostgres creates on a local or
	// private server and returns the URL of.
	DatabaseName = "groupmatch"

	// pgSuperuser is the superuser of a private cluster, and the system
	// user initdb and postgres run as when we are root.
	pgSuperuser = "postgres"
	// pgLibRoot holds one folder per installed major version, each with a
	// bin/ (the Debian and Ubuntu layout).
	pgLibRoot = "/usr/lib/postgresql"
	// pgPortFile, inside the private cluster's folder, remembers the port
	// it listens on, so a restart reuses it and the URL stays the same.
	pgPortFile = "groupmatch.port"
	// pgLogFile, inside the private cluster's folder, receives the
	// server's log.
	pgLogFile = "postgres.log"
	// maxSocketDirLen keeps the Unix socket path (dir + "/.s.PGSQL.NNNNN")
	// under the 107 bytes the kernel allows; a longer data dir gets no
	// Unix socket at all, since we only connect over TCP.
	maxSocketDirLen = 90
	// localProbeTimeout bounds the attempt to use the local default server.
	localProbeTimeout = 5 * time.Second
	// readyTimeout bounds the wait for a started private cluster.
	readyTimeout = 30 * time.Second
)

// PostgresConfig configures EnsurePostgres. Zero values take the documented
// defaults.
type PostgresConfig struct {
	// URL is a DATABASE_URL. If set, it is used as is: EnsurePostgres only
	// pings it and creates nothing.
	URL string
	// DataDir is the folder under which a private cluster lives (in
	// DataDir/postgres) if one must be started. Empty forbids starting
	// one.
	DataDir string
	// LocalAddr is the host:port of a PostgreSQL server that may already
	// run on this machine; default DefaultLocalPostgresAddr
	// ("127.0.0.1:5432").
	LocalAddr string
	// Logger receives a line saying which database was chosen and why.
	// Nil discards it.
	Logger *slog.Logger
}

// Postgres is a database that dev uses.
type Postgres struct {
	// URL is the connection string of the database, ready for pgx.
	URL string
	// Private is true when EnsurePostgres started (or found running) a
	// private cluster in PostgresConfig.DataDir; Stop stops it.
	Private bool

	cluster *privateCluster // nil unless Private

	mu      sync.Mutex // guards stopped
	stopped bool
}

// EnsurePostgres returns a database for dev, trying in order:
//
//  1. cfg.URL, if set, which must answer a ping.
//  2. The server at cfg.LocalAddr (127.0.0.1:5432), as user $PGUSER or
//     "postgres" without a password: if it accepts the connection, the
//     database "groupmatch" is created on it if missing and returned.
//  3. A private cluster in cfg.DataDir/postgres, listening on 127.0.0.1
//     only and trusting every local connection: created with initdb if
//     the folder holds none, started with pg_ctl on the port it used last
//     time (or a free one the OS picks), given a database "groupmatch".
//     As root, initdb and postgres run as the system user "postgres",
//     which must be able to reach the folder.
//
// The returned database answers connections. An error means no database
// could be provided; it names the step that failed and, for a failed
// command, ends with the command's output.
func EnsurePostgres(ctx context.Context, cfg PostgresConfig) (*Postgres, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.URL != "" {
		// The URL may carry a password: never put it in an error or a log.
		if err := ping(ctx, cfg.URL); err != nil {
			return nil, fmt.Errorf("devenv: postgres: DATABASE_URL: %w", err)
		}
		log.Info("devenv: using DATABASE_URL")
		return &Postgres{URL: cfg.URL}, nil
	}

	addr := cfg.LocalAddr
	if addr == "" {
		addr = DefaultLocalPostgresAddr
	}
	localURL, err := useLocal(ctx, addr)
	if err == nil {
		log.Info("devenv: using the local PostgreSQL", slog.String("addr", addr), slog.String("database", DatabaseName))
		return &Postgres{URL: localURL}, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("devenv: postgres: %w", context.Cause(ctx))
	}
	if cfg.DataDir == "" {
		return nil, fmt.Errorf("devenv: postgres: no usable server at %s and no data dir for a private cluster: %w", addr, err)
	}
	// A server that answered but refused us deserves a warning; an absent
	// one is the ordinary case.
	level := slog.LevelInfo
	if pgErr := (*pgconn.PgError)(nil); errors.As(err, &pgErr) {
		level = slog.LevelWarn
	}
	log.Log(ctx, level, "devenv: no usable local PostgreSQL, starting a private cluster",
		slog.String("addr", addr), slog.String("reason", err.Error()))

	pc, err := startPrivate(ctx, cfg.DataDir, log)
	if err != nil {
		return nil, err
	}
	return &Postgres{URL: pc.url(DatabaseName), Private: true, cluster: pc}, nil
}

// Stop stops the private cluster, if EnsurePostgres started one, with
// `pg_ctl stop -m fast` (open sessions are disconnected) and returns once
// it has exited; otherwise it does nothing. A cluster that is already
// stopped is not an error, so calling Stop again is harmless. Stop is safe
// for concurrent use.
func (p *Postgres) Stop(ctx context.Context) error {
	if !p.Private || p.cluster == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return nil
	}
	if err := p.cluster.stop(ctx); err != nil {
		return err
	}
	p.stopped = true
	return nil
}

// useLocal returns the URL of DatabaseName on the server at addr, creating
// the database if needed, or an error if that server is absent or unusable.
func useLocal(ctx context.Context, addr string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, localProbeTimeout)
	defer cancel()
	usr := os.Getenv("PGUSER")
	if usr == "" {
		usr = pgSuperuser
	}
	if err := ensureDatabase(ctx, pgURL(usr, addr, "postgres"), DatabaseName); err != nil {
		return "", err
	}
	u := pgURL(usr, addr, DatabaseName)
	if err := ping(ctx, u); err != nil {
		return "", err
	}
	return u, nil
}

// pgURL returns a URL for user on hostport without a password or TLS.
func pgURL(usr, hostport, database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User(usr),
		Host:     hostport,
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// ping connects to connURL and pings the server.
func ping(ctx context.Context, connURL string) error {
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if err := conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	return nil
}

// ensureDatabase creates the database name through adminURL unless it
// exists. Concurrent callers may race; the loser's duplicate error is not
// an error.
func ensureDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var exists bool
	err = conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", name).Scan(&exists)
	if err != nil {
		return fmt.Errorf("look up database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
		// duplicate_database, or the unique_violation on
		// pg_database_datname_index that a concurrent CREATE DATABASE
		// can raise instead.
		return nil
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// privateCluster is a PostgreSQL cluster in a folder of ours, run with the
// server binaries found on this machine.
type privateCluster struct {
	dir    string // absolute path of the cluster's folder
	port   int
	pgCtl  string
	runner runner
}

func (pc *privateCluster) url(database string) string {
	return pgURL(pgSuperuser, net.JoinHostPort("127.0.0.1", strconv.Itoa(pc.port)), database)
}

// startPrivate creates (if needed) and starts the cluster in
// dataDir/postgres, or adopts it if it already runs, and returns it
// answering connections with DatabaseName present.
func startPrivate(ctx context.Context, dataDir string, log *slog.Logger) (*privateCluster, error) {
	dir, err := filepath.Abs(filepath.Join(dataDir, "postgres"))
	if err != nil {
		return nil, fmt.Errorf("devenv: postgres: data dir: %w", err)
	}
	r, err := newRunner()
	if err != nil {
		return nil, err
	}
	if err := r.prepareDir(ctx, dir); err != nil {
		return nil, err
	}

	initdb, pgCtl, err := findPGBinaries(exec.LookPath, pgLibRoot, clusterMajor(dir))
	if err != nil {
		return nil, err
	}
	pc := &privateCluster{dir: dir, pgCtl: pgCtl, runner: r}

	if !isCluster(dir) {
		_, err := r.run(ctx, initdb, "-D", dir, "--auth=trust", "-U", pgSuperuser,
			"--encoding=UTF8", "--locale=C")
		if err != nil {
			return nil, fmt.Errorf("devenv: initdb: %w", err)
		}
		log.Info("devenv: created a private PostgreSQL cluster", slog.String("dir", dir))
	}

	if port, ok := pc.runningPort(ctx); ok {
		// A server left running (by a dev that crashed, say) is adopted.
		pc.port = port
		log.Info("devenv: private PostgreSQL already running", slog.String("dir", dir), slog.Int("port", port))
	} else if err := pc.start(ctx); err != nil {
		return nil, err
	} else {
		log.Info("devenv: started a private PostgreSQL", slog.String("dir", dir), slog.Int("port", pc.port))
	}

	if err := pc.waitReady(ctx); err != nil {
		return nil, err
	}
	if err := ensureDatabase(ctx, pc.url("postgres"), DatabaseName); err != nil {
		return nil, fmt.Errorf("devenv: postgres: private cluster: %w", err)
	}
	return pc, nil
}

// clusterMajor returns the major version in dir/PG_VERSION, or "" if there
// is none.
func clusterMajor(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "PG_VERSION"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// isCluster reports whether dir holds an initialised cluster.
func isCluster(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "PG_VERSION"))
	return err == nil
}

// runningPort reports whether a server runs on the cluster, and its port.
func (pc *privateCluster) runningPort(ctx context.Context) (int, bool) {
	if _, err := os.Stat(filepath.Join(pc.dir, "postmaster.pid")); err != nil {
		return 0, false
	}
	// pg_ctl status exits 0 only if the postmaster in postmaster.pid lives.
	if _, err := pc.runner.run(ctx, pc.pgCtl, "status", "-D", pc.dir); err != nil {
		return 0, false
	}
	b, err := os.ReadFile(filepath.Join(pc.dir, "postmaster.pid"))
	if err != nil {
		return 0, false
	}
	// Line 4 of postmaster.pid is the port.
	lines := strings.Split(string(b), "\n")
	if len(lines) < 4 {
		return 0, false
	}
	port, err := strconv.Atoi(strings.TrimSpace(lines[3]))
	if err != nil || port <= 0 {
		return 0, false
	}
	return port, true
}

// privateSettings are the private cluster's settings beyond initdb's, the
// ones dev and bench are measured with (docs/performance.md), which
// .ci/ensure-postgres.sh gives the machine's cluster too: shared_buffers
// above a million customers' directory, tables and indexes (~700 MB),
// and the memberships of 15 million records (~2 GB, the latency run);
// checkpoints at most every 8 GB of WAL or 15 minutes, full-page images
// compressed (after each checkpoint, the next write of every memberships
// index page logs the whole page). wal_compression is "on" (pglz), which every
// server version accepts, where the machine's cluster has lz4. Huge pages
// are PostgreSQL's default "try": used where root reserved them.
const privateSettings = "-c shared_buffers=4GB -c max_wal_size=8GB -c checkpoint_timeout=15min -c wal_compression=on"

// start starts the server on the remembered port, or on a free one if
// that is taken, and remembers the port used.
func (pc *privateCluster) start(ctx context.Context) error {
	port := pc.rememberedPort()
	var lastErr error
	for attempt := 0; attempt < 2; attempt++ {
		if port == 0 || !portFree(port) {
			p, err := freePort()
			if err != nil {
				return fmt.Errorf("devenv: postgres: pick a port: %w", err)
			}
			port = p
		}
		if err := pc.rememberPort(port); err != nil {
			return err
		}
		sockDir := pc.dir
		if len(sockDir) > maxSocketDirLen {
			sockDir = ""
		}
		opts := fmt.Sprintf("-p %d -c listen_addresses=127.0.0.1 %s -k %s", port, privateSettings, shellQuote(sockDir))
		_, err := pc.runner.run(ctx, pc.pgCtl, "start", "-D", pc.dir, "-w", "-t", strconv.Itoa(int(readyTimeout/time.Second)),
			"-l", filepath.Join(pc.dir, pgLogFile), "-o", opts)
		if err == nil {
			pc.port = port
			return nil
		}
		lastErr = fmt.Errorf("devenv: pg_ctl start: %w%s", err, logTail(filepath.Join(pc.dir, pgLogFile)))
		if ctx.Err() != nil || portFree(port) {
			// Not lost to a race for the port: retrying will not help.
			break
		}
		port = 0
	}
	return lastErr
}

// waitReady waits until the server accepts connections.
func (pc *privateCluster) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		err := ping(ctx, pc.url("postgres"))
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("devenv: postgres: private cluster on port %d not ready: %w", pc.port, err)
		case <-t.C:
		}
	}
}

func (pc *privateCluster) stop(ctx context.Context) error {
	_, err := pc.runner.run(ctx, pc.pgCtl, "stop", "-D", pc.dir, "-m", "fast", "-w",
		"-t", strconv.Itoa(int(readyTimeout/time.Second)))
	if err != nil {
		if pc.notRunning(ctx) {
			// Stopped by someone else: the outcome Stop promises.
			return nil
		}
		return fmt.Errorf("devenv: pg_ctl stop: %w", err)
	}
	return nil
}

// notRunning reports whether pg_ctl status says no server runs on the
// cluster (its exit code 3).
func (pc *privateCluster) notRunning(ctx context.Context) bool {
	_, err := pc.runner.run(ctx, pc.pgCtl, "status", "-D", pc.dir)
	var exitErr *exec.ExitError
	return errors.As(err, &exitErr) && exitErr.ExitCode() == 3
}

// rememberedPort returns the port saved by an earlier start, or 0.
func (pc *privateCluster) rememberedPort() int {
	b, err := os.ReadFile(filepath.Join(pc.dir, pgPortFile))
	if err != nil {
		return 0
	}
	port, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || port <= 0 || port > 65535 {
		return 0
	}
	return port
}

func (pc *privateCluster) rememberPort(port int) error {
	path := filepath.Join(pc.dir, pgPortFile)
	if err := os.WriteFile(path, []byte(strconv.Itoa(port)+"\n"), 0o644); err != nil {
		return fmt.Errorf("devenv: postgres: remember port: %w", err)
	}
	if err := pc.runner.chown(path); err != nil {
		return fmt.Errorf("devenv: postgres: remember port: %w", err)
	}
	return nil
}

// portFree reports whether 127.0.0.1:port can be listened on now.
func portFree(port int) bool {
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// freePort returns a port on 127.0.0.1 that the OS considers free. Another
// process may take it before we use it; start retries once if so.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// shellQuote quotes s for /bin/sh, which pg_ctl hands its -o options to.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// findPGBinaries returns the paths of initdb and pg_ctl. When the cluster
// to run is of major version wantMajor (non-empty), libRoot/wantMajor/bin
// is tried first, since a server only runs clusters of its own major
// version. Then both from PATH (through lookPath), then the newest
// libRoot/<version>/bin holding both.
func findPGBinaries(lookPath func(string) (string, error), libRoot, wantMajor string) (initdb, pgCtl string, err error) {
	if wantMajor != "" {
		if i, c, ok := binDirHas(filepath.Join(libRoot, wantMajor, "bin")); ok {
			return i, c, nil
		}
	}
	i, errI := lookPath("initdb")
	c, errC := lookPath("pg_ctl")
	if errI == nil && errC == nil {
		return i, c, nil
	}
	dirs, _ := filepath.Glob(filepath.Join(libRoot, "*", "bin")) // the pattern is valid
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, d := range dirs {
		if i, c, ok := binDirHas(d); ok {
			return i, c, nil
		}
	}
	return "", "", fmt.Errorf("devenv: postgres: initdb and pg_ctl not found in PATH or %s/*/bin; install the PostgreSQL server binaries or set DATABASE_URL", libRoot)
}

// binDirHas reports whether dir holds executable initdb and pg_ctl.
func binDirHas(dir string) (initdb, pgCtl string, ok bool) {
	i, c := filepath.Join(dir, "initdb"), filepath.Join(dir, "pg_ctl")
	return i, c, isExecutable(i) && isExecutable(c)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// compareVersions orders dotted version strings numerically ("9.6" < "10"
// < "16"); a name that is not a version sorts before every version.
func compareVersions(a, b string) int {
	pa, okA := parseVersion(a)
	pb, okB := parseVersion(b)
	switch {
	case !okA && !okB:
		return strings.Compare(a, b)
	case !okA:
		return -1
	case !okB:
		return 1
	}
	return slices.Compare(pa, pb)
}

func parseVersion(s string) ([]int, bool) {
	parts := strings.Split(s, ".")
	out := make([]int, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return nil, false
		}
		out[i] = n
	}
	return out, true
}

// runner runs the PostgreSQL commands, as the system user "postgres" when
// we are root (initdb and postgres refuse to run as root).
type runner struct {
	asPostgres bool
	runuser    string // path of runuser, when asPostgres
	uid, gid   int    // of the postgres user, when asPostgres
}

func newRunner() (runner, error) {
	if os.Geteuid() != 0 {
		return runner{}, nil
	}
	u, err := user.Lookup(pgSuperuser)
	if err != nil {
		return runner{}, fmt.Errorf("devenv: postgres: running as root needs a %q system user: %w", pgSuperuser, err)
	}
	uid, err := strconv.Atoi(u.Uid)
	if err != nil {
		return runner{}, fmt.Errorf("devenv: postgres: uid of %q: %w", pgSuperuser, err)
	}
	gid, err := strconv.Atoi(u.Gid)
	if err != nil {
		return runner{}, fmt.Errorf("devenv: postgres: gid of %q: %w", pgSuperuser, err)
	}
	ru, err := exec.LookPath("runuser")
	if err != nil {
		for _, p := range []string{"/usr/sbin/runuser", "/sbin/runuser"} {
			if isExecutable(p) {
				ru, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return runner{}, fmt.Errorf("devenv: postgres: running as root needs runuser: %w", err)
	}
	return runner{asPostgres: true, runuser: ru, uid: uid, gid: gid}, nil
}

// prepareDir creates dir (mode 0700, as initdb wants) and, as root, hands
// it to the postgres user and checks that user can reach it.
func (r runner) prepareDir(ctx context.Context, dir string) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("devenv: postgres: data dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("devenv: postgres: data dir: %w", err)
	}
	if !r.asPostgres {
		return nil
	}
	err := filepath.WalkDir(dir, func(path string, _ os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return r.chown(path)
	})
	if err != nil {
		return fmt.Errorf("devenv: postgres: hand data dir to %s: %w", pgSuperuser, err)
	}
	if _, err := r.run(ctx, "test", "-w", dir, "-a", "-x", dir); err != nil {
		return fmt.Errorf("devenv: postgres: data dir %s is not reachable by the %s user (each parent folder must be searchable by it): %w",
			dir, pgSuperuser, err)
	}
	return nil
}

// chown hands path to the postgres user when we run commands as it.
func (r runner) chown(path string) error {
	if !r.asPostgres {
		return nil
	}
	return os.Lchown(path, r.uid, r.gid)
}

// run runs name with args and returns its standard output. A failure's
// error is the exit error followed by the tail of the command's standard
// error (or, if that is blank, its standard output); callers name the
// command.
func (r runner) run(ctx context.Context, name string, args ...string) (string, error) {
	if r.asPostgres {
		args = append([]string{"-u", pgSuperuser, "--", name}, args...)
		name = r.runuser
	}
	cmd := exec.CommandContext(ctx, name, args...)
	// The postgres user may not be able to enter our working directory.
	cmd.Dir = "/"
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// pg_ctl start leaves a server running; should it ever hold our pipes
	// open, do not wait for them past the command's own exit.
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		out := stderr.Bytes()
		if len(bytes.TrimSpace(out)) == 0 {
			out = stdout.Bytes()
		}
		return stdout.String(), fmt.Errorf("%w%s", err, tail(out))
	}
	return stdout.String(), nil
}

// tailLines is how many lines of a command's output or a log go into an
// error.
const tailLines = 10

// tail returns the last tailLines lines of out, formatted to end an error
// message, or "" if out is blank.
func tail(out []byte) string {
	s := strings.TrimSpace(string(out))
	if s == "" {
		return ""
	}
	lines := strings.Split(s, "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	const maxBytes = 2000
	t := strings.Join(lines, "\n")
	if len(t) > maxBytes {
		t = t[len(t)-maxBytes:]
	}
	return ":\n" + t
}

// logTail returns the tail of the server log at path for an error message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	t := tail(b)
	if t == "" {
		return ""
	}
	return "\nserver log " + path + t
}
