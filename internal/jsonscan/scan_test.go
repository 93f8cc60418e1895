package jsonscan

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// decodeAny reads one value with the Scanner into the form encoding/json
// gives it with UseNumber: map[string]any, []any, string, json.Number,
// bool or nil. A repeated member keeps the last value, as encoding/json.
func decodeAny(s *Scanner, depth int) (any, error) {
	switch c := s.Peek(); c {
	case '{', '[':
		if depth >= maxNesting {
			return nil, &Error{Offset: s.i, TooDeep: true}
		}
	}
	if depth%2 == 1 {
		// Odd levels read with the iterator form, even ones with callbacks.
		switch s.Peek() {
		case '{':
			m := map[string]any{}
			if err := s.BeginObject(); err != nil {
				return nil, err
			}
			for first := true; ; first = false {
				name, more, err := s.NextMember(first)
				if err != nil || !more {
					return m, err
				}
				key := string(name)
				v, err := decodeAny(s, depth+1)
				if err != nil {
					return nil, err
				}
				m[key] = v
			}
		case '[':
			a := []any{}
			if err := s.BeginArray(); err != nil {
				return nil, err
			}
			for first := true; ; first = false {
				more, err := s.NextElement(first)
				if err != nil || !more {
					return a, err
				}
				v, err := decodeAny(s, depth+1)
				if err != nil {
					return nil, err
				}
				a = append(a, v)
			}
		}
	}
	switch s.Peek() {
	case '{':
		m := map[string]any{}
		err := s.Object(func(name []byte) error {
			key := string(name)
			v, err := decodeAny(s, depth+1)
			m[key] = v
			return err
		})
		return m, err
	case '[':
		a := []any{}
		err := s.Array(func() error {
			v, err := decodeAny(s, depth+1)
			a = append(a, v)
			return err
		})
		return a, err
	case '"':
		v, err := s.Text()
		return string(v), err
	case 't', 'f':
		if v, ok := s.Bool(); ok {
			return v, nil
		}
	case 'n':
		if s.Literal("null") {
			return nil, nil
		}
	default:
		n, err := s.Number()
		return json.Number(n), err
	}
	return nil, s.syntax()
}

// referenceAny is encoding/json's reading of b.
func referenceAny(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := d.Token(); err == nil || !json.Valid(b) {
		return nil, errors.New("more after the value")
	}
	return v, nil
}

func scanAny(b []byte) (any, error) {
	s := New(b)
	v, err := decodeAny(&s, 0)
	if err != nil {
		return nil, err
	}
	return v, s.End()
}

// checkAgainstEncodingJSON fails t where the Scanner reads b differently
// from encoding/json.
func checkAgainstEncodingJSON(t *testing.T, b []byte) {
	t.Helper()
	if got, want := Valid(b), json.Valid(b); got != want {
		t.Fatalf("Valid(%q) = %v, json.Valid %v", b, got, want)
	}
	s := New(b)
	raw, err := s.Skip(maxNesting - 1)
	if err == nil {
		err = s.End()
	}
	if (err == nil) != json.Valid(b) {
		t.Fatalf("Skip(%q): %v, json.Valid %v", b, err, json.Valid(b))
	}
	if err == nil && !bytes.Equal(raw, bytes.TrimLeft(bytes.TrimRight(b, " \t\r\n"), " \t\r\n")) {
		t.Fatalf("Skip(%q) returned %q", b, raw)
	}
	var e *Error
	if err != nil && !errors.As(err, &e) {
		t.Fatalf("Skip(%q): error %T is not an *Error", b, err)
	}
	if e != nil && strings.Contains(e.Error(), string(b)) && len(b) > 3 {
		t.Fatalf("error %q quotes the input", e)
	}

	got, gerr := scanAny(b)
	want, werr := referenceAny(b)
	switch {
	case (gerr == nil) != (werr == nil):
		t.Fatalf("%.200q: scanner error %v, encoding/json error %v", b, gerr, werr)
	case gerr == nil && !reflect.DeepEqual(got, want):
		t.Fatalf("%.200q: scanner read %#v, encoding/json %#v", b, got, want)
	}

	if werr == nil {
		if n, ok := want.(json.Number); ok {
			for _, bits := range []int{8, 16, 32, 64} {
				checkParseInt(t, []byte(n), bits)
			}
		}
	}
}

