package directory

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/groupmatch/groupmatch/matcher/matchertest"
)

func TestLineReader(t *testing.T) {
	long := strings.Repeat("y", MaxLineBytes+1)
	tests := []struct {
		name string
		in   string
		want []string // "!" stands for a line reported too long
	}{
		{"empty", "", nil},
		{"one line without newline", "a", []string{"a"}},
		{"lines", "a\nb\n", []string{"a", "b"}},
		{"blank lines kept", "\n\na\n\n", []string{"", "", "a", ""}},
		{"crlf kept for the caller to trim", "a\r\nb", []string{"a\r", "b"}},
		{"longer than the buffer", strings.Repeat("x", 300<<10) + "\nb", []string{strings.Repeat("x", 300<<10), "b"}},
		{"exactly the limit", strings.Repeat("z", MaxLineBytes) + "\n", []string{strings.Repeat("z", MaxLineBytes)}},
		{"too long, then more", "a\n" + long + "\nb\n", []string{"a", "!", "b"}},
		{"too long at the end", long, []string{"!"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lr := newLineReader(strings.NewReader(tt.in))
			var got []string
			for {
				line, tooLong, err := lr.next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if tooLong {
					got = append(got, "!")
				} else {
					got = append(got, string(line))
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("lines %.40q, want %.40q", got, tt.want)
			}
			if lr.n != int64(len(tt.in)) {
				t.Errorf("consumed %d bytes, want %d", lr.n, len(tt.in))
			}
		})
	}
}

// referenceDecode is the decoding decodeLine replaces: encoding/json into a
// DirectoryLine.
func referenceDecode(line []byte) (DirectoryLine, error) {
	var d DirectoryLine
	err := json.Unmarshal(line, &d)
	return d, err
}

// sameLine compares decoded lines, an empty list equal to none.
func sameLine(a, b DirectoryLine) bool {
	return a.CustomerID == b.CustomerID && a.ThirdID == b.ThirdID && a.UnionID == b.UnionID &&
		slices.Equal(a.Phones, b.Phones) && slices.Equal(a.OpenIDs, b.OpenIDs)
}

// decodeLineDiffers reports how decodeLine and encoding/json disagree on
// line, "" when they agree or the line is one where they may (a member
// given twice; a name encoding/json folds beyond ASCII).
func decodeLineDiffers(line []byte) string {
	var got DirectoryLine
	err := decodeLine(line, &got)
	if err != nil && strings.Contains(err.Error(), "given twice") {
		return ""
	}
	lower := strings.ToLower(string(line))
	if strings.ContainsAny(string(line), "\u017f\u212a") || strings.Contains(lower, `\u017f`) || strings.Contains(lower, `\u212a`) {
		return ""
	}
	want, wantErr := referenceDecode(line)
	switch {
	case (err == nil) != (wantErr == nil):
		return fmt.Sprintf("decodeLine error %v, encoding/json error %v", err, wantErr)
	case err == nil && !sameLine(got, want):
		return fmt.Sprintf("decodeLine %+v, encoding/json %+v", got, want)
	}
	return ""
}

func TestDecodeLine(t *testing.T) {
	tests := []struct {
		line string
		want DirectoryLine
		err  string // part of the error; "" for none
	}{
		{`{"customerId": 1}`, DirectoryLine{CustomerID: 1}, ""},
		{`{"customerId":1,"thirdId":"crm-1","unionid":"u1","phones":["138","139"],"openids":[{"openid":"o1","appType":"gzh","appId":"wx1"}]}`,
			DirectoryLine{CustomerID: 1, ThirdID: "crm-1", UnionID: BoundIdentity{Value: "u1"},
				Phones: []BoundIdentity{{Value: "138"}, {Value: "139"}}, OpenIDs: []AppOpenID{{"o1", "gzh", "wx1"}}}, ""},
		{` { "CUSTOMERID" : 2 , "ThirdId" : null , "unionID" : {"UnionID": "u", "apptype": " gzh ", "APPID": "wx1", "x": [1, {"y": null}]} } `,
			DirectoryLine{CustomerID: 2, UnionID: BoundIdentity{"u", "gzh", "wx1"}}, ""},
		{`{"customerId": 3, "phones": [null, {"phone": "1", "unionid": "2"}, {"unionid": "3"}], "openids": [null, {}]}`,
			DirectoryLine{CustomerID: 3, Phones: []BoundIdentity{{}, {Value: "1"}, {Value: "3"}}, OpenIDs: []AppOpenID{{}, {}}}, ""},
		{`{"customerId": 4, "thirdId": "a\"b\\c\/d\u00e9\ud83d\ude00\ud800x\t"}`,
			DirectoryLine{CustomerID: 4, ThirdID: "a\"b\\c/dé😀\ufffdx\t"}, ""},
		{"{\"customerId\": 5, \"thirdId\": \"bad \xff utf8\"}", DirectoryLine{CustomerID: 5, ThirdID: "bad \ufffd utf8"}, ""},
		{`{"customerId": -0, "extra": [true, false, null, -1.5e+3, "s", {}, []]}`, DirectoryLine{}, ""},
		{`null`, DirectoryLine{}, ""},
		{`{"customerId": 6, "phones": null, "openids": null, "unionid": null}`, DirectoryLine{CustomerID: 6}, ""},

		{`{"customerId": 1.0}`, DirectoryLine{}, "field customerId has the wrong type"},
		{`{"customerId": 1e3}`, DirectoryLine{}, "field customerId has the wrong type"},
		{`{"customerId": 9223372036854775808}`, DirectoryLine{}, "field customerId has the wrong type"},
		{`{"customerId": "1"}`, DirectoryLine{}, "field customerId has the wrong type"},
		{`{"customerId": 1, "thirdId": 7}`, DirectoryLine{}, "field thirdId has the wrong type"},
		{`{"customerId": 1, "phones": "138"}`, DirectoryLine{}, "field phones has the wrong type"},
		{`{"customerId": 1, "phones": [7]}`, DirectoryLine{}, "field phones has the wrong type"},
		{`{"customerId": 1, "openids": ["o"]}`, DirectoryLine{}, "field openids has the wrong type"},
		{`{"customerId": 1, "unionid": {"appType": "gzh"}}`, DirectoryLine{}, "names no phone, unionid or email"},
		{`{"customerId": 1, "unionid": {"unionid": "u", "appId": "wx1"}}`, DirectoryLine{}, "appType and appId go together"},
		{`{"customerId": 1, "customerId": 2}`, DirectoryLine{}, "member customerId is given twice"},
		{`{"customerId": 1, "CustomerId": 2}`, DirectoryLine{}, "member customerId is given twice"},
		{`[1]`, DirectoryLine{}, "not a JSON object"},
		{`"x"`, DirectoryLine{}, "not a JSON object"},
		{`{"customerId": 1} {}`, DirectoryLine{}, "malformed JSON at byte 19"},
		{`{"customerId": 01}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1,}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1 "thirdId": "x"}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1, "thirdId": "x`, DirectoryLine{}, "malformed JSON"},
		{"{\"customerId\": 1, \"thirdId\": \"a\nb\"}", DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1, "thirdId": "\x"}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1, "thirdId": "\u12"}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1, "x": [tru]}`, DirectoryLine{}, "malformed JSON"},
		{`{"customerId": 1, "x": ` + strings.Repeat("[", 2000) + strings.Repeat("]", 2000) + `}`, DirectoryLine{}, "nested too deeply"},
		{``, DirectoryLine{}, "malformed JSON"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%.50s", tt.line), func(t *testing.T) {
			var got DirectoryLine
			err := decodeLine([]byte(tt.line), &got)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("error %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("error %v, want %q", err, tt.err)
			case tt.err == "" && !sameLine(got, tt.want):
				t.Errorf("decoded %+v, want %+v", got, tt.want)
			}
			if diff := decodeLineDiffers([]byte(tt.line)); diff != "" && !strings.Contains(tt.err, "nested") {
				t.Errorf("disagrees with encoding/json: %s", diff)
			}
		})
	}
}

func FuzzDecodeLine(f *testing.F) {
	for _, s := range []string{
		`{"customerId": 1, "thirdId": "crm-1", "unionid": {"unionid": "u", "appType": "gzh", "appId": "wx1"}, "phones": ["13800000000", {"phone": "1", "appType": "a", "appId": "b"}], "openids": [{"openid": "o", "appType": "gzh", "appId": "wx1"}]}`,
		`{"customerId": 2, "x": [1, 2.5e3, true, null, {"y": "\u00e9\ud83d\ude00"}]}`,
		`null`, `[1]`, `{"customerId": 1.0}`, `{"customerid": 3, "PHONES": null}`, "{\"thirdId\": \"\xff\"}",
		`{"customerId": 4, "emails": ["a@b.cn", {"email": "c@d.cn", "phone": "1", "appType": "x", "appId": "y"}, null], "EMAILS": []}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, line []byte) {
		if diff := decodeLineDiffers(line); diff != "" {
			t.Fatalf("%q: %s", line, diff)
		}
	})
}

func BenchmarkDecodeLine(b *testing.B) {
	var buf bytes.Buffer
	if err := matchertest.WriteBig(&buf, 0, 1000); err != nil {
		b.Fatal(err)
	}
	lines := bytes.Split(bytes.TrimSpace(buf.Bytes()), []byte("\n"))
	for _, dec := range []struct {
		name string
		f    func([]byte) error
	}{
		{"decodeLine", func(l []byte) error { var d DirectoryLine; return decodeLine(l, &d) }},
		{"encoding/json", func(l []byte) error { _, err := referenceDecode(l); return err }},
	} {
		b.Run(dec.name, func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := dec.f(lines[i%len(lines)]); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
