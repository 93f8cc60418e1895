package directory

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/groupmatch/groupmatch/internal/jsonscan"
)

// MaxLineBytes is the longest directory line the loader reads; a longer one
// is reported as bad and skipped.
const MaxLineBytes = 4 << 20

// DirectoryLine is one JSON line of a directory file (SPEC §9). The loader
// reads lines with its own parser, decodeLine; the type decodes the same
// way with encoding/json (FuzzDecodeLine holds the two to it).
type DirectoryLine struct {
	CustomerID int64           `json:"customerId"`
	ThirdID    string          `json:"thirdId"`
	UnionID    BoundIdentity   `json:"unionid"`
	Phones     []BoundIdentity `json:"phones"`
	OpenIDs    []AppOpenID     `json:"openids"`
	Emails     []BoundIdentity `json:"emails"`
}

// BoundIdentity is a phone, unionid or email, given either as a plain
// string or as {"phone"|"unionid"|"email": "…", "appType": "…", "appId":
// "…"}, binding it to the application it came through.
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
		Email   *string `json:"email"`
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
	case o.Email != nil:
		b.Value = *o.Email
	default:
		return lineProblem("an identity object names no phone, unionid or email")
	}
	b.AppType, b.AppID = strings.TrimSpace(o.AppType), strings.TrimSpace(o.AppID)
	if (b.AppType == "") != (b.AppID == "") {
		return lineProblem("an identity's appType and appId go together")
	}
	return nil
}

// lineProblem is what is wrong with a directory line, in words that name
// fields and never values.
type lineProblem string

func (p lineProblem) Error() string { return string(p) }

// AppOpenID is an openid with the application that issued it.
type AppOpenID struct {
	OpenID  string `json:"openid"`
	AppType string `json:"appType"`
	AppID   string `json:"appId"`
}

// LineError is a bad directory line; the load skips it and goes on. Err
// names the problem and the field, never a value of the line.
type LineError struct {
	Line int // counted from 1
	Err  error
}

func (e LineError) Error() string { return fmt.Sprintf("line %d: %v", e.Line, e.Err) }

// lineReader splits its input into lines of at most MaxLineBytes and
// counts the bytes it consumed.
type lineReader struct {
	br   *bufio.Reader
	long []byte // a line longer than the buffer, being assembled
	n    int64  // bytes consumed
}

func newLineReader(r io.Reader) *lineReader {
	return &lineReader{br: bufio.NewReaderSize(r, 256<<10)}
}

// next returns the next line without its end of line; the slice is valid
// until the next call. tooLong reports a line longer than MaxLineBytes,
// whose bytes are dropped. At the end of the input it returns io.EOF (a last
// line without a newline is returned first).
func (lr *lineReader) next() (line []byte, tooLong bool, err error) {
	lr.long = lr.long[:0]
	for {
		frag, err := lr.br.ReadSlice('\n')
		lr.n += int64(len(frag))
		switch {
		case err == bufio.ErrBufferFull:
			if !tooLong && len(lr.long)+len(frag) <= MaxLineBytes {
				lr.long = append(lr.long, frag...)
			} else {
				tooLong, lr.long = true, lr.long[:0]
			}
			continue
		case err == io.EOF && len(frag) == 0 && len(lr.long) == 0 && !tooLong:
			return nil, false, io.EOF
		case err != nil && err != io.EOF:
			return nil, false, err
		}
		frag = bytes.TrimSuffix(frag, []byte{'\n'})
		if len(lr.long) > 0 || tooLong {
			if !tooLong && len(lr.long)+len(frag) <= MaxLineBytes {
				return append(lr.long, frag...), false, nil
			}
			return nil, true, nil
		}
		if len(frag) > MaxLineBytes {
			return nil, true, nil
		}
		return frag, false, nil
	}
}

// decodeLine parses a directory line into d as json.Unmarshal would (see
// DirectoryLine and BoundIdentity), five to ten times faster, with two
// differences: member names match exactly or ignoring ASCII letter case
// (encoding/json also folds the Kelvin sign and the long s), and a member
// the line gives twice is an error rather than a quiet merge. Unknown
// members are skipped, whatever valid JSON they hold; invalid UTF-8 in a
// string reads as U+FFFD. Errors are lineProblems that name fields, never
// values.
func decodeLine(line []byte, d *DirectoryLine) error {
	p := lineParser{s: jsonscan.New(line)}
	err := p.line(d)
	if err == nil {
		return nil
	}
	if se := (*jsonscan.Error)(nil); errors.As(err, &se) {
		return lineProblem(se.Error()) // an offset, or "nested too deeply"
	}
	return err
}

// line reads a whole line into d.
func (p *lineParser) line(d *DirectoryLine) error {
	if p.s.Literal("null") {
		// json.Unmarshal leaves d as it was.
		return p.s.End()
	}
	if p.s.Peek() != '{' {
		if err := p.skipValue(0); err != nil {
			return err
		}
		return lineProblem("not a JSON object")
	}
	var seen uint8
	err := p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "customerId", "thirdId", "unionid", "phones", "openids", "emails")
		if err != nil || bit < 0 {
			if err != nil {
				return err
			}
			return p.skipValue(1)
		}
		switch bit {
		case 0:
			return p.int64Field(&d.CustomerID, "customerId")
		case 1:
			return p.stringField(&d.ThirdID, "thirdId")
		case 2:
			return p.bound(&d.UnionID, "unionid")
		case 3:
			return p.array("phones", func() error {
				d.Phones = append(d.Phones, BoundIdentity{})
				return p.bound(&d.Phones[len(d.Phones)-1], "phones")
			}, func() { d.Phones = nil })
		case 4:
			return p.array("openids", func() error {
				d.OpenIDs = append(d.OpenIDs, AppOpenID{})
				return p.openID(&d.OpenIDs[len(d.OpenIDs)-1])
			}, func() { d.OpenIDs = nil })
		default:
			return p.array("emails", func() error {
				d.Emails = append(d.Emails, BoundIdentity{})
				return p.bound(&d.Emails[len(d.Emails)-1], "emails")
			}, func() { d.Emails = nil })
		}
	})
	if err != nil {
		return err
	}
	return p.s.End()
}