func checkParseInt(t *testing.T, raw []byte, bits int) {
	t.Helper()
	var err error
	var want int64
	switch bits {
	case 8:
		var v int8
		err = json.Unmarshal(raw, &v)
		want = int64(v)
	case 16:
		var v int16
		err = json.Unmarshal(raw, &v)
		want = int64(v)
	case 32:
		var v int32
		err = json.Unmarshal(raw, &v)
		want = int64(v)
	default:
		err = json.Unmarshal(raw, &want)
	}
	got, ok := ParseInt(raw, bits)
	if ok != (err == nil) || ok && got != want {
		t.Fatalf("ParseInt(%s, %d) = %d, %v; json.Unmarshal %d, %v", raw, bits, got, ok, want, err)
	}
}

func TestAgainstEncodingJSON(t *testing.T) {
	for _, in := range []string{
		``, ` `, `null`, `true`, `false`, `nul`, `truex`, `0`, `-0`, `01`, `-`, `1.`, `1.5e+3`, `1e`, `.5`, `-01`,
		`9223372036854775807`, `9223372036854775808`, `-9223372036854775808`, `-9223372036854775809`,
		`127`, `128`, `-128`, `-129`, `32768`, `2147483648`, `1.0`, `1e3`,
		`""`, `"a"`, `"\u00e9\ud83d\ude00\ud800x"`, "\"\xff\"", `"\x"`, `"\u12"`, "\"a\nb\"", `"abc`, `"\"`,
		`{}`, `[]`, `{"a":1,"a":2}`, `{"a":1,}`, `[1,]`, `[1 2]`, `{"a" 1}`, `{1:2}`, `{"a":[1,{"b":null}],"c":"d"}`,
		` { "x" : [ true , false , null ] } `, `[}`, `{]`, `[[[]]]`, `{"a":{"b":{}}} x`, `1 2`, `"\/\b\f\n\r\t"`,
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
		strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100),
		strings.Repeat(`[{"a":`, 70) + "1" + strings.Repeat("}]", 70),
	} {
		t.Run(fmt.Sprintf("%.40s", in), func(t *testing.T) { checkAgainstEncodingJSON(t, []byte(in)) })
	}
}

func TestSkipDepth(t *testing.T) {
	for _, tt := range []struct {
		in       string
		maxDepth int
		tooDeep  bool
	}{
		{`1`, 0, false},
		{`[]`, 0, false},
		{`[1]`, 0, true},
		{`[1]`, 1, false},
		{`[[]]`, 1, false},
		{`[[1]]`, 1, true},
		{`{"a":{}}`, 1, false},
		{`{"a":{"b":1}}`, 1, true},
		{strings.Repeat("[", 200) + strings.Repeat("]", 200), 199, false},
		{strings.Repeat("[", 200) + "1" + strings.Repeat("]", 200), 199, true},
		// Depth is reported before a syntax error further on.
		{`[[1]` + `x`, 1, true},
	} {
		s := New([]byte(tt.in))
		_, err := s.Skip(tt.maxDepth)
		var e *Error
		deep := errors.As(err, &e) && e.TooDeep
		if deep != tt.tooDeep || !tt.tooDeep && err != nil {
			t.Errorf("Skip(%.30q, %d): %v, want too deep %v", tt.in, tt.maxDepth, err, tt.tooDeep)
		}
	}
}

func TestErrorOffsets(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want string
	}{
		{`{"a":1} {}`, "malformed JSON at byte 9"},
		{`{"a" 1}`, "malformed JSON at byte 6"},
		{`{"secret`, "malformed JSON at byte 9"},
		{`[1,]`, "malformed JSON at byte 4"},
	} {
		_, err := scanAny([]byte(tt.in))
		if err == nil || err.Error() != tt.want {
			t.Errorf("%q: error %v, want %q", tt.in, err, tt.want)
		}
	}
}

func TestStringAliasing(t *testing.T) {
	in := []byte(`"plain" "会员" "esc\n"`)
	s := New(in)
	a, _ := s.Text()
	if &a[0] != &in[1] {
		t.Error("a plain string was copied")
	}
	b, _ := s.Text()
	if string(b) != "会员" || &b[0] != &in[9] {
		t.Error("valid UTF-8 without escapes was copied")
	}
	c, err := s.Text()
	if err != nil || string(c) != "esc\n" {
		t.Errorf("escaped string: %q, %v", c, err)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		s := New(in)
		s.buf = make([]byte, 0, 16)
		for range 3 {
			if _, err := s.Text(); err != nil {
				t.Fatal(err)
			}
		}
	}); allocs > 1 {
		t.Errorf("reading three strings allocates %v times", allocs)
	}
}

