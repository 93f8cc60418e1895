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
	admin, err := pgx.Connect(ctx, AdminURL())
	if err != nil {
		t.Fatalf("schematest: PostgreSQL at %s does not answer: %v", AdminURL(), err)
	}
	defer admin.Close(context.Background())
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "gmtest_" + hex.EncodeToString(b)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("schematest: create database: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, AdminURL())
		if err != nil {
			t.Logf("schematest: drop %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("schematest: drop %s: %v", name, err)
		}
	})
	cfg, err := pgx.ParseConfig(AdminURL())
	if err != nil {
		t.Fatalf("schematest: %v", err)
	}
	url := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable", cfg.User, cfg.Host, cfg.Port, name)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("schematest: connect %s: %v", name, err)
	}
	defer conn.Close(context.Background())
	if err := Setup(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := schemas.Migrate(ctx, conn); err != nil {
		t.Fatalf("schematest: %v", err)
	}
	return url
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
