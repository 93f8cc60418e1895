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
		{"kafka message too large", kafka.MessageSizeTooLarge, false},
		{"kafka write errors, all transient", fmt.Errorf("write: %w", kafka.WriteErrors{nil, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, kafka.LeaderNotAvailable}), true},
		{"kafka write errors, one permanent", kafka.WriteErrors{kafka.LeaderNotAvailable, kafka.MessageSizeTooLarge}, false},
		{"kafka write errors, none", kafka.WriteErrors{nil, nil}, false},
		{"marked", fmt.Errorf("batch pending: %w", ErrTransient), true},
		{"cancelled", context.Canceled, false},
		{"plain", errors.New("boom"), false},
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
