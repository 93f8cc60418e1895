package directory

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/schemas/schematest"
)

func TestLoadBadLines(t *testing.T) {
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "a")
	long := `{"customerId": 99, "thirdId": "` + strings.Repeat("x", MaxLineBytes) + `"}`
	tests := []struct {
		line string
		bad  string // "" for a good line; else a part of the reason
	}{
		{`{"customerId": 1, "thirdId": "crm-1", "phones": ["13800000001"]}`, ""},
		{`not json`, "malformed JSON"},
		{`{"customerId": 0}`, "customerId must be from 1"},
		{`{"customerId": -5, "thirdId": "crm-secret"}`, "customerId must be from 1"},
		{`{"customerId": 4503599627370496}`, "customerId must be from 1 to 4503599627370495"},
		{`{"thirdId": "crm-secret"}`, "customerId must be from 1"},
		{`{"customerId": "7"}`, "field customerId has the wrong type"},
		{`{"customerId": 1.5}`, "field customerId has the wrong type"},
		{`[1, 2]`, "not a JSON object"},
		{`{"customerId": 8, "phones": ["138-0000-008"]}`, "phones[0] is not a valid phone number"},
		{`{"customerId": 9, "phones": ["13800000009", {"phone": "13800000010", "appType": "YOUZAN"}]}`, "appType and appId go together"},
		{`{"customerId": 10, "openids": [{"openid": "o-secret", "appType": "gzh"}]}`, "openids[0] needs appType and appId"},
		{`{"customerId": 11, "unionid": {"appType": "gzh", "appId": "wx1"}}`, "names no phone, unionid or email"},
		{`{"customerId": 12, "phones": "13800000012"}`, "field phones has the wrong type"},
		{`{"customerId": 18, "emails": ["alice@example"]}`, "emails[0] is not a valid email address"},
		{`{"customerId": 19, "emails": [{"email": "a@b.cn", "appId": "wx1"}]}`, "appType and appId go together"},
		{`{"customerId": 20, "emails": ["null", " A@Example.CN ", {"email": "b@example.cn", "appType": "gzh", "appId": "wx1"}]}`, ""},
		{`{"customerId": 13} trailing`, "malformed JSON"},
		{`{"customerId": 17, "thirdId": "crm\u0000-secret"}`, "U+0000"},
		{`{"customerId": 17, "customerId": 18}`, "member customerId is given twice"},
		{long, "longer than"},
		{`{"customerId": 14, "thirdId": "null", "unionid": "undefined", "phones": ["0", "-1", ""], "openids": [{"openid": "NULL"}]}`, ""},
		{"{\"customerId\": 15, \"unionid\": {\"unionid\": \"u15\", \"appType\": \" gzh \", \"appId\": \"wx1\"}}\r", ""},
		{`  `, ""}, // blank: skipped, counted as a line
		{`{"customerId": 16, "extra": {"nested": [1, 2]}, "phones": [" +86 138 0000 0016 "]}`, ""},
	}
	var in strings.Builder
	for _, tt := range tests {
		in.WriteString(tt.line + "\n")
	}
	p, err := NewLoader(db).Load(context.Background(), tenant, strings.NewReader(in.String()))
	if err != nil {
		t.Fatal(err)
	}
	badAt := map[int]LineError{}
	for _, b := range p.Bad {
		badAt[b.Line] = b
	}
	good := 0
	for i, tt := range tests {
		t.Run(fmt.Sprintf("line %d", i+1), func(t *testing.T) {
			b, isBad := badAt[i+1]
			switch {
			case tt.bad == "" && isBad:
				t.Errorf("reported bad: %v", b)
			case tt.bad != "" && !isBad:
				t.Errorf("not reported, want %q", tt.bad)
			case isBad && !strings.Contains(b.Error(), tt.bad):
				t.Errorf("reported %q, want it to say %q", b.Error(), tt.bad)
			case isBad && !strings.HasPrefix(b.Error(), fmt.Sprintf("line %d: ", i+1)):
				t.Errorf("reported %q, want the line number first", b.Error())
			}
			for _, secret := range []string{"crm-secret", "o-secret", "138-0000-008", "13800000010", "13800000012", "xxxx"} {
				if isBad && strings.Contains(b.Error(), secret) {
					t.Errorf("reported %q, which shows a value of the line", b.Error())
				}
			}
		})
		if tt.bad == "" && strings.TrimSpace(tt.line) != "" {
			good++
		}
	}
	if p.Lines != len(tests) || p.Loaded != good || len(p.Bad) != len(tests)-good-1 {
		t.Errorf("progress %d lines, %d loaded, %d bad; want %d, %d, %d", p.Lines, p.Loaded, len(p.Bad), len(tests), good, len(tests)-good-1)
	}
	got := readDirectory(t, db, tenant)
	want := []string{
		"1 third=crm-1 union= phones=[13800000001] openids=[]",
		"14 third= union= phones=[] openids=[]",
		"15 third= union=u15@gzh/wx1 phones=[] openids=[]",
		"16 third= union= phones=[13800000016] openids=[]",
		"20 third= union= phones=[] openids=[]", // its emails: TestEmails
	}
	if !slices.Equal(got, want) {
		t.Errorf("directory:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// readDirectory renders the tenant's directory, one customer a line, in
// customerId order.
func readDirectory(t testing.TB, db *pgxpool.Pool, tenantID int64) []string {
	t.Helper()
	rows, err := db.Query(context.Background(), `
		SELECT c.customer_id, coalesce(c.third_id, ''),
			coalesce(c.unionid || CASE WHEN c.unionid_app_id <> '' THEN '@' || c.unionid_app_type || '/' || c.unionid_app_id ELSE '' END, ''),
			coalesce((SELECT array_agg(p.phone || CASE WHEN p.app_id <> '' THEN '@' || p.app_type || '/' || p.app_id ELSE '' END ORDER BY 1)
				FROM customer_phones p WHERE p.tenant_id = c.tenant_id AND p.customer_id = c.customer_id), '{}'),
			coalesce((SELECT array_agg(o.openid || '@' || o.app_type || '/' || o.app_id ORDER BY 1)
				FROM customer_openids o WHERE o.tenant_id = c.tenant_id AND o.customer_id = c.customer_id), '{}')
		FROM customers c WHERE c.tenant_id = $1 ORDER BY c.customer_id`, tenantID)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var id int64
		var third, union string
		var phones, openids []string
		if err := rows.Scan(&id, &third, &union, &phones, &openids); err != nil {
			t.Fatal(err)
		}
		slices.Sort(phones)
		slices.Sort(openids)
		out = append(out, fmt.Sprintf("%d third=%s union=%s phones=%v openids=%v", id, third, union, phones, openids))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestLoadMergeRules loads files one after another and checks the upsert
// rule: a later line's thirdId and unionid replace the stored ones, a field
// left out keeps its value, identities are only added, and a customerId
// given twice is merged in file order, within a chunk or across chunks
// loading at once.
func TestLoadMergeRules(t *testing.T) {
	files := [][]string{
		{
			`{"customerId": 1, "thirdId": "t1", "unionid": "u1", "phones": ["13800000001"], "openids": [{"openid": "o1", "appType": "gzh", "appId": "wx1"}]}`,
			`{"customerId": 2, "thirdId": "t2", "unionid": {"unionid": "u2", "appType": "gzh", "appId": "wx1"}}`,
		},
		{
			`{"customerId": 1, "unionid": "u1b", "phones": [{"phone": "13800000001", "appType": "YOUZAN", "appId": "shop1"}]}`,
			`{"customerId": 2, "thirdId": "t2b", "phones": ["13800000002"], "openids": [{"openid": "o1", "appType": "gzh", "appId": "wx2"}]}`,
			`{"customerId": 3, "thirdId": "t3a"}`,
			`{"customerId": 3, "unionid": "u3", "phones": ["13800000003"]}`,
			`{"customerId": 3, "thirdId": "t3", "phones": ["+86 138-0000-0003"]}`,
			`{"customerId": 4, "thirdId": "t4"}`,
			`{"customerId": 5, "thirdId": "t5a", "unionid": {"unionid": "u5", "appType": "gzh", "appId": "wx1"}}`,
			`{"customerId": 4, "thirdId": "t4b", "openids": [{"openid": "o4", "appType": "gzh", "appId": "wx1"}]}`,
			`{"customerId": 5, "thirdId": "t5", "unionid": "u5"}`,
		},
	}
	want := []string{
		"1 third=t1 union=u1b phones=[13800000001 13800000001@YOUZAN/shop1] openids=[o1@gzh/wx1]",
		"2 third=t2b union=u2@gzh/wx1 phones=[13800000002] openids=[o1@gzh/wx2]",
		"3 third=t3 union=u3 phones=[13800000003] openids=[]",
		"4 third=t4b union= phones=[] openids=[o4@gzh/wx1]",
		"5 third=t5 union=u5 phones=[] openids=[]",
	}
	db, _ := schematest.NewPool(t)
	for i, cfg := range []struct{ chunk, workers int }{{0, 0}, {1, 2}, {2, 2}, {3, 1}} {
		t.Run(fmt.Sprintf("chunk=%d,workers=%d", cfg.chunk, cfg.workers), func(t *testing.T) {
			tenant := ensureTenant(t, db, fmt.Sprintf("t%d", i))
			l := NewLoader(db)
			l.ChunkLines, l.Workers = cfg.chunk, cfg.workers
			for _, f := range files {
				p, err := l.Load(context.Background(), tenant, strings.NewReader(strings.Join(f, "\n")))
				if err != nil || len(p.Bad) > 0 {
					t.Fatalf("load: %v, bad %v", err, p.Bad)
				}
			}
			if got := readDirectory(t, db, tenant); !slices.Equal(got, want) {
				t.Errorf("directory:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		})
	}
}

// bigFile is the first n customers of the Big directory, with every
// hundredth line repeated further on (the same content, so the file's
// meaning does not depend on the order chunks load in).
func bigFile(t testing.TB, n int) string {
	t.Helper()
	var buf bytes.Buffer
	if err := matchertest.WriteBig(&buf, 0, n); err != nil {
		t.Fatal(err)
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	for i := 0; i < n; i += 100 {
		lines = append(lines, lines[i])
	}
	return strings.Join(lines, "")
}

// TestLoadAgainChangesNothing loads a file twice and checks that the
// second load rewrites no row.
func TestLoadAgainChangesNothing(t *testing.T) {
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "a")
	file := bigFile(t, 3000)
	l := NewLoader(db)
	l.ChunkLines = 700
	if p, err := l.Load(context.Background(), tenant, strings.NewReader(file)); err != nil || len(p.Bad) > 0 || p.Loaded != 3030 {
		t.Fatalf("load: %v, bad %v, loaded %d", err, p.Bad, p.Loaded)
	}
	first := directoryDigest(t, db, tenant)
	p, err := l.Load(context.Background(), tenant, strings.NewReader(file))
	if err != nil || len(p.Bad) > 0 {
		t.Fatalf("load again: %v, bad %v", err, p.Bad)
	}
	if again := directoryDigest(t, db, tenant); fmt.Sprint(again) != fmt.Sprint(first) {
		t.Errorf("loading again changed the directory:\n%v\nwas\n%v", again, first)
	}
	if first["customers"].Rows != 3000 {
		t.Errorf("%d customers, want 3000", first["customers"].Rows)
	}
}

// TestLoadPathsAgree loads one file by every path the loader has (COPY
// into an empty tenant, merging into a tenant that has part of it, two
// loads racing, one worker and small chunks) and checks that the contents
// agree.
func TestLoadPathsAgree(t *testing.T) {
	db, _ := schematest.NewPool(t)
	file := bigFile(t, 2000)
	half := strings.Join(strings.SplitAfter(file, "\n")[:1000], "")
	load := func(t *testing.T, tenant int64, in string, chunk, workers int) {
		l := NewLoader(db)
		l.ChunkLines, l.Workers = chunk, workers
		p, err := l.Load(context.Background(), tenant, strings.NewReader(in))
		if err != nil || len(p.Bad) > 0 {
			t.Fatalf("load: %v, bad %v", err, p.Bad)
		}
	}
	content := func(tenant int64) string {
		d := directoryDigest(t, db, tenant)
		for k, v := range d {
			v.XminSum = 0
			d[k] = v
		}
		return fmt.Sprint(d)
	}
	ref := ensureTenant(t, db, "ref")
	load(t, ref, file, 0, 0)
	want := content(ref)
	tests := []struct {
		name string
		load func(t *testing.T, tenant int64)
	}{
		{"half then all", func(t *testing.T, tenant int64) {
			load(t, tenant, half, 300, 2)
			load(t, tenant, file, 300, 2)
		}},
		{"small chunks, one worker", func(t *testing.T, tenant int64) { load(t, tenant, file, 97, 1) }},
		{"a row in the way of COPY", func(t *testing.T, tenant int64) {
			// The phone row exists without its customer: the first chunk's
			// COPY fails on it and the chunk is merged instead.
			if _, err := db.Exec(context.Background(), `INSERT INTO customer_phones (tenant_id, phone, customer_id) VALUES ($1, $2, 1)`,
				tenant, matchertest.BigPhone(0, 0)); err != nil {
				t.Fatal(err)
			}
			load(t, tenant, file, 0, 0)
		}},
		{"two loads at once", func(t *testing.T, tenant int64) {
			var wg sync.WaitGroup
			for range 2 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					load(t, tenant, file, 250, 2)
				}()
			}
			wg.Wait()
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tenant := ensureTenant(t, db, tt.name)
			tt.load(t, tenant)
			if got := content(tenant); got != want {
				t.Errorf("content %s, want %s", got, want)
			}
		})
	}
}

func TestLoadProgress(t *testing.T) {
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "a")
	file := bigFile(t, 1000) + "bad line\n\n"
	l := NewLoader(db)
	l.ChunkLines = 100
	var calls []LoadProgress
	var inCall atomic.Int32
	l.Progress = func(p LoadProgress) {
		if inCall.Add(1) != 1 {
			t.Error("Progress called concurrently")
		}
		calls = append(calls, p)
		inCall.Add(-1)
	}
	p, err := l.Load(context.Background(), tenant, strings.NewReader(file))
	if err != nil {
		t.Fatal(err)
	}
	if len(calls) != 11 {
		t.Errorf("%d progress calls, want one per chunk (11)", len(calls))
	}
	for i := 1; i < len(calls); i++ {
		if calls[i].Loaded <= calls[i-1].Loaded || calls[i].Lines <= calls[i-1].Lines || calls[i].Bytes <= calls[i-1].Bytes {
			t.Errorf("progress went back: %+v after %+v", calls[i], calls[i-1])
		}
	}
	last := calls[len(calls)-1]
	if last.Loaded != 1010 || p.Loaded != 1010 || p.Lines != 1012 || p.Bytes != int64(len(file)) {
		t.Errorf("last progress %+v, result %+v; want 1010 loaded of 1012 lines, %d bytes", last, p, len(file))
	}
	if p.New != 1000 || p.Analyzed {
		t.Errorf("%d new customers, analyzed %v; want 1000 (the repeated lines are merged), not analyzed", p.New, p.Analyzed)
	}
	if len(p.Bad) != 1 || p.Bad[0].Line != 1011 {
		t.Errorf("bad lines %v, want line 1011", p.Bad)
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	r io.Reader
	n int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestLoadErrors(t *testing.T) {
	db, _ := schematest.NewPool(t)
	tenant := ensureTenant(t, db, "a")
	file := bigFile(t, 500)
	t.Run("reader fails", func(t *testing.T) {
		_, err := NewLoader(db).Load(context.Background(), tenant, &failingReader{strings.NewReader(file), 10000})
		if err == nil || !strings.Contains(err.Error(), "disk on fire") || !strings.HasPrefix(err.Error(), "directory: read line") {
			t.Errorf("err = %v, want the read error, wrapped", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := NewLoader(db).Load(ctx, tenant, strings.NewReader(file)); !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want context.Canceled", err)
		}
	})
	t.Run("database gone", func(t *testing.T) {
		closed, _ := schematest.NewPool(t)
		closed.Close()
		_, err := NewLoader(closed).Load(context.Background(), tenant, strings.NewReader(file))
		if err == nil || !strings.HasPrefix(err.Error(), "directory: load chunk: ") {
			t.Errorf("err = %v, want a wrapped chunk error", err)
		}
	})
}

// ensureTenant returns the id of the tenant named name, creating it.
func ensureTenant(tb testing.TB, db *pgxpool.Pool, name string) int64 {
	tb.Helper()
	var id int64
	err := db.QueryRow(context.Background(), `
		WITH t AS (INSERT INTO tenants (name) VALUES ($1) ON CONFLICT (name) DO NOTHING RETURNING tenant_id)
		SELECT tenant_id FROM t UNION ALL SELECT tenant_id FROM tenants WHERE name = $1`, name).Scan(&id)
	if err != nil {
		tb.Fatalf("tenant: %v", err)
	}
	return id
}

// tableDigest sums the rows of the tenant's directory tables, their content
// and their xmin, so that a re-run that rewrites a row unchanged shows.
type tableDigest struct {
	Rows, ContentHash, XminSum int64
}

func directoryDigest(tb testing.TB, db *pgxpool.Pool, tenantID int64) map[string]tableDigest {
	tb.Helper()
	out := map[string]tableDigest{}
	for _, table := range []string{"customers", "customer_phones", "customer_openids"} {
		var d tableDigest
		// created_at is left out: it is set once, by the insert.
		cols := map[string]string{
			"customers":        "customer_id, third_id, unionid, unionid_app_type, unionid_app_id",
			"customer_phones":  "phone, customer_id, app_type, app_id",
			"customer_openids": "openid, app_type, app_id, customer_id",
		}[table]
		err := db.QueryRow(context.Background(), fmt.Sprintf(`
			SELECT count(*), coalesce(sum(hashtextextended(row(%s)::text, 0)) %% 9223372036854775807, 0)::bigint,
				coalesce(sum(xmin::text::bigint), 0)
			FROM %s WHERE tenant_id = $1`, cols, table), tenantID).Scan(&d.Rows, &d.ContentHash, &d.XminSum)
		if err != nil {
			tb.Fatalf("digest %s: %v", table, err)
		}
		out[table] = d
	}
	return out
}
