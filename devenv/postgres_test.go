package devenv

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// localAdminURL is the postgres database of the local default server,
// which these tests expect to run with trust authentication.
func localAdminURL() string {
	usr := os.Getenv("PGUSER")
	if usr == "" {
		usr = "postgres"
	}
	return pgURL(usr, DefaultLocalPostgresAddr, "postgres")
}

// closedAddr returns a 127.0.0.1 address nothing listens on.
func closedAddr(t *testing.T) string {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
}

// pgDataDir returns an empty folder removed when the test ends. As root,
// the postgres user must reach it, and t.TempDir's parents are private to
// root, so it is made under the system temp folder with mode 0755.
func pgDataDir(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("", "devenv-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func queryString(t *testing.T, ctx context.Context, connURL, sql string) string {
	t.Helper()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	var s string
	if err := conn.QueryRow(ctx, sql).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func execSQL(t *testing.T, ctx context.Context, connURL, sql string) {
	t.Helper()
	conn, err := pgx.Connect(ctx, connURL)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"9.6", "10", -1},
		{"10", "9.6", 1},
		{"16", "15", 1},
		{"15", "15", 0},
		{"15.1", "15", 1},
		{"common", "9.6", -1},
		{"9.6", "common", 1},
	} {
		t.Run(tc.a+"_vs_"+tc.b, func(t *testing.T) {
			if got := compareVersions(tc.a, tc.b); got != tc.want {
				t.Errorf("compareVersions(%q, %q) = %d, want %d", tc.a, tc.b, got, tc.want)
			}
		})
	}
}

func TestFindPGBinaries(t *testing.T) {
	root := t.TempDir()
	mk := func(rel string) string {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, v := range []string{"9.6", "10", "15"} {
		mk(v + "/bin/initdb")
		mk(v + "/bin/pg_ctl")
	}
	mk("16/bin/initdb") // no pg_ctl: unusable
	mk("common/bin/initdb")
	mk("common/bin/pg_ctl")
	lib := filepath.Join(root, "%s", "bin")

	pathBoth := func(name string) (string, error) { return "/path/" + name, nil }
	pathInitdbOnly := func(name string) (string, error) {
		if name == "initdb" {
			return "/path/initdb", nil
		}
		return "", errors.New("not found")
	}
	pathNone := func(string) (string, error) { return "", errors.New("not found") }

	for _, tc := range []struct {
		name      string
		lookPath  func(string) (string, error)
		wantMajor string
		wantDir   string // "" means an error
	}{
		{"PATH first", pathBoth, "", "/path"},
		{"PATH needs both", pathInitdbOnly, "", fmt.Sprintf(lib, "15")},
		{"newest complete version", pathNone, "", fmt.Sprintf(lib, "15")},
		{"cluster's own version first", pathBoth, "10", fmt.Sprintf(lib, "10")},
		{"cluster's version missing", pathNone, "12", fmt.Sprintf(lib, "15")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			initdb, pgCtl, err := findPGBinaries(tc.lookPath, root, tc.wantMajor)
			if err != nil {
				t.Fatalf("findPGBinaries: %v", err)
			}
			if initdb != filepath.Join(tc.wantDir, "initdb") || pgCtl != filepath.Join(tc.wantDir, "pg_ctl") {
				t.Errorf("got %s, %s; want both in %s", initdb, pgCtl, tc.wantDir)
			}
		})
	}

	t.Run("none", func(t *testing.T) {
		_, _, err := findPGBinaries(pathNone, t.TempDir(), "")
		if err == nil || !strings.HasPrefix(err.Error(), "devenv: postgres: initdb and pg_ctl not found") {
			t.Errorf("error = %v, want not found", err)
		}
	})
}

func TestEnsurePostgresUsesURLAsIs(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	u := localAdminURL()
	p, err := EnsurePostgres(ctx, PostgresConfig{URL: u, LocalAddr: closedAddr(t)})
	if err != nil {
		t.Fatalf("EnsurePostgres: %v", err)
	}
	if p.URL != u || p.Private {
		t.Errorf("got URL %q private %v, want %q and not private", p.URL, p.Private, u)
	}
	if err := p.Stop(ctx); err != nil {
		t.Errorf("Stop of a non-private database: %v", err)
	}

	// A URL that does not answer is an error, which does not repeat the
	// password.
	bad := &url.URL{Scheme: "postgres", User: url.UserPassword("postgres", "s3cret"), Host: closedAddr(t), Path: "/x"}
	_, err = EnsurePostgres(ctx, PostgresConfig{URL: bad.String(), DataDir: t.TempDir()})
	if err == nil {
		t.Fatal("EnsurePostgres with a dead URL succeeded")
	}
	if !strings.HasPrefix(err.Error(), "devenv: postgres: DATABASE_URL: ") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("error = %q", err)
	}
}

func TestEnsurePostgresUsesLocalServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// No DataDir: finding the local server is the only way to succeed.
	p, err := EnsurePostgres(ctx, PostgresConfig{})
	if err != nil {
		t.Fatalf("EnsurePostgres (is PostgreSQL running on %s with trust auth?): %v", DefaultLocalPostgresAddr, err)
	}
	defer p.Stop(ctx)
	if p.Private {
		t.Error("Private = true for the local server")
	}
	u, err := url.Parse(p.URL)
	if err != nil {
		t.Fatalf("URL %q: %v", p.URL, err)
	}
	if u.Host != DefaultLocalPostgresAddr || u.Path != "/"+DatabaseName {
		t.Errorf("URL = %q, want database %s on %s", p.URL, DatabaseName, DefaultLocalPostgresAddr)
	}
	if got := queryString(t, ctx, p.URL, "SELECT current_database()"); got != DatabaseName {
		t.Errorf("current_database() = %q, want %q", got, DatabaseName)
	}
	// Again: the database exists now, which is fine.
	if _, err := EnsurePostgres(ctx, PostgresConfig{}); err != nil {
		t.Errorf("second EnsurePostgres: %v", err)
	}
}

