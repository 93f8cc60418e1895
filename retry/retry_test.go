package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/segmentio/kafka-go/protocol/produce"
)

func TestTransient(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"serialization failure", &pgconn.PgError{Code: "40001"}, true},
		{"deadlock", &pgconn.PgError{Code: "40P01"}, true},
		{"admin shutdown", fmt.Errorf("sink: %w", &pgconn.PgError{Code: "57P01"}), true},
		{"unique violation", &pgconn.PgError{Code: "23505"}, false},
		{"syntax error", &pgconn.PgError{Code: "42601"}, false},
		{"eof", fmt.Errorf("read: %w", io.EOF), true},
		{"kafka leader not available", kafka.LeaderNotAvailable, true},
		{"kafka-go: no leader in its metadata", fmt.Errorf("write: %w", &produce.Error{Err: protocol.NewErrNoLeader("groupmatch.records", 3)}), true},
		{"kafka-go: no such partition in its metadata", protocol.NewErrNoPartition("groupmatch.records", 9), true},
		{"kafka-go: no such topic in its metadata", protocol.NewErrNoTopic("groupmatch.records"), true},
		{"kafka message too large", kafka.MessageSizeTooLarge, false},
		{"kafka write errors, all transient", fmt.Errorf("write: %w", kafka.WriteErrors{nil, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, kafka.LeaderNotAvailable}), true},
		{"kafka write errors, one permanent", kafka.WriteErrors{kafka.LeaderNotAvailable, kafka.MessageSizeTooLarge}, false},
		{"kafka write errors, none", kafka.WriteErrors{nil, nil}, false},
		{"marked", fmt.Errorf("batch pending: %w", ErrTransient), true},
		{"cancelled", context.Canceled, false},
		{"plain", errors.New("boom"), false},
		{"panic", &PanicError{Value: "x"}, false},
		{"panic marked transient", fmt.Errorf("%w: %w", ErrTransient, &PanicError{Value: "x"}), false},
		{"kafka message too large for the writer", kafka.MessageTooLargeError{}, false},
		{"deadline", fmt.Errorf("write: %w", context.DeadlineExceeded), true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Transient(c.err); got != c.want {
				t.Fatalf("Transient(%v) = %v, want %v", c.err, got, c.want)
			}
		})
	}
}

func TestDo(t *testing.T) {
	p := Policy{Initial: time.Millisecond, Max: 2 * time.Millisecond, MaxElapsed: time.Second}
	t.Run("transient then success", func(t *testing.T) {
		n := 0
		err := Do(context.Background(), p, func() error {
			n++
			if n < 3 {
				return io.EOF
			}
			return nil
		}, nil)
		if err != nil || n != 3 {
			t.Fatalf("err %v after %d attempts, want nil after 3", err, n)
		}
	})
	t.Run("permanent stops at once", func(t *testing.T) {
		n := 0
		perm := &pgconn.PgError{Code: "23505"}
		err := Do(context.Background(), p, func() error { n++; return perm }, nil)
		if !errors.Is(err, perm) || n != 1 {
			t.Fatalf("err %v after %d attempts, want the permanent error after 1", err, n)
		}
	})
	t.Run("gives up after MaxElapsed", func(t *testing.T) {
		short := Policy{Initial: time.Millisecond, Max: time.Millisecond, MaxElapsed: 20 * time.Millisecond}
		err := Do(context.Background(), short, func() error { return io.EOF }, nil)
		if !errors.Is(err, io.EOF) {
			t.Fatalf("err %v, want io.EOF", err)
		}
	})
}

// PostgreSQL errors are classified by SQLSTATE class: only the classes
// where the server may answer differently later are transient.
func TestTransientSQLState(t *testing.T) {
	cases := []struct {
		code string
		want bool
		what string
	}{
		{"08006", true, "connection failure"},
		{"08P01", true, "protocol violation"},
		{"40001", true, "serialization failure"},
		{"40P01", true, "deadlock"},
		{"53300", true, "too many connections"},
		{"53100", true, "disk full"},
		{"57P01", true, "admin shutdown"},
		{"57P03", true, "cannot connect now"},
		{"57014", true, "query cancelled (statement timeout)"},
		{"58030", true, "io error"},
		{"22001", false, "string data right truncation"},
		{"22021", false, "character not in repertoire (invalid UTF-8)"},
		{"22P02", false, "invalid text representation"},
		{"22003", false, "numeric value out of range"},
		{"23505", false, "unique violation"},
		{"23503", false, "foreign key violation"},
		{"23502", false, "not null violation"},
		{"42601", false, "syntax error"},
		{"42501", false, "insufficient privilege"},
		{"42P01", false, "undefined table"},
		{"54000", false, "program limit exceeded (index row too large)"},
		{"54001", false, "statement too complex"},
		{"XX000", false, "internal error"},
	}
	for _, c := range cases {
		t.Run(c.code, func(t *testing.T) {
			err := fmt.Errorf("matcher: find or create: %w", &pgconn.PgError{Code: c.code})
			if got := Transient(err); got != c.want {
				t.Errorf("SQLSTATE %s (%s): Transient = %v, want %v", c.code, c.what, got, c.want)
			}
		})
	}
}

func TestCatch(t *testing.T) {
	if err := Catch(func() error { return io.EOF }); err != io.EOF {
		t.Fatalf("Catch passed %v through, want io.EOF", err)
	}
	err := Catch(func() error {
		var m map[string]int
		m["x"]++
		return nil
	})
	var pe *PanicError
	if !errors.As(err, &pe) || len(pe.Stack) == 0 || Transient(err) {
		t.Fatalf("Catch of a runtime panic = %v, want a permanent *PanicError with a stack", err)
	}
	if err.Error() != "panic: assignment to entry in nil map" {
		t.Errorf("runtime panic reads %q", err.Error())
	}
	// A panic with a value of the record never shows the value.
	err = Catch(func() error { panic("13800000000 is not a phone") })
	if err.Error() != "panic: string" {
		t.Errorf("panic with a string reads %q, want only its type", err.Error())
	}
}

func TestDoPanicIsPermanent(t *testing.T) {
	n := 0
	err := Do(context.Background(), Policy{Initial: time.Millisecond}, func() error {
		n++
		return Catch(func() error { panic(errors.New("bad")) })
	}, nil)
	var pe *PanicError
	if !errors.As(err, &pe) || n != 1 {
		t.Fatalf("err %v after %d attempts, want the panic after 1", err, n)
	}
}