// memberBit returns the index of name among names, ignoring ASCII case, or
// -1; a name seen before (recorded in seen) is an error.
func memberBit(name []byte, seen *uint8, names ...string) (int, error) {
	for i, n := range names {
		if jsonscan.EqualFoldASCII(name, n) {
			if *seen&(1<<i) != 0 {
				return -1, lineProblem("member " + n + " is given twice")
			}
			*seen |= 1 << i
			return i, nil
		}
	}
	return -1, nil
}

// lineParser fills a DirectoryLine from the JSON a jsonscan.Scanner reads.
type lineParser struct {
	s jsonscan.Scanner
}

// maxLineDepth bounds the nesting of skipped values.
const maxLineDepth = 1000

func wrongType(field string) error { return lineProblem("field " + field + " has the wrong type") }

// array reads null (calling null) or an array, calling elem before each
// element.
func (p *lineParser) array(field string, elem func() error, null func()) error {
	if p.s.Literal("null") {
		null()
		return nil
	}
	if p.s.Peek() != '[' {
		return p.typeErrorAfterSkip(field)
	}
	return p.s.Array(elem)
}

// typeErrorAfterSkip reports a value of the wrong type for field, or a
// syntax error if the value is not JSON at all.
func (p *lineParser) typeErrorAfterSkip(field string) error {
	if err := p.skipValue(1); err != nil {
		return err
	}
	return wrongType(field)
}

// stringField reads a string or null (which leaves *dst alone).
func (p *lineParser) stringField(dst *string, field string) error {
	switch {
	case p.s.Literal("null"):
		return nil
	case p.s.Peek() != '"':
		return p.typeErrorAfterSkip(field)
	}
	s, err := p.s.Text()
	if err != nil {
		return err
	}
	*dst = string(s)
	return nil
}

// optString reads a string or null (which sets *dst to nil).
func (p *lineParser) optString(dst **string, field string) error {
	if p.s.Literal("null") {
		*dst = nil
		return nil
	}
	var s string
	if err := p.stringField(&s, field); err != nil {
		return err
	}
	*dst = &s
	return nil
}

// int64Field reads an integer that fits an int64, or null.
func (p *lineParser) int64Field(dst *int64, field string) error {
	if p.s.Literal("null") {
		return nil
	}
	c := p.s.Peek()
	if c != '-' && (c < '0' || c > '9') {
		return p.typeErrorAfterSkip(field)
	}
	raw, err := p.s.Number()
	if err != nil {
		return err
	}
	n, ok := jsonscan.ParseInt(raw, 64)
	if !ok { // a fraction, an exponent or out of range
		return wrongType(field)
	}
	*dst = n
	return nil
}

// bound reads a BoundIdentity: a string, null or an object.
func (p *lineParser) bound(dst *BoundIdentity, field string) error {
	switch p.s.Peek() {
	case '"':
		return p.stringField(&dst.Value, field)
	case '{':
	default:
		if p.s.Literal("null") {
			return nil
		}
		return p.typeErrorAfterSkip(field)
	}
	var phone, union, email *string
	var appType, appID string
	var seen uint8
	err := p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "phone", "unionid", "appType", "appId", "email")
		switch {
		case err != nil:
			return err
		case bit == 0:
			return p.optString(&phone, field)
		case bit == 1:
			return p.optString(&union, field)
		case bit == 2:
			return p.stringField(&appType, field)
		case bit == 3:
			return p.stringField(&appID, field)
		case bit == 4:
			return p.optString(&email, field)
		}
		return p.skipValue(2)
	})
	if err != nil {
		return err
	}
	switch {
	case phone != nil:
		dst.Value = *phone
	case union != nil:
		dst.Value = *union
	case email != nil:
		dst.Value = *email
	default:
		return lineProblem("an identity object names no phone, unionid or email")
	}
	dst.AppType, dst.AppID = strings.TrimSpace(appType), strings.TrimSpace(appID)
	if (dst.AppType == "") != (dst.AppID == "") {
		return lineProblem("an identity's appType and appId go together")
	}
	return nil
}

// openID reads an AppOpenID: an object or null.
func (p *lineParser) openID(dst *AppOpenID) error {
	if p.s.Literal("null") {
		return nil
	}
	if p.s.Peek() != '{' {
		return p.typeErrorAfterSkip("openids")
	}
	var seen uint8
	return p.s.Object(func(name []byte) error {
		bit, err := memberBit(name, &seen, "openid", "appType", "appId")
		switch {
		case err != nil:
			return err
		case bit == 0:
			return p.stringField(&dst.OpenID, "openids.openid")
		case bit == 1:
			return p.stringField(&dst.AppType, "openids.appType")
		case bit == 2:
			return p.stringField(&dst.AppID, "openids.appId")
		}
		return p.skipValue(2)
	})
}

// skipValue consumes any JSON value found depth levels down in the line;
// no value in the line may be more than maxLineDepth levels down.
func (p *lineParser) skipValue(depth int) error {
	_, err := p.s.Skip(maxLineDepth - depth)
	return err
}
