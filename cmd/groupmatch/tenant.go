package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5/pgxpool"
)

// cmdTenant is `groupmatch tenant set`: an operator's per-tenant settings.
// Today one: the tenant's default for publicParams.deferUnmatched (SPEC
// §13), read by ingest for every batch that does not say.
func cmdTenant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "set" {
		fmt.Fprintln(stderr, "Usage: groupmatch tenant set --tenant T --defer-unmatched=true|false [flags]")
		if len(args) == 0 {
			return usageError{errors.New("tenant: missing subcommand")}
		}
		return usageError{fmt.Errorf("tenant: unknown subcommand %q", args[0])}
	}
	var o options
	fs := newFlagSet("tenant set --tenant T --defer-unmatched=true|false", stderr)
	o.addDatabase(fs)
	tenant := fs.String("tenant", "", "name of the tenant, as given to app create (required)")
	deferUnmatched := fs.Bool("defer-unmatched", false, "the tenant's default for publicParams.deferUnmatched: keep NOT_FOUND records of its add and delete batches as pending bindings (required; give it as --defer-unmatched=true or =false)")
	if err := parse(fs, args[1:], 0); err != nil {
		return err
	}
	given := false
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "defer-unmatched" {
			given = true
		}
	})
	if *tenant == "" || !given {
		fs.Usage()
		return usageError{errors.New("tenant set: --tenant and --defer-unmatched are required")}
	}
	return withPool(ctx, &o, func(pool *pgxpool.Pool) error {
		tag, err := pool.Exec(ctx, `UPDATE tenants SET defer_unmatched = $2 WHERE name = $1`, *tenant, *deferUnmatched)
		if err != nil {
			return fmt.Errorf("tenant set: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("tenant set: no tenant %q (app create makes it)", *tenant)
		}
		fmt.Fprintf(stdout, "tenant %s: deferUnmatched default %t\n", *tenant, *deferUnmatched)
		return nil
	})
}
