package matcher

// FuzzPipeline drives hostile records through what the matcher and the sink
// do to them, against a real PostgreSQL: the records topic's codec
// (pipeline.EncodeRecord, DecodeRecord), Normalize, resolveChunk with the
// PostgreSQL directory, the resolved topic's codec, and sink.PGStore.Apply,
// for one batch per input. SPEC §10: no record may stop a stage, so any
// error of resolution or apply is a finding, as is a record without an
// outcome, a counter that does not add up, or an identity value in an error
// string or an unmasked one on the failures page.
//
// The database is created once per fuzzing process, with a small Big
// directory in tenant 1; every input is a new batch of that tenant, so
// customers created by isMatching=false inputs stay and later inputs may
// find them, as in a directory in use.
//
//	go test ./matcher/ -run '^$' -fuzz '^FuzzPipeline$' -fuzztime 10s
//
// It is a test file
// of the matcher, because resolveChunk is the matcher's own; it uses the
// sink only through sink.PGStore, as the stage does.

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/groupmatch/groupmatch/directory"
	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
	"github.com/groupmatch/groupmatch/schemas/schematest"
	"github.com/groupmatch/groupmatch/sink"
)

// fuzzTenant holds the fuzzer's directory and batches.
const fuzzTenant = 1

// fuzzDirectory is how many Big customers the fuzzer's directory holds.
const fuzzDirectory = 64

// maxFuzzRecords bounds the records of one input's batch.
const maxFuzzRecords = 8

// fuzzInput is one input of FuzzPipeline, decoded: a batch's params and
// its records as a caller (or a producer to the records topic) sent them.
type fuzzInput struct {
	params  pipeline.Params
	records []pipeline.RawRecord
}

// Field tags of the input encoding (see decodeFuzzInput).
const (
	fuzzTagEmpty  = iota // the field is absent
	fuzzTagRaw           // u16 length, then that many bytes as they are
	fuzzTagKnown         // one byte: a customer of the directory, whose value of the field is used
	fuzzTagRepeat        // u16 count, one byte n, then n bytes repeated count times, to at most maxFuzzRepeat bytes (groups: count names, at most maxFuzzGroupNames)
	numFuzzTags
)

// Bounds of fuzzTagRepeat: past SPEC §10's limits and PostgreSQL's index row
// size, small enough that an input takes milliseconds.
const (
	maxFuzzRepeat     = 8 << 10
	maxFuzzGroupNames = 300
)

// decodeFuzzInput reads an input: a flags byte (bit 0 isMatching, bit 1
// fuzzy, bit 2 identifyWay 2, bit 3 delete, bit 4 accurateMatchType
// gzh/wx1), a byte whose value modulo maxFuzzRecords is the records less
// one, then per record an identityType selector byte and the fields thirdId,
// openid, unionid, phone and groups, each a tag byte and its payload. A
// short input ends with empty fields. It never fails: every byte string is
// some batch.
func decodeFuzzInput(data []byte) fuzzInput {
	r := fuzzReader{b: data}
	flags := r.byte()
	in := fuzzInput{params: pipeline.Params{IsMatching: flags&1 != 0, OptType: pipeline.OptAdd}}
	if in.params.IsMatching {
		in.params.MatchingType = pipeline.MatchingExact
		if flags&2 != 0 {
			in.params.MatchingType, in.params.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyUnionIDFirst
			if flags&4 != 0 {
				in.params.IdentifyWay = pipeline.IdentifyThirdIDFirst
			}
		}
	}
	if flags&8 != 0 {
		in.params.OptType = pipeline.OptDelete
	}
	if flags&16 != 0 && (!in.params.IsMatching || in.params.MatchingType == pipeline.MatchingExact) {
		in.params.AppType, in.params.AppID = matchertest.BigApps[0].Type, matchertest.BigApps[0].ID
	}
	n := int(r.byte())%maxFuzzRecords + 1
	in.records = make([]pipeline.RawRecord, n)
	for i := range in.records {
		rec := &in.records[i]
		rec.IdentityType = fuzzIdentityTypes[int(r.byte())%len(fuzzIdentityTypes)]
		rec.ThirdID = r.field(pipeline.KindThirdID)
		rec.OpenID = r.field(pipeline.KindOpenID)
		rec.UnionID = r.field(pipeline.KindUnionID)
		rec.Phone = r.field(pipeline.KindPhone)
		rec.Groups = r.field("groups")
	}
	return in
}