func TestEnsureDatabaseToleratesRace(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	name := fmt.Sprintf("devenv_race_%d_%d", os.Getpid(), time.Now().UnixNano())
	admin := localAdminURL()
	t.Cleanup(func() {
		execSQL(t, context.Background(), admin, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize())
	})

	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = ensureDatabase(ctx, admin, name) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("caller %d: %v", i, err)
		}
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	if got := queryString(t, ctx, u.String(), "SELECT current_database()"); got != name {
		t.Errorf("current_database() = %q, want %q", got, name)
	}
}

func TestEnsurePostgresNeedsDataDirWithoutServer(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	_, err := EnsurePostgres(ctx, PostgresConfig{LocalAddr: closedAddr(t)})
	if err == nil || !strings.Contains(err.Error(), "no data dir for a private cluster") {
		t.Errorf("error = %v, want no data dir", err)
	}
}

// TestEnsurePostgresPrivateCluster forces a private cluster (nothing on
// the "local default" address), then checks it survives Stop and restart
// on the same DataDir with the same port, moves to a new port when its
// own is taken, and is adopted when found running.
func TestEnsurePostgresPrivateCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	cfg := PostgresConfig{
		DataDir:   pgDataDir(t),
		LocalAddr: closedAddr(t),
		Logger:    slog.New(slog.NewTextHandler(t.Output(), nil)),
	}

	start := func(step string) *Postgres {
		t.Helper()
		p, err := EnsurePostgres(ctx, cfg)
		if err != nil {
			t.Fatalf("%s: EnsurePostgres: %v", step, err)
		}
		t.Cleanup(func() {
			if err := p.Stop(context.Background()); err != nil {
				t.Errorf("%s: cleanup Stop: %v", step, err)
			}
		})
		if !p.Private {
			t.Fatalf("%s: Private = false", step)
		}
		if got := queryString(t, ctx, p.URL, "SELECT current_database()"); got != DatabaseName {
			t.Fatalf("%s: current_database() = %q, want %q", step, got, DatabaseName)
		}
		return p
	}
	stop := func(p *Postgres) {
		t.Helper()
		if err := p.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if err := ping(ctx, p.URL); err == nil {
			t.Fatal("server still answers after Stop")
		}
	}

	// 1. Created and started, with the settings dev is measured with.
	p := start("first start")
	for setting, want := range map[string]string{"shared_buffers": "4GB", "max_wal_size": "8GB", "checkpoint_timeout": "15min", "wal_compression": "pglz"} {
		if got := queryString(t, ctx, p.URL, "SHOW "+setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	execSQL(t, ctx, p.URL, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")
	port := p.cluster.port
	if _, err := os.Stat(filepath.Join(cfg.DataDir, "postgres", "PG_VERSION")); err != nil {
		t.Errorf("cluster not in DataDir/postgres: %v", err)
	}
	stop(p)
	if err := p.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}

	// 2. Restarted on the remembered port with its data.
	p = start("restart")
	if p.cluster.port != port {
		t.Errorf("restart on port %d, want the remembered %d", p.cluster.port, port)
	}
	if got := queryString(t, ctx, p.URL, "SELECT v FROM kept"); got != "hello" {
		t.Errorf("after restart kept = %q", got)
	}

	// 3. Found running: adopted as is.
	adopted := start("adopt")
	if adopted.URL != p.URL {
		t.Errorf("adopted URL %q, want %q", adopted.URL, p.URL)
	}
	stop(p)

	// 4. Remembered port taken: moves to another and remembers it.
	ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		t.Fatalf("occupy port %d: %v", port, err)
	}
	defer ln.Close()
	p = start("port taken")
	if p.cluster.port == port {
		t.Fatalf("started on the taken port %d", port)
	}
	if got := queryString(t, ctx, p.URL, "SELECT v FROM kept"); got != "hello" {
		t.Errorf("after moving kept = %q", got)
	}
	if got := p.cluster.rememberedPort(); got != p.cluster.port {
		t.Errorf("remembered port %d, want %d", got, p.cluster.port)
	}
	stop(p)
}

func TestEnsurePostgresReportsInitdbFailure(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	dataDir := pgDataDir(t)
	// A non-empty folder without PG_VERSION: initdb refuses it.
	if err := os.Mkdir(filepath.Join(dataDir, "postgres"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "postgres", "junk"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := EnsurePostgres(ctx, PostgresConfig{DataDir: dataDir, LocalAddr: closedAddr(t)})
	if err == nil {
		t.Fatal("EnsurePostgres succeeded on a non-empty folder")
	}
	t.Logf("error: %v", err)
	// The error carries initdb's own explanation.
	if !strings.HasPrefix(err.Error(), "devenv: initdb: ") || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("error = %q, want initdb's stderr", err)
	}
}

func TestEnsurePostgresAsRootNeedsReachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root hands the data dir to the postgres user")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// t.TempDir's parents are 0700 root: the postgres user cannot enter.
	dataDir := t.TempDir()
	_, err := EnsurePostgres(ctx, PostgresConfig{DataDir: dataDir, LocalAddr: closedAddr(t)})
	t.Logf("error: %v", err)
	if err == nil || !strings.Contains(err.Error(), "not reachable by the postgres user") {
		t.Errorf("error = %v, want not reachable", err)
	}
}
