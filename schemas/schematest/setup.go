package schematest

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// SetupEnv names the environment variable that names the setup SQL file.
const SetupEnv = "GROUPMATCH_TEST_DATABASE_SETUP"

// Setup runs the SQL of the file that SetupEnv names on conn, in one
// simple-protocol exchange (several statements allowed). It does nothing when
// SetupEnv is unset or empty.
func Setup(ctx context.Context, conn *pgx.Conn) error {
	path := os.Getenv(SetupEnv)
	if path == "" {
		return nil
	}
	sql, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("schematest: %s: %w", SetupEnv, err)
	}
	if _, err := conn.Exec(ctx, string(sql)); err != nil {
		return fmt.Errorf("schematest: %s (%s): %w", SetupEnv, path, err)
	}
	return nil
}

// SkipOnCitus skips t when the citus extension is present in the database
// db reaches, saying why. Only for tests that cannot apply on Citus by
// nature (they drop the public schema with the extension, pin plan shapes,
// or expect statements that Citus refuses before they run); never for
// end-to-end or fault tests.
func SkipOnCitus(t testing.TB, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, why string) {
	t.Helper()
	var citus bool
	if err := db.QueryRow(context.Background(),
		`SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')`).Scan(&citus); err != nil {
		t.Fatal(err)
	}
	if citus {
		t.Skip("the citus extension is present: " + why)
	}
}