func TestUnquote(t *testing.T) {
	for _, body := range []string{
		``, `plain`, `会员`, `\"\\\/\b\f\n\r\t`, `\u0041\u00e9\u4f1a`, `\u0000`,
		`\ud83d\ude00`, `\ud83d`, `\ude00`, `\ud83d\u0041`, `\ud83dx`, `\ud83d\ud83d\ude00`, `\uDBFF\uDFFF`,
		"\xff", "a\xc3", "\xed\xa0\x80", "\xf0\x9f\x98",
		// not string bodies
		`"`, "\x01", `\`, `\x`, `\u12`, `\u12g4`, `\ud83d\u12`, "a\tb",
	} {
		var want string
		jerr := json.Unmarshal([]byte(`"`+body+`"`), &want)
		got, ok := Unquote([]byte("prefix:"), []byte(body))
		switch {
		case ok != (jerr == nil):
			t.Errorf("Unquote(%q): ok=%v, encoding/json: %v", body, ok, jerr)
		case ok && string(got) != "prefix:"+want:
			t.Errorf("Unquote(%q) = %q, encoding/json reads %q", body, got[len("prefix:"):], want)
		}
		if ok {
			wantPaired := !strings.Contains(want, "\ufffd") || strings.Contains(body, `\ufffd`) || strings.ContainsAny(body, "\xff\xc3\xed\xf0")
			if !strings.ContainsAny(body, "\xff\xc3\xed\xf0") && SurrogatesPaired([]byte(body)) != wantPaired {
				t.Errorf("SurrogatesPaired(%q) = %v", body, !wantPaired)
			}
		}
	}
	if end := StringEnd([]byte(`"a\"b\\"c`), 1); end != 7 {
		t.Errorf("StringEnd = %d, want 7", end)
	}
	if end := StringEnd([]byte(`"abc\"`), 1); end != -1 {
		t.Errorf("StringEnd of an unterminated string = %d, want -1", end)
	}
}

func TestParseInt(t *testing.T) {
	for _, raw := range []string{"0", "-0", "1", "-1", "127", "128", "-128", "-129", "255", "32767", "32768",
		"2147483647", "2147483648", "-2147483648", "-2147483649",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
		"99999999999999999999", "1.0", "1e3", "-"} {
		for _, bits := range []int{8, 16, 32, 64} {
			checkParseInt(t, []byte(raw), bits)
		}
	}
	if n, ok := ParseInt([]byte(strconv.Itoa(math.MaxInt)), strconv.IntSize); !ok || n != math.MaxInt {
		t.Errorf("ParseInt(MaxInt) = %d, %v", n, ok)
	}
}

func TestParseIntegral(t *testing.T) {
	for _, tt := range []struct {
		raw  string
		want int64
		ok   bool
	}{
		{"1", 1, true}, {"1.0", 1, true}, {"10e-1", 1, true}, {"-0", 0, true}, {"0e999999999", 0, true},
		{"1.5", 0, false}, {"1e400", 0, false}, {`"1"`, 0, false}, {"true", 0, false},
		{"1.0000000000000000001", 0, false}, {"9223372036854775807", math.MaxInt64, true},
		{"9223372036854775808", 0, false}, {"-9223372036854775808", math.MinInt64, true},
		{"-92233720368547758.08e2", math.MinInt64, true}, {"12e1", 120, true},
	} {
		got, ok := ParseIntegral([]byte(tt.raw))
		if ok != tt.ok || got != tt.want {
			t.Errorf("ParseIntegral(%s) = %d, %v; want %d, %v", tt.raw, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEqualFoldASCII(t *testing.T) {
	for _, tt := range []struct {
		name, s string
		want    bool
	}{
		{"customerId", "customerId", true}, {"CUSTOMERID", "customerId", true}, {"customerid", "customerId", true},
		{"customerI", "customerId", false}, {"custome\u212a", "customek", false}, {"a_b", "A_B", true}, {"@", "`", false},
	} {
		if got := EqualFoldASCII([]byte(tt.name), tt.s); got != tt.want {
			t.Errorf("EqualFoldASCII(%q, %q) = %v", tt.name, tt.s, got)
		}
	}
}

// FuzzScan holds the Scanner to encoding/json: Valid to json.Valid, Skip
// to accepting what json.Valid accepts, a value read with Object, Array,
// String, Number and the literals to what json.Unmarshal reads, and
// ParseInt to json.Unmarshal into each integer size.
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		`{"customerId": 1, "thirdId": "crm-1", "phones": ["138", {"phone": "1"}], "x": [1, 2.5e3, true, null]}`,
		`"\u00e9\ud83d\ude00\ud800x"`, "\"\xff\"", `-0`, `9223372036854775808`, `[[[{}]]]`, `{"a":1,"a":2}`, `1 2`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		checkAgainstEncodingJSON(t, b)
	})
}
