package schemas_test

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// schemaBefore returns a connection, closed when the test ends, to a fresh
// database holding the schema as it was before migration v (every
// migration below v applied and recorded), and how many migrations remain:
// the start of a test that a migration upgrades data in place.
func schemaBefore(t *testing.T, v int) (conn *pgx.Conn, later int) {
	t.Helper()
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	schematest.SkipOnCitus(t, conn, "DROP SCHEMA public CASCADE would drop the extension with it")
	ms, err := schemas.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `DROP SCHEMA public CASCADE; CREATE SCHEMA public;
		CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		if m.Version >= v {
			later++
			continue
		}
		if _, err := conn.Exec(ctx, m.SQL); err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name); err != nil {
			t.Fatal(err)
		}
	}
	return conn, later
}
