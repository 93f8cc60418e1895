package main

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// TestTenantSetCommand sets and clears a tenant's deferUnmatched default;
// an unknown tenant and a missing flag are refused.
func TestTenantSetCommand(t *testing.T) {
	url := schematest.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `INSERT INTO tenants (tenant_id, name) OVERRIDING SYSTEM VALUE VALUES (1, 'acme')`); err != nil {
		t.Fatal(err)
	}
	read := func() bool {
		t.Helper()
		var v bool
		if err := conn.QueryRow(ctx, `SELECT defer_unmatched FROM tenants WHERE tenant_id = 1`).Scan(&v); err != nil {
			t.Fatal(err)
		}
		return v
	}
	if read() {
		t.Fatal("default on before any setting")
	}
	for _, v := range []string{"true", "false"} {
		var out, errOut bytes.Buffer
		if err := run(ctx, []string{"tenant", "set", "--database-url", url, "--tenant", "acme", "--defer-unmatched=" + v}, &out, &errOut); err != nil {
			t.Fatalf("tenant set %s: %v\n%s", v, err, errOut.String())
		}
		if got := read(); (v == "true") != got || !strings.Contains(out.String(), "deferUnmatched default "+v) {
			t.Fatalf("after %s: %v, output %q", v, got, out.String())
		}
	}
	var out, errOut bytes.Buffer
	if err := run(ctx, []string{"tenant", "set", "--database-url", url, "--tenant", "nobody", "--defer-unmatched=true"}, &out, &errOut); err == nil || !strings.Contains(err.Error(), `no tenant "nobody"`) {
		t.Errorf("unknown tenant: %v", err)
	}
	var usage usageError
	if err := run(ctx, []string{"tenant", "set", "--database-url", url, "--tenant", "acme"}, &out, &errOut); !errors.As(err, &usage) {
		t.Errorf("without --defer-unmatched: %v, want a usage error", err)
	}
}
