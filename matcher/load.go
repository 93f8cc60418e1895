package matcher

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// MaxLoadedCustomerID is the largest customerId `directory load` accepts:
// ids from 2^52 up are reserved for customers that isMatching=false imports
// create, so the two never collide.
const MaxLoadedCustomerID = 1<<52 - 1

// DirectoryLine is one JSON line of a directory file (SPEC §9).
type DirectoryLine struct {
	CustomerID int64           `json:"customerId"`
	ThirdID    string          `json:"thirdId"`
	UnionID    BoundIdentity   `json:"unionid"`
	Phones     []BoundIdentity `json:"phones"`
	OpenIDs    []AppOpenID     `json:"openids"`
}

// BoundIdentity is a phone or unionid, given either as a plain string or as
// {"phone"|"unionid": "…", "appType": "…", "appId": "…"}, binding it to the
// application it came through.
type BoundIdentity struct {
	Value   string
	AppType string
	AppID   string
}

// UnmarshalJSON accepts a string, null or an object.
func (b *BoundIdentity) UnmarshalJSON(data []byte) error {
	data = bytes.TrimSpace(data)
	if len(data) > 0 && data[0] == '"' || bytes.Equal(data, []byte("null")) {
		return json.Unmarshal(data, &b.Value)
	}
	var o struct {
		Phone   *string `json:"phone"`
		UnionID *string `json:"unionid"`
		AppType string  `json:"appType"`
		AppID   string  `json:"appId"`
	}
	if err := json.Unmarshal(data, &o); err != nil {
		return err
	}
	switch {
	case o.Phone != nil:
		b.Value = *o.Phone
	case o.UnionID != nil:
		b.Value = *o.UnionID
	default:
		return errors.New("identity object names neither phone nor unionid")
	}
	b.AppType, b.AppID = o.AppType, o.AppID
	if (b.AppType == "") != (b.AppID == "") {
		return errors.New("appType and appId go together")
	}
	return nil
}

// AppOpenID is an openid with the application that issued it.
type AppOpenID struct {
	OpenID  string `json:"openid"`
	AppType string `json:"appType"`
	AppID   string `json:"appId"`
}

