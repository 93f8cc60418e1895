package redact_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/redact"
	"github.com/groupmatch/groupmatch/retry"
)

// secret stands for an identity value: it must never come out of Error.
const secret = "13800138000"

type opaque struct{ error }

func TestError(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"data exception: message withheld", fmt.Errorf("sink: apply: %w", &pgconn.PgError{Severity: "ERROR", Code: "22P02",
			Message: `invalid input syntax for type bigint: "` + secret + `"`}), "postgres error SQLSTATE 22P02"},
		{"unique violation: constraint, no detail", &pgconn.PgError{Code: "23505", ConstraintName: "groups_tenant_id_name_key",
			Message: "duplicate key value violates unique constraint", Detail: "Key (name)=(" + secret + ") already exists."},
			"postgres error SQLSTATE 23505 on groups_tenant_id_name_key"},
		{"check violation", &pgconn.PgError{Code: "23514", ConstraintName: "poison", Detail: "Failing row contains (" + secret + ")."},
			"postgres error SQLSTATE 23514 on poison"},
		{"raise: message withheld", &pgconn.PgError{Code: "P0001", Message: "bad value " + secret}, "postgres error SQLSTATE P0001"},
		{"undefined column: message kept", &pgconn.PgError{Code: "42703", Message: `column "x" does not exist`},
			`postgres error SQLSTATE 42703: column "x" does not exist`},
		{"pgx encode error", fmt.Errorf("sink: apply: %w", fmt.Errorf("unable to encode %q into binary format for int8", secret)),
			"*fmt.wrapError (text withheld: it may quote a value)"},
		{"unknown error", opaque{errors.New("unable to encode " + secret)}, "redact_test.opaque (text withheld: it may quote a value)"},
		{"context", fmt.Errorf("ingest: accept: %w", context.DeadlineExceeded), "ingest: accept: context deadline exceeded"},
		{"no rows", fmt.Errorf("sink: relay: tenant 5: %w", pgx.ErrNoRows), "sink: relay: tenant 5: no rows in result set"},
		{"eof", io.ErrUnexpectedEOF, "unexpected EOF"},
		{"kafka code", fmt.Errorf("write: %w", kafka.LeaderNotAvailable), "write: " + kafka.LeaderNotAvailable.Error()},
		{"kafka write errors", kafka.WriteErrors{nil, &pgconn.PgError{Code: "22001", Message: secret}, nil},
			"kafka write errors (1/3), first: postgres error SQLSTATE 22001"},
		{"undecodable", fmt.Errorf("%w: record: bad optType", pipeline.ErrUndecodable), "undecodable message: record: bad optType"},
		{"panic of a value", &retry.PanicError{Value: secret}, "panic: string"},
		{"safe", fmt.Errorf("sink: %w", redact.Safe("no such batch")), "sink: no such batch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := redact.Error(tc.err)
			if got != tc.want {
				t.Errorf("Error() = %q, want %q", got, tc.want)
			}
			if strings.Contains(got, secret) {
				t.Errorf("Error() = %q leaks the identity value", got)
			}
		})
	}
}
