package stream

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
)

func TestDeadLetterHeaders(t *testing.T) {
	m := kafka.Message{Topic: "groupmatch.resolved", Partition: 3, Offset: 42, Key: []byte("k"), Value: []byte("v")}
	secret := "13800000000"
	pgErr := &pgconn.PgError{Code: "22P02", Message: `invalid input syntax for type bigint: "` + secret + `"`, ConstraintName: ""}
	cases := []struct {
		err  error
		want string
	}{
		{fmt.Errorf("sink: apply: %w", pgErr), "postgres error SQLSTATE 22P02"},
		{&pgconn.PgError{Code: "23505", ConstraintName: "groups_tenant_id_name_key", Detail: secret}, "postgres error SQLSTATE 23505 on groups_tenant_id_name_key"},
		{fmt.Errorf("%w: record: bad optType", pipeline.ErrUndecodable), "undecodable message: record: bad optType"},
		{fmt.Errorf("sink: apply: failed to encode args[1]: %w", errors.New("unable to encode "+secret+" into binary format")),
			"*fmt.wrapError (text withheld: it may quote a value)"},
	}
	for _, c := range cases {
		d := DeadLetter(m, "sink", "permanent", c.err)
		h := map[string]string{}
		for _, x := range d.Headers {
			h[x.Key] = string(x.Value)
		}
		if h[HeaderError] != c.want || strings.Contains(fmt.Sprint(h), secret) {
			t.Errorf("error header %q, want %q", h[HeaderError], c.want)
		}
		if h[HeaderTopic] != "groupmatch.resolved" || h[HeaderPartition] != "3" || h[HeaderOffset] != "42" ||
			h[HeaderStage] != "sink" || h[HeaderErrorClass] != "permanent" || string(d.Value) != "v" || string(d.Key) != "k" {
			t.Errorf("dead letter %+v", h)
		}
	}
}
