package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/groupmatch/groupmatch/schemas/schematest"
)

// statements collects every statement the stages that tests run in this
// process send (runStagesOn installs it).
var statements = &schematest.StatementLog{}

// guardTenantFilters is the guard of SPEC §12, run by TestMain after the
// tests: every statement the stages sent during them that reaches a tenant
// table names its tenant (schematest.StatementLog.TenantFilterViolations),
// planned on a fresh database. Any violation fails the run: it returns the
// exit code the run ends with.
func guardTenantFilters(code int) int {
	if code == 0 && statements.Len() > 0 {
		if err := checkTenantFilters(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: statements without their tenant:", err)
			return 1
		}
	}
	return code
}

func checkTenantFilters() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	url, drop, err := schematest.CreateDatabase(ctx)
	if err != nil {
		return err
	}
	defer drop()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	bad, err := statements.TenantFilterViolations(ctx, conn)
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d statements:\n%s", len(bad), statements.Len(), strings.Join(bad, "\n"))
	}
	if testing.Verbose() {
		fmt.Printf("tenant filters: %d statements checked, all name their tenant\n", statements.Len())
	}
	return nil
}