// fuzzIdentityTypes are what a record's identityType selector picks from.
var fuzzIdentityTypes = []string{"", "phone", "id", "thirdId", "openid", "unionid", "PHONE", "email", "mobile", "null"}

type fuzzReader struct{ b []byte }

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

func (r *fuzzReader) u16() int { return int(r.byte())<<8 | int(r.byte()) }

func (r *fuzzReader) bytes(n int) []byte {
	n = min(n, len(r.b))
	out := r.b[:n]
	r.b = r.b[n:]
	return out
}

// field reads one field of kind (an identity kind, or "groups").
func (r *fuzzReader) field(kind pipeline.IdentityKind) string {
	switch r.byte() % numFuzzTags {
	case fuzzTagRaw:
		return string(r.bytes(r.u16()))
	case fuzzTagKnown:
		i := int(r.byte()) % fuzzDirectory
		switch kind {
		case pipeline.KindThirdID:
			return matchertest.BigThirdID(i)
		case pipeline.KindOpenID:
			return matchertest.BigOpenID(i, matchertest.BigOpenApps(i)[0])
		case pipeline.KindUnionID:
			return matchertest.BigUnionID(i)
		case pipeline.KindPhone:
			if matchertest.BigPhones(i) > 0 {
				return matchertest.BigPhone(i, 0)
			}
			return ""
		}
		return "fuzz-" + strconv.Itoa(i%4) + ",fuzz-" + strconv.Itoa(i%7)
	case fuzzTagRepeat:
		count := r.u16()
		unit := r.bytes(int(r.byte()))
		if kind == "groups" {
			var b strings.Builder
			for j := range min(count, maxFuzzGroupNames) {
				if j > 0 {
					b.WriteByte(',')
				}
				b.Write(unit)
				b.WriteString(strconv.Itoa(j))
			}
			return b.String()
		}
		if len(unit) == 0 {
			return ""
		}
		return strings.Repeat(string(unit), min(count, maxFuzzRepeat/len(unit)))
	}
	return ""
}

// encodeFuzzInput writes in as decodeFuzzInput reads it, every field raw (a
// field longer than 65,535 bytes is cut). Seeds are written with it.
func encodeFuzzInput(in fuzzInput) []byte {
	var flags byte
	p := in.params
	if p.IsMatching {
		flags |= 1
	}
	if p.MatchingType == pipeline.MatchingFuzzy {
		flags |= 2
	}
	if p.IdentifyWay == pipeline.IdentifyThirdIDFirst {
		flags |= 4
	}
	if p.OptType == pipeline.OptDelete {
		flags |= 8
	}
	if p.AppType != "" {
		flags |= 16
	}
	b := []byte{flags, byte(len(in.records) - 1)}
	for _, rec := range in.records {
		sel := 0
		for i, it := range fuzzIdentityTypes {
			if it == rec.IdentityType {
				sel = i
			}
		}
		b = append(b, byte(sel))
		for _, v := range []string{rec.ThirdID, rec.OpenID, rec.UnionID, rec.Phone, rec.Groups} {
			if v == "" {
				b = append(b, fuzzTagEmpty)
				continue
			}
			v = v[:min(len(v), 0xffff)]
			b = append(b, fuzzTagRaw)
			b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		}
	}
	return b
}

// pipelineSeed is a named seed of FuzzPipeline.
type pipelineSeed struct {
	name string
	in   fuzzInput
}

var (
	seedExact     = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	seedFuzzy     = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyUnionIDFirst, OptType: pipeline.OptAdd}
	seedNoMatch   = pipeline.Params{IsMatching: false, OptType: pipeline.OptAdd}
	seedDelFuzzy2 = pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyThirdIDFirst, OptType: pipeline.OptDelete}
)

