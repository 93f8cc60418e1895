package schemas

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

//go:embed sql/*.sql
var migrations embed.FS

// ReferenceTables are the tables every tenant's statements share (tenants,
// applications and their tokens): on Citus, migration 6 makes them
// reference tables, copied to every node. Every other table with a
// tenant_id column is a tenant table, distributed by tenant_id: its keys
// lead with tenant_id and every statement on it names the tenant.
var ReferenceTables = []string{"tenants", "applications", "app_tokens"}

// migrateLockID is the advisory lock that serialises concurrent migrators.
const migrateLockID = 0x67726f75706d61 // "groupma"

// Migration is one numbered SQL file.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrations returns the embedded migrations in version order.
func Migrations() ([]Migration, error) {
	entries, err := fs.ReadDir(migrations, "sql")
	if err != nil {
		return nil, fmt.Errorf("schemas: %w", err)
	}
	var ms []Migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("schemas: migration %q is not named NNNN_name.sql", e.Name())
		}
		b, err := migrations.ReadFile(path.Join("sql", e.Name()))
		if err != nil {
			return nil, fmt.Errorf("schemas: %w", err)
		}
		ms = append(ms, Migration{Version: v, Name: e.Name(), SQL: string(b)})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i := 1; i < len(ms); i++ {
		if ms[i].Version == ms[i-1].Version {
			return nil, fmt.Errorf("schemas: two migrations numbered %d", ms[i].Version)
		}
	}
	return ms, nil
}

// Migrate applies every migration not yet applied, in version order, each in
// its own transaction, and returns how many it applied. Versions need not be
// contiguous: a migration numbered below one already applied (written on
// another branch) is applied too. It holds a session advisory
// lock throughout, so concurrent migrators (several processes starting at
// once) apply each migration exactly once; running it again applies nothing.
// On Citus, conn must be a connection to the coordinator: migration 6
// distributes the tenant tables there, inside its transaction (see
// docs/operations.md, "Schema keys and Citus"). A later migration with more
// than one DDL statement on those tables must put them in a DO block: Citus
// sends a DDL's whole query string to the shards, which refuse several
// commands in one (as migration 7 does).
func Migrate(ctx context.Context, conn *pgx.Conn) (int, error) {
	ms, err := Migrations()
	if err != nil {
		return 0, err
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrateLockID)); err != nil {
		return 0, fmt.Errorf("schemas: lock: %w", err)
	}
	defer func() {
		// A fresh context: the lock must be released even when ctx is done.
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrateLockID))
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return 0, fmt.Errorf("schemas: create schema_migrations: %w", err)
	}
	rows, err := conn.Query(ctx, "SELECT version FROM schema_migrations")
	if err != nil {
		return 0, fmt.Errorf("schemas: read versions: %w", err)
	}
	done, err := pgx.CollectRows(rows, pgx.RowTo[int])
	if err != nil {
		return 0, fmt.Errorf("schemas: read versions: %w", err)
	}
	known := make(map[int]bool, len(ms))
	for _, m := range ms {
		known[m.Version] = true
	}
	for _, v := range done {
		if !known[v] {
			return 0, fmt.Errorf("schemas: database has migration %d, which this binary does not know: it is newer", v)
		}
	}
	applied := 0
	for _, m := range ms {
		if slices.Contains(done, m.Version) {
			continue
		}
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.Version, m.Name)
			return err
		})
		if err != nil {
			return applied, fmt.Errorf("schemas: apply %s: %w", m.Name, err)
		}
		applied++
	}
	return applied, nil
}
