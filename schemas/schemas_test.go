package schemas_test

import (
	"context"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// Concurrent migrators apply each migration once; a second run applies none.
func TestMigrateConcurrentAndIdempotent(t *testing.T) {
	url := schematest.NewDatabase(t) // already migrated once
	ms, err := schemas.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	schematest.SkipOnCitus(t, conn, "DROP SCHEMA public CASCADE would drop the extension with it")
	// Start from scratch to race real migrations.
	if _, err := conn.Exec(ctx, "DROP SCHEMA public CASCADE; CREATE SCHEMA public"); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	applied := make([]int, 4)
	errs := make([]error, 4)
	for i := range applied {
		wg.Go(func() {
			c, err := pgx.Connect(ctx, url)
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close(ctx)
			applied[i], errs[i] = schemas.Migrate(ctx, c)
		})
	}
	wg.Wait()
	total := 0
	for i := range applied {
		if errs[i] != nil {
			t.Fatalf("migrator %d: %v", i, errs[i])
		}
		total += applied[i]
	}
	if total != len(ms) {
		t.Fatalf("migrations applied %d times in all, want %d", total, len(ms))
	}
	n, err := schemas.Migrate(ctx, conn)
	if err != nil || n != 0 {
		t.Fatalf("second run applied %d, err %v; want 0, nil", n, err)
	}
	var version, count int
	if err := conn.QueryRow(ctx, "SELECT max(version), count(*) FROM schema_migrations").Scan(&version, &count); err != nil ||
		version != ms[len(ms)-1].Version || count != len(ms) {
		t.Fatalf("version %d of %d rows (err %v), want %d of %d", version, count, err, ms[len(ms)-1].Version, len(ms))
	}
}