// fuzzGroupNames is n group names "g0,g1,…".
func fuzzGroupNames(n int) string {
	names := make([]string, n)
	for i := range names {
		names[i] = "g" + strconv.Itoa(i)
	}
	return strings.Join(names, ",")
}

// pipelineSeeds pass today.
var pipelineSeeds = []pipelineSeed{
	{name: "directory hits, exact and fuzzy", in: fuzzInput{params: seedFuzzy, records: []pipeline.RawRecord{
		{ThirdID: matchertest.BigThirdID(1), Phone: matchertest.BigPhone(1, 0), Groups: "vip,new"},
		{UnionID: matchertest.BigUnionID(2), Groups: "vip"},
		{OpenID: "nobody", Groups: "vip"},
	}}},
	{name: "exact by phone, formatted and malformed", in: fuzzInput{params: seedExact, records: []pipeline.RawRecord{
		{IdentityType: "phone", Phone: "+86 " + matchertest.BigPhone(3, 0), Groups: "a"},
		{IdentityType: "phone", Phone: "12ab", Groups: "a"},
		{IdentityType: "mobile", Phone: "13800000000", Groups: "a"},
	}}},
	{name: "delete, fuzzy identifyWay 2", in: fuzzInput{params: seedDelFuzzy2, records: []pipeline.RawRecord{
		{ThirdID: matchertest.BigThirdID(1), Groups: "vip"},
		{ThirdID: "null", Phone: "0", Groups: "vip"},
	}}},
	{name: "isMatching=false, new and existing", in: fuzzInput{params: seedNoMatch, records: []pipeline.RawRecord{
		{ThirdID: "fuzz-created-1", Phone: "13900000001", OpenID: "o-created", UnionID: "u-created", Groups: "made"},
		{ThirdID: "fuzz-created-1", Groups: "made,again"},
		{ThirdID: matchertest.BigThirdID(5), Groups: "made"},
	}}},
	{name: "144 group names", in: fuzzInput{params: seedNoMatch, records: []pipeline.RawRecord{
		{ThirdID: "fuzz-many-groups", Groups: fuzzGroupNames(144)},
	}}},
	{name: "long values looked up, not stored", in: fuzzInput{params: seedFuzzy, records: []pipeline.RawRecord{
		{ThirdID: strings.Repeat("t", 3000), OpenID: strings.Repeat("o", 3000), UnionID: strings.Repeat("u", 3000), Groups: "long"},
	}}},
	{name: "bidi override and zero-width group names", in: fuzzInput{params: seedNoMatch, records: []pipeline.RawRecord{
		{ThirdID: "fuzz-bidi", Groups: "\u202egnp.exe,\u200bvip,\u2028line"},
	}}},
	{name: "invalid UTF-8 and control characters", in: fuzzInput{params: seedFuzzy, records: []pipeline.RawRecord{
		{ThirdID: "\xff\xfe\x01\x1b[31m", OpenID: "\xc3\x28", Phone: "\x7f138", Groups: "\xe2\x82,\t\r\n"},
	}}},
	// Issue 11's classes: over-long stored identities and NUL, which once
	// failed in PostgreSQL (54000, 22021, 22P05).
	{name: "3000-char thirdId, isMatching=false", in: fuzzInput{params: seedNoMatch, records: []pipeline.RawRecord{
		{ThirdID: fuzzNoise(3000, 1), Groups: "vip"},
	}}},
	{name: "long unionid on a created customer", in: fuzzInput{params: seedNoMatch, records: []pipeline.RawRecord{
		{ThirdID: "fuzz-long-unionid", UnionID: fuzzNoise(3000, 2), Groups: "vip"},
	}}},
	{name: "long openid on a created customer", in: fuzzInput{params: pipeline.Params{OptType: pipeline.OptAdd, AppType: "gzh", AppID: "wx1"},
		records: []pipeline.RawRecord{{ThirdID: "fuzz-long-openid", OpenID: fuzzNoise(3000, 3), Groups: "vip"}}}},
	{name: "NUL in every field", in: fuzzInput{params: seedFuzzy, records: []pipeline.RawRecord{
		{IdentityType: "thirdId", ThirdID: "t\x00t", OpenID: "o\x00o", UnionID: "u\x00u", Phone: "138\x0000000000", Groups: "g\x00g"},
	}}},
	{name: "NUL in the thirdId of a record that is not applied", in: fuzzInput{params: seedExact, records: []pipeline.RawRecord{
		{IdentityType: "phone", ThirdID: "crm\x00-1", Phone: "13800000000", Groups: "vip"},
	}}},
}

