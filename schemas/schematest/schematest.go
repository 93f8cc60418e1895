// Package schematest gives tests a fresh, migrated PostgreSQL database, and
// validators of the JSON Schemas and the OpenAPI document (contracts.go).
//
// The server is the one named by GROUPMATCH_TEST_DATABASE_URL, else
// postgres://postgres@127.0.0.1:5432/postgres. Tests fail, never skip, when it
// does not answer: CI must not pass by testing nothing.
//
// GROUPMATCH_TEST_DATABASE_SETUP, if set, names a file of SQL that runs in
// every fresh database, as the user of that URL, before it is migrated: on a
// Citus coordinator it creates the extension and adds the workers
// (docs/operations.md, "Running on Citus").
package schematest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/schemas"
)

// AdminURL is the server tests create their databases on.
func AdminURL() string {
	if u := os.Getenv("GROUPMATCH_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
}

// NewDatabase creates an empty database, migrates it, drops it when the test
// ends, and returns its URL.
func NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	url, drop, err := CreateDatabase(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Log(err)
		}
	})
	return url
}

// CreateDatabase creates an empty database and migrates it, returning its
// URL and a function dropping it; for code that has no testing.TB
// (TestMain).
func CreateDatabase(ctx context.Context) (url string, drop func() error, err error) {
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		return "", nil, fmt.Errorf("schematest: PostgreSQL at %s does not answer: %w", AdminURL(), err)
	}
	defer admin.Close(context.Background())
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "gmtest_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("schematest: create database: %w", err)
	}
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			return fmt.Errorf("schematest: drop %s: %w", name, err)
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("schematest: drop %s: %w", name, err)
		}
		return nil
	}
	cfg, err := pgx.ParseConfig(AdminURL())
	if err != nil {
		_ = drop()
		return "", nil, fmt.Errorf("schematest: %w", err)
	}
	url = fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		_ = drop()
		return "", nil, fmt.Errorf("schematest: connect %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	if err := Setup(ctx, conn); err != nil {
		_ = drop()
		return "", nil, err
	}
	if _, err := schemas.Migrate(ctx, conn); err != nil {
		_ = drop()
		return "", nil, fmt.Errorf("schematest: %w", err)
	}
	return url, drop, nil
}

// NewPool is NewDatabase plus a pool on it, closed when the test ends.
func NewPool(t testing.TB) (*pgxpool.Pool, string) {
	t.Helper()
	url := NewDatabase(t)
	pool, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatalf("schematest: pool: %v", err)
	}
	t.Cleanup(pool.Close)
	return pool, url
}

// TenantTables names the tables of schema public that hold tenants' rows:
// every table with a tenant_id column but the reference tables
// (schemas.ReferenceTables), read from the catalog. On Citus they are
// distributed by tenant_id.
func TenantTables(ctx context.Context, conn interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}) ([]string, error) {
	rows, err := conn.Query(ctx, `
		SELECT c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped
		WHERE c.relkind IN ('r', 'p') AND NOT c.relname = ANY($1)
		ORDER BY 1`, schemas.ReferenceTables)
	if err != nil {
		return nil, fmt.Errorf("schematest: tenant tables: %w", err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("schematest: tenant tables: %w", err)
	}
	return tables, nil
}