// LineError is a bad directory line; the load skips it and goes on.
type LineError struct {
	Line int // counted from 1
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// LoadProgress is reported while a directory loads.
type LoadProgress struct {
	Lines, Loaded int
	Bad           []LineError // bad lines so far
	Bytes         int64       // bytes read
	Elapsed       time.Duration
}

// Loader bulk-loads customers into the directory: lines are parsed and
// normalised in Go, COPYed into temporary staging tables a few thousand at a
// time, and merged with set-based upserts. Loading the same file again
// changes nothing: customers are upserted by customerId (a field left out
// keeps its stored value) and identities are only ever added.
type Loader struct {
	db *pgxpool.Pool
	// ChunkLines is how many lines one transaction loads; default 20000.
	ChunkLines int
	// Progress, if set, is called after each chunk.
	Progress func(LoadProgress)
}

// NewLoader returns a loader on db.
func NewLoader(db *pgxpool.Pool) *Loader { return &Loader{db: db, ChunkLines: 20000} }

type stagedCustomer struct {
	line                 int
	id                   int64
	thirdID              string
	unionid, uType, uApp string
}

type stagedIdentity struct {
	id                  int64
	value, appType, app string
}

type loadChunk struct {
	customers []stagedCustomer
	phones    []stagedIdentity
	openids   []stagedIdentity
}

// Load reads JSON lines from r into the tenant's directory.
func (l *Loader) Load(ctx context.Context, tenantID int64, r io.Reader) (LoadProgress, error) {
	start := time.Now()
	cr := &countingReader{r: r}
	sc := bufio.NewScanner(cr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	var prog LoadProgress
	var chunk loadChunk
	flush := func() error {
		if len(chunk.customers) == 0 {
			return nil
		}
		if err := l.loadChunk(ctx, tenantID, &chunk); err != nil {
			return err
		}
		prog.Loaded += len(chunk.customers)
		chunk = loadChunk{}
		prog.Bytes, prog.Elapsed = cr.n, time.Since(start)
		if l.Progress != nil {
			l.Progress(prog)
		}
		return nil
	}
	for sc.Scan() {
		prog.Lines++
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		if err := stageLine(&chunk, prog.Lines, line); err != nil {
			prog.Bad = append(prog.Bad, LineError{Line: prog.Lines, Err: err})
			continue
		}
		if len(chunk.customers) >= l.ChunkLines {
			if err := flush(); err != nil {
				return prog, err
			}
		}
	}
	if err := sc.Err(); err != nil {
		return prog, fmt.Errorf("matcher: read directory line %d: %w", prog.Lines+1, err)
	}
	if err := flush(); err != nil {
		return prog, err
	}
	prog.Bytes, prog.Elapsed = cr.n, time.Since(start)
	return prog, nil
}

// stageLine parses and normalises one line into the chunk. Its errors name
// fields, never values.
func stageLine(c *loadChunk, lineNo int, line []byte) error {
	var d DirectoryLine
	if err := json.Unmarshal(line, &d); err != nil {
		return fmt.Errorf("not a directory record: %v", jsonProblem(err))
	}
	if d.CustomerID <= 0 || d.CustomerID > MaxLoadedCustomerID {
		return fmt.Errorf("customerId must be from 1 to %d", int64(MaxLoadedCustomerID))
	}
	sc := stagedCustomer{line: lineNo, id: d.CustomerID, thirdID: usableValue(d.ThirdID)}
	if u := usableValue(d.UnionID.Value); u != "" {
		sc.unionid, sc.uType, sc.uApp = u, d.UnionID.AppType, d.UnionID.AppID
	}
	var phones, openids []stagedIdentity
	for i, p := range d.Phones {
		if usableValue(p.Value) == "" {
			continue
		}
		norm, ok := NormalizePhone(p.Value)
		if !ok {
			return fmt.Errorf("phones[%d] is not a valid phone number", i)
		}
		phones = append(phones, stagedIdentity{d.CustomerID, norm, p.AppType, p.AppID})
	}
	for i, o := range d.OpenIDs {
		v := usableValue(o.OpenID)
		if v == "" {
			continue
		}
		if o.AppType == "" || o.AppID == "" {
			return fmt.Errorf("openids[%d] needs appType and appId", i)
		}
		openids = append(openids, stagedIdentity{d.CustomerID, v, o.AppType, o.AppID})
	}
	c.customers = append(c.customers, sc)
	c.phones = append(c.phones, phones...)
	c.openids = append(c.openids, openids...)
	return nil
}

func jsonProblem(err error) string {
	var typeErr *json.UnmarshalTypeError
	if errors.As(err, &typeErr) {
		return "field " + typeErr.Field + " has the wrong type"
	}
	var syntaxErr *json.SyntaxError
	if errors.As(err, &syntaxErr) {
		return fmt.Sprintf("malformed JSON at byte %d", syntaxErr.Offset)
	}
	return "malformed identity field"
}

// usableValue trims s and returns "" for a blocked value.
func usableValue(s string) string {
	if IsBlocked(s) {
		return ""
	}
	return strings.TrimSpace(s)
}

func (l *Loader) loadChunk(ctx context.Context, tenantID int64, c *loadChunk) error {
	err := pgx.BeginFunc(ctx, l.db, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `
			CREATE TEMP TABLE IF NOT EXISTS stage_customers (line int, customer_id bigint, third_id text, unionid text, u_type text, u_app text) ON COMMIT DELETE ROWS;
			CREATE TEMP TABLE IF NOT EXISTS stage_phones (customer_id bigint, phone text, app_type text, app_id text) ON COMMIT DELETE ROWS;
			CREATE TEMP TABLE IF NOT EXISTS stage_openids (customer_id bigint, openid text, app_type text, app_id text) ON COMMIT DELETE ROWS`); err != nil {
			return err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"stage_customers"},
			[]string{"line", "customer_id", "third_id", "unionid", "u_type", "u_app"},
			pgx.CopyFromSlice(len(c.customers), func(i int) ([]any, error) {
				s := c.customers[i]
				return []any{int32(s.line), s.id, nullable(s.thirdID), nullable(s.unionid), s.uType, s.uApp}, nil
			})); err != nil {
			return err
		}
		for _, t := range []struct {
			table, col string
			rows       []stagedIdentity
		}{{"stage_phones", "phone", c.phones}, {"stage_openids", "openid", c.openids}} {
			if len(t.rows) == 0 {
				continue
			}
			rows := t.rows
			if _, err := tx.CopyFrom(ctx, pgx.Identifier{t.table}, []string{"customer_id", t.col, "app_type", "app_id"},
				pgx.CopyFromSlice(len(rows), func(i int) ([]any, error) {
					r := rows[i]
					return []any{r.id, r.value, r.appType, r.app}, nil
				})); err != nil {
				return err
			}
		}
		// The last line of a customerId wins within a chunk.
		_, err := tx.Exec(ctx, `
			INSERT INTO customers (tenant_id, customer_id, third_id, unionid, unionid_app_type, unionid_app_id)
			SELECT DISTINCT ON (customer_id) $1::bigint, customer_id, third_id, unionid, coalesce(u_type, ''), coalesce(u_app, '')
			FROM stage_customers ORDER BY customer_id, line DESC
			ON CONFLICT (tenant_id, customer_id) DO UPDATE SET
				third_id = coalesce(excluded.third_id, customers.third_id),
				unionid = coalesce(excluded.unionid, customers.unionid),
				unionid_app_type = CASE WHEN excluded.unionid IS NULL THEN customers.unionid_app_type ELSE excluded.unionid_app_type END,
				unionid_app_id = CASE WHEN excluded.unionid IS NULL THEN customers.unionid_app_id ELSE excluded.unionid_app_id END
			WHERE (customers.third_id, customers.unionid, customers.unionid_app_type, customers.unionid_app_id)
				IS DISTINCT FROM (coalesce(excluded.third_id, customers.third_id), coalesce(excluded.unionid, customers.unionid),
					CASE WHEN excluded.unionid IS NULL THEN customers.unionid_app_type ELSE excluded.unionid_app_type END,
					CASE WHEN excluded.unionid IS NULL THEN customers.unionid_app_id ELSE excluded.unionid_app_id END)`, tenantID)
		if err != nil {
			return err
		}
		if len(c.phones) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO customer_phones (tenant_id, phone, customer_id, app_type, app_id)
				SELECT DISTINCT $1::bigint, phone, customer_id, app_type, app_id FROM stage_phones ON CONFLICT DO NOTHING`, tenantID); err != nil {
				return err
			}
		}
		if len(c.openids) > 0 {
			if _, err := tx.Exec(ctx, `INSERT INTO customer_openids (tenant_id, openid, app_type, app_id, customer_id)
				SELECT DISTINCT $1::bigint, openid, app_type, app_id, customer_id FROM stage_openids ON CONFLICT DO NOTHING`, tenantID); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("matcher: load directory chunk: %w", err)
	}
	return nil
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