// fuzzNoise is n printable characters that PostgreSQL cannot compress (a long
// run of one letter compresses under the index row limit and passes).
func fuzzNoise(n int, seed uint64) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	rng := rand.New(rand.NewPCG(seed, 11))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return string(b)
}

// fuzzPipeline is the database and directory of a fuzzing process.
type fuzzPipeline struct {
	db    *pgxpool.Pool
	dir   *PGStore
	store *sink.PGStore
}

func newFuzzPipeline(t testing.TB) *fuzzPipeline {
	t.Helper()
	db, _ := schematest.NewPool(t)
	var lines bytes.Buffer
	if err := matchertest.WriteBig(&lines, 0, fuzzDirectory); err != nil {
		t.Fatal(err)
	}
	p, err := directory.NewLoader(db).Load(context.Background(), fuzzTenant, &lines)
	if err != nil || len(p.Bad) > 0 {
		t.Fatalf("load directory: %v, bad lines %v", err, p.Bad)
	}
	return &fuzzPipeline{db: db, dir: NewPGStore(db), store: sink.NewPGStore(db)}
}

// run takes in through the stages as one new batch, and returns the first
// error of a stage (the finding), after checking that its text holds no
// identity value. Any other broken promise fails t.
func (fp *fuzzPipeline) run(t *testing.T, in fuzzInput) error {
	t.Helper()
	ctx := context.Background()
	var batchID int64
	if err := fp.db.QueryRow(ctx, `INSERT INTO batches (batch_id, tenant_id, appid, opt_type, params, status, total)
		VALUES (nextval('batch_id_seq'), $1, 'fuzz', $2, '{}', 'PROCESSING', $3) RETURNING batch_id`,
		fuzzTenant, string(in.params.OptType), len(in.records)).Scan(&batchID); err != nil {
		t.Fatalf("new batch: %v", err)
	}

	// Ingest → matcher: the records topic's codec, as the stages use it.
	items := make([]item, len(in.records))
	for i, raw := range in.records {
		v, err := pipeline.EncodeRecord(pipeline.RecordMessage{TenantID: fuzzTenant, BatchID: batchID, Index: i, Params: in.params, Record: raw})
		if err != nil {
			t.Fatalf("record %d: encode: %v", i, err)
		}
		rec, err := pipeline.DecodeRecord(v)
		if err != nil {
			t.Fatalf("record %d: its own encoding does not decode: %v", i, err)
		}
		items[i] = item{msg: rec, norm: Normalize(rec.Params, rec.Record)}
	}
	if err := resolveChunk(ctx, fp.dir, items, func(op func() error) error { return op() }); err != nil {
		return fp.finding(t, in, "resolve", err)
	}

	// Matcher → sink: every record has an outcome that survives the
	// resolved topic's codec.
	recs := make([]pipeline.ResolvedMessage, len(items))
	for i := range items {
		out := items[i].out
		if out.BatchID != batchID || out.Index != i || out.TenantID != fuzzTenant || out.Outcome == "" {
			t.Fatalf("record %d: no outcome of its own: batch %d index %d outcome %q", i, out.BatchID, out.Index, out.Outcome)
		}
		v, err := pipeline.EncodeResolved(out)
		if err != nil {
			t.Fatalf("record %d: encode verdict: %v", i, err)
		}
		if recs[i], err = pipeline.DecodeResolved(v); err != nil {
			t.Fatalf("record %d: the matcher's verdict (%s, %s) does not decode: %v", i, out.Outcome, out.Reason, err)
		}
	}
	res, err := fp.store.Apply(ctx, recs)
	if err != nil {
		return fp.finding(t, in, "apply", err)
	}

	// Counters add up, and the batch is final.
	n := len(recs)
	if res.Applied != n || res.Duplicates != 0 || res.Dropped != 0 || len(res.Orphans) != 0 {
		t.Fatalf("apply: %d of %d applied, %d duplicates, %d dropped, orphans %v", res.Applied, n, res.Duplicates, res.Dropped, res.Orphans)
	}
	total := 0
	for _, c := range res.Outcomes {
		total += c
	}
	if total != n || len(res.Finished) != 1 || res.Finished[0].BatchID != batchID {
		t.Fatalf("apply: outcomes %v (want %d records), finished %+v", res.Outcomes, n, res.Finished)
	}
	// Every record has its bit in the applied bitmap; every one that did
	// not apply (all but the successes), and only those, a ledger row.
	var processed, sum, success, bits, ledger int
	var status string
	if err := fp.db.QueryRow(ctx, `SELECT processed, success + unmatched + ambiguous + invalid + failed, success, status,
			bit_count(done), (SELECT count(*) FROM batch_records r WHERE r.tenant_id = $1 AND r.batch_id = b.batch_id)
		FROM batches b WHERE tenant_id = $1 AND batch_id = $2`, fuzzTenant, batchID).Scan(&processed, &sum, &success, &status, &bits, &ledger); err != nil {
		t.Fatalf("read batch: %v", err)
	}
	if processed != n || sum != n || bits != n || ledger != n-success || (status != "SUCCESS" && status != "PARTIAL_SUCCESS" && status != "FAILED") {
		t.Fatalf("batch of %d records: processed %d, outcomes %d, applied bits %d, ledger rows %d (success %d), status %s",
			n, processed, sum, bits, ledger, success, status)
	}

	// The failures page shows phone, openid and unionid masked: at most 7
	// characters of a value are kept, beside "****".
	rows, err := fp.db.Query(ctx, `SELECT rec_index, coalesce(ref->>'phone', ''), coalesce(ref->>'openid', ''), coalesce(ref->>'unionid', '')
		FROM batch_records WHERE tenant_id = $1 AND batch_id = $2 AND ref IS NOT NULL`, fuzzTenant, batchID)
	if err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	defer rows.Close()
	for rows.Next() {
		var i int
		var masked [3]string
		if err := rows.Scan(&i, &masked[0], &masked[1], &masked[2]); err != nil {
			t.Fatalf("read ledger: %v", err)
		}
		for k, m := range masked {
			if utf8.RuneCountInString(m) > 7+len("****") {
				t.Errorf("record %d: the ledger keeps %d characters of its %s: not masked", i, utf8.RuneCountInString(m), []string{"phone", "openid", "unionid"}[k])
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read ledger: %v", err)
	}
	return nil
}

// finding checks that a stage's error names no identity value of in, and
// returns it wrapped with the stage's name.
func (fp *fuzzPipeline) finding(t *testing.T, in fuzzInput, stage string, err error) error {
	t.Helper()
	msg := err.Error()
	for i, r := range in.records {
		for _, v := range []string{r.ThirdID, r.OpenID, r.UnionID, r.Phone} {
			// Short values (a digit, "id") may appear in any text by chance.
			if v = strings.TrimSpace(v); len(v) >= 6 && strings.Contains(msg, v) {
				t.Errorf("%s: the error text holds an identity value of record %d", stage, i)
			}
		}
	}
	return fmt.Errorf("%s: %w", stage, err)
}

func FuzzPipeline(f *testing.F) {
	for _, s := range pipelineSeeds {
		f.Add(encodeFuzzInput(s.in))
	}
	fp := newFuzzPipeline(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		in := decodeFuzzInput(data)
		if err := fp.run(t, in); err != nil {
			t.Fatal(err)
		}
	})
}

// The seeds pass through the encoding unchanged.
func TestFuzzInputEncoding(t *testing.T) {
	for _, s := range pipelineSeeds {
		got := decodeFuzzInput(encodeFuzzInput(s.in))
		if fmt.Sprint(got) != fmt.Sprint(s.in) {
			t.Errorf("%s: decoded as %+v", s.name, got)
		}
	}
}
