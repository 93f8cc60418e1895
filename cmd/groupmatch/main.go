package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `groupmatch imports customer groups and matches their members to platform customers.

Usage: groupmatch <command> [flags]

Commands:
  dev                everything on one machine: in-process Kafka broker, PostgreSQL, all stages
  serve              all stages in one process, against KAFKA_BROKERS and DATABASE_URL
  ingest             the HTTP API: accepts batches and writes records to Kafka
  matcher            resolves records to customers
  sink               applies group writes and batch progress to PostgreSQL
  broker             only dev's in-process Kafka-protocol broker (development and tests only)
  kafka              Apache Kafka from the jars make deps fetched, in the foreground (development and tests only)
  migrate            applies the database schema; safe to run again
  topics             creates the Kafka topics; safe to run again
  app create         creates an application and prints its credentials once
  app disable        disables an application; its tokens stop working
  tenant set         sets a tenant's defaults (--defer-unmatched: deferred matching)
  directory load     loads customers from JSON lines
  prune              deletes results, tombstones and keys past their retention (sinks also do it)
  healthcheck        probes a process's /healthz or /readyz (for container healthchecks)
  version            prints the version, VCS revision and Go version of this binary
  bench              load generator and end-to-end measurement, with a plain-PostgreSQL baseline

Run "groupmatch <command> --help" for a command's flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode reports err and returns the process's exit status: 0 for
// success and for help asked for, 2 for a usage error (a bad command, flag
// or environment value), 1 for a failure at run time.
func exitCode(err error, stderr io.Writer) int {
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return 0
	}
	fmt.Fprintln(stderr, "groupmatch:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// run dispatches a command line. It returns flag.ErrHelp after printing
// help.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return usageError{errors.New("no command given")}
		}
		return nil
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "dev":
		return cmdDev(ctx, rest, stdout, stderr)
	case "serve":
		return cmdStages(ctx, "serve", allStages, rest, stdout, stderr)
	case "ingest", "matcher", "sink":
		return cmdStages(ctx, cmd, []string{cmd}, rest, stdout, stderr)
	case "broker":
		return cmdBroker(ctx, rest, stdout, stderr)
	case "kafka":
		return cmdKafka(ctx, rest, stdout, stderr)
	case "migrate":
		return cmdMigrate(ctx, rest, stdout, stderr)
	case "topics":
		return cmdTopics(ctx, rest, stdout, stderr)
	case "app":
		return cmdApp(ctx, rest, stdout, stderr)
	case "tenant":
		return cmdTenant(ctx, rest, stdout, stderr)
	case "directory":
		return cmdDirectory(ctx, rest, stdout, stderr)
	case "prune":
		return cmdPrune(ctx, rest, stdout, stderr)
	case "healthcheck":
		return cmdHealthcheck(ctx, rest, stdout, stderr)
	case "bench":
		return cmdBench(ctx, rest, stdout, stderr)
	case "version":
		return cmdVersion(rest, stdout, stderr)
	default:
		fmt.Fprint(stderr, usage)
		return usageError{fmt.Errorf("unknown command %q", cmd)}
	}
}
