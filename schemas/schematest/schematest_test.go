package schematest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// TestSetupRunsBeforeMigrate: the file GROUPMATCH_TEST_DATABASE_SETUP names
// runs in the fresh database, all its statements, before the migrations (the
// migrations then see what it made).
func TestSetupRunsBeforeMigrate(t *testing.T) {
	setup := filepath.Join(t.TempDir(), "setup.sql")
	sql := `CREATE TABLE setup_marker (at_setup bigint);
INSERT INTO setup_marker SELECT count(*) FROM pg_tables WHERE tablename = 'schema_migrations';`
	if err := os.WriteFile(setup, []byte(sql), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(SetupEnv, setup)
	url := NewDatabase(t)

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var atSetup int64
	if err := conn.QueryRow(ctx, "SELECT at_setup FROM setup_marker").Scan(&atSetup); err != nil {
		t.Fatalf("the setup SQL did not run: %v", err)
	}
	if atSetup != 0 {
		t.Errorf("schema_migrations existed when the setup SQL ran: it must run before the migrations")
	}
	var migrated int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM schema_migrations").Scan(&migrated); err != nil || migrated == 0 {
		t.Errorf("database not migrated after the setup SQL: %d migrations, %v", migrated, err)
	}
}

// TestSetupErrors: without the variable Setup does nothing; a missing file
// or failing SQL is an error naming the variable, never silently skipped.
func TestSetupErrors(t *testing.T) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("PostgreSQL at %s does not answer: %v", AdminURL(), err)
	}
	defer conn.Close(ctx)

	t.Setenv(SetupEnv, "")
	if err := Setup(ctx, conn); err != nil {
		t.Errorf("unset: %v", err)
	}

	t.Setenv(SetupEnv, filepath.Join(t.TempDir(), "absent.sql"))
	if err := Setup(ctx, conn); err == nil || !strings.Contains(err.Error(), SetupEnv) {
		t.Errorf("missing file: got %v, want an error naming %s", err, SetupEnv)
	}

	bad := filepath.Join(t.TempDir(), "bad.sql")
	if err := os.WriteFile(bad, []byte("SELECT no_such_function_for_schematest()"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(SetupEnv, bad)
	if err := Setup(ctx, conn); err == nil || !strings.Contains(err.Error(), SetupEnv) {
		t.Errorf("failing SQL: got %v, want an error naming %s", err, SetupEnv)
	}
}
