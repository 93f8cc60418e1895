package schematest

import (
	"context"
	"fmt"
	"os"

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
