package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/internal/jsonscan"
	"github.com/groupmatch/groupmatch/pipeline"
)

// Request is a validated batchAdd body.
type Request struct {
	// Params is publicParams after validation: OptType is "add" or
	// "delete"; MatchingType, IdentifyWay, AppType and AppID are zero where
	// they do not apply (see DecodeRequest).
	Params pipeline.Params
	// Records holds 1 to pipeline.MaxRecords records in request order, so
	// Records[i] is data[i]. Their fields are exactly as sent (JSON null
	// reads as ""); identity normalisation is the matcher's job.
	Records []pipeline.RawRecord
	// DeferGiven is true when publicParams.deferUnmatched was given (not
	// absent or null): Params.DeferUnmatched is then the caller's choice,
	// else the acceptance fills in the tenant's default (SPEC §13).
	DeferGiven bool `json:"deferUnmatchedGiven,omitempty"`
}

// RequestError says why a batchAdd body was rejected as a whole: the API
// answers HTTP 400, errorCode INVALID_PARAMETER, with Error() as msg.
//
// Field is the path of the offending part of the body: "body" (the body as a
// whole), "publicParams", "publicParams.matchingType", "data", "data[3]" or
// "data[3].phone" (indexes count from 0). Msg completes the sentence:
// Error() is Field + " " + Msg, e.g. "publicParams.identifyWay is required
// when matchingType=2". Neither ever contains a value the caller sent; they
// name only fields, allowed values, counts and byte offsets, so an error may
// be logged and returned as is.
type RequestError struct {
	Field string
	Msg   string
}

// Error returns Field + " " + Msg.
func (e *RequestError) Error() string { return e.Field + " " + e.Msg }

// Problems of a string value; each completes a RequestError.
const (
	msgNotString = "must be a string"
	msgNotUTF8   = "must be valid UTF-8 text"
	msgNUL       = "must not contain NUL characters"
	msgTwice     = "appears more than once"
)

// DecodeRequest decodes and validates a batchAdd body (SPEC §4). Every
// client mistake yields a *RequestError; no other error is returned.
//
// The body must be exactly one JSON object (white space around it and a
// leading UTF-8 byte order mark are allowed) holding:
//
//   - publicParams, an object:
//     isMatching (boolean) and optType ("add" or "delete" in any letter case,
//     surrounding white space ignored; returned in lower case) are required.
//     When isMatching is true, matchingType must be 1 (exact) or 2 (fuzzy),
//     and identifyWay must be 1 or 2 when matchingType is 2. When isMatching
//     is false, matchingType and identifyWay are ignored whatever they hold
//     and returned as 0, and so is identifyWay when matchingType is 1.
//     accurateMatchType and accurateMatchValue, when present and not null,
//     must be strings; trimmed of white space, an empty one counts as absent.
//     With matchingType 1 they are given both or neither; with matchingType
//     2 neither; with isMatching false both are kept (they bind created
//     identities to that application) and one alone is ignored. The type
//     must be one of pipeline.AppTypes, compared ignoring letter case and
//     returned in the listed spelling ("youzan" → "YOUZAN"); the value is
//     returned trimmed. Whenever the value is given (even where it would
//     be ignored) it must be at most pipeline.MaxAppIDLen characters (code
//     points) as sent, white space included, as JSON Schema's maxLength
//     counts; that is checked before the rules combining the two.
//     deferUnmatched, when present and not null, must be a boolean
//     (Request.DeferGiven says whether it was given).
//   - data, an array of 1 to pipeline.MaxRecords objects. A record's
//     members (pipeline.RawRecord.Members: identityType, thirdId, openid,
//     unionid, phone, email and groups) must each be
//     a string or null (null reads as ""). Whether a record is usable (a
//     known identityType, a usable identity, a valid phone, group names) is
//     judged per record later and never rejects the body here. The fields
//     of one record hold at most MaxRecordBytes bytes in all.
//
// Integers are JSON numbers without a fractional part whose value fits an
// int64: 1, 1.0 and 10e-1 are the integer 1; 1.5, 1e400, "1" and true are
// not integers. JSON null for any member means the member is absent.
//
// Members are matched by their exact, case-sensitive names (after decoding
// any escapes in them), as the platform's Java clients send them and unlike
// encoding/json's default, which folds case. Other members, at any level,
// are ignored whatever they hold, because the platform's clients send
// extras; a differently cased name such as "Phone" is such an other member.
//
// Duplicate names are rejected: a member of the top level, of publicParams or
// of a record that this function reads, given twice, is an error naming it
// ("data[2].phone appears more than once"), because in an import request
// taking the first or the last silently could add or delete the wrong
// customers. Ignored members may repeat.
//
// Text is checked, as encoding/json would silently replace what it cannot
// represent: a string member that is read must be valid UTF-8, hold no
// unpaired surrogate escape (\ud800) and no NUL character (\u0000, which
// PostgreSQL cannot store); invalid UTF-8 anywhere else in the body is an
// error naming "body".
//
// Cost is linear in len(body), with a stack that does not grow with
// nesting: a body whose top level is not an object is rejected on its first
// byte, and values nested deeper than encoding/json's limit of 10000 levels
// are rejected as invalid JSON. The caller bounds len(body) (the HTTP API
// allows 1 MiB). The Request returned shares no memory with body, and
// concurrent calls share nothing.
//
// When a body has several problems, the one reported is the first of: the
// body is empty or its top level is not an object; it is not valid JSON
// ("is not valid JSON near byte N", N counting the bytes up to and including
// the first wrong one) or has more after the object; the first problem met
// reading the body in order (publicParams is checked when its object has
// been read, in the order listed above); publicParams missing; data missing;
// invalid UTF-8 outside the members read.
func DecodeRequest(body []byte) (Request, error) {
	d := decoder{utf8OK: utf8.Valid(body)}
	if len(body) >= len(utf8BOM) && string(body[:len(utf8BOM)]) == utf8BOM {
		body, d.offset = body[len(utf8BOM):], int64(len(utf8BOM))
	}
	d.b, d.s = body, jsonscan.New(body)
	req, rerr := d.request()
	if rerr != nil {
		return Request{}, rerr
	}
	for i, r := range req.Records {
		size := 0
		for _, m := range r.Members() {
			size += len(*m.Value)
		}
		if size > MaxRecordBytes {
			return Request{}, &RequestError{fmt.Sprintf("data[%d]", i), fmt.Sprintf("holds more than %d bytes of text", MaxRecordBytes)}
		}
	}
	return req, nil
}

// MaxRecordBytes bounds the text of one record, so that every record fits
// one Kafka message under the brokers' default 1 MB limit with room to spare.
const MaxRecordBytes = 64 << 10

// utf8BOM is the byte order mark some Windows clients put before a body;
// RFC 8259 allows a parser to ignore it, and so does DecodeRequest.
const utf8BOM = "\ufeff"

// decoder holds the state of one DecodeRequest call; it is not shared.
//
// encoding/json's grammar and nesting limit are checked for the whole body
// first (jsonscan.Valid, held equal to json.Valid by its fuzz test); the
// decoder then walks the body, known to be valid JSON, with a
// jsonscan.Scanner and no recursion. Walking costs one pass and allocates
// only the strings it returns, where a json.Decoder reading value by value
// costs several times as much.
type decoder struct {
	b      []byte           // the body without a BOM; valid JSON once request has checked it
	s      jsonscan.Scanner // reads b
	offset int64            // of b in the caller's body
	utf8OK bool             // the whole body is valid UTF-8
	// Last decoded identityType and groups: most batches repeat them, so
	// equal values share one string instead of allocating each.
	lastIdentityType, lastGroups string
	deferGiven                   bool // publicParams.deferUnmatched was given
}

func (d *decoder) request() (Request, *RequestError) {
	switch c := d.s.Peek(); {
	case d.s.Offset() == len(d.b):
		return Request{}, &RequestError{"body", "is empty"}
	case c != '{':
		// Decided on the first byte, however long or deep the rest is.
		return Request{}, &RequestError{"body", "must be a JSON object"}
	case !jsonscan.Valid(d.b):
		return Request{}, d.syntaxError()
	}
	var (
		req                  Request
		seenParams, seenData bool // the name was met
		hasParams, hasData   bool // ... with a value other than null
		rerr                 *RequestError
	)
	if d.s.BeginObject() != nil {
		return Request{}, errWalk()
	}
	for first := true; ; first = false {
		key, more, err := d.s.NextMember(first)
		if err != nil {
			return Request{}, errWalk()
		}
		if !more {
			break
		}
		switch string(key) {
		case "publicParams":
			if seenParams {
				return Request{}, &RequestError{"publicParams", msgTwice}
			}
			seenParams = true
			req.Params, hasParams, rerr = d.params()
		case "data":
			if seenData {
				return Request{}, &RequestError{"data", msgTwice}
			}
			seenData = true
			req.Records, hasData, rerr = d.records()
		default:
			_, rerr = d.value()
		}
		if rerr != nil {
			return Request{}, rerr
		}
	}
	switch {
	case !hasParams:
		return Request{}, &RequestError{"publicParams", "is required"}
	case !hasData:
		return Request{}, &RequestError{"data", "is required"}
	case !d.utf8OK:
		return Request{}, &RequestError{"body", "is not valid UTF-8"}
	}
	req.DeferGiven = d.deferGiven
	return req, nil
}

// syntaxError says why d.b, which starts with '{', is not valid JSON. Only
// an offset is kept: encoding/json's messages may quote the caller's bytes.
func (d *decoder) syntaxError() *RequestError {
	// A Decoder reading one value tells a truncated body from a syntax
	// error (with the count of bytes read up to and including the bad one)
	// and from a complete object followed by more.
	dec := json.NewDecoder(bytes.NewReader(d.b))
	var skip struct{}
	err := dec.Decode(&skip)
	var se *json.SyntaxError
	switch {
	case err == nil:
		return &RequestError{"body", "has data after the JSON object"}
	case errors.As(err, &se):
		return &RequestError{"body", fmt.Sprintf("is not valid JSON near byte %d", d.offset+se.Offset)}
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return &RequestError{"body", "is not valid JSON: it ends too early"}
	default:
		return &RequestError{"body", "is not valid JSON"}
	}
}

// errWalk is what the walk reports if the Scanner finds the body invalid
// after jsonscan.Valid accepted it, which cannot happen.
func errWalk() *RequestError { return &RequestError{"body", "is not valid JSON"} }

// value reads the next value, whatever it is, and returns it without the
// white space around it. The body is valid JSON, so its nesting is within
// encoding/json's limit; the Scanner skips nested values without recursion.
func (d *decoder) value() ([]byte, *RequestError) {
	raw, err := d.s.Skip(math.MaxInt)
	if err != nil {
		return nil, errWalk()
	}
	return raw, nil
}

// The members of publicParams that are read, as indexes of paramValues.
const (
	pIsMatching = iota
	pMatchingType
	pIdentifyWay
	pAppType
	pAppID
	pOptType
	pDeferUnmatched
	nParams
)

// paramName returns the name of publicParams member i.
func paramName(i int) string {
	switch i {
	case pIsMatching:
		return "isMatching"
	case pMatchingType:
		return "matchingType"
	case pIdentifyWay:
		return "identifyWay"
	case pAppType:
		return "accurateMatchType"
	case pAppID:
		return "accurateMatchValue"
	case pOptType:
		return "optType"
	case pDeferUnmatched:
		return "deferUnmatched"
	}
	return ""
}

// paramValues holds publicParams' members as sent (slices of the body); nil
// means not given.
type paramValues [nParams][]byte

func paramErr(i int, msg string) *RequestError {
	return &RequestError{"publicParams." + paramName(i), msg}
}

// params reads publicParams; ok is false when it is null.
func (d *decoder) params() (p pipeline.Params, ok bool, rerr *RequestError) {
	switch d.s.Peek() {
	case '{':
	case 'n':
		_, rerr = d.value()
		return p, false, rerr
	default:
		return p, false, &RequestError{"publicParams", "must be an object"}
	}
	if d.s.BeginObject() != nil {
		return p, false, errWalk()
	}
	var v paramValues
	for first := true; ; first = false {
		key, more, err := d.s.NextMember(first)
		if err != nil {
			return p, false, errWalk()
		}
		if !more {
			break
		}
		i := paramIndex(key)
		value, rerr := d.value()
		if rerr != nil {
			return p, false, rerr
		}
		if i < 0 {
			continue
		}
		if v[i] != nil {
			return p, false, paramErr(i, msgTwice)
		}
		v[i] = value
	}
	p, rerr = d.validateParams(&v)
	return p, rerr == nil, rerr
}

// deferGiven reads publicParams.deferUnmatched (optional; a JSON boolean):
// whether it was given, and its value.
func deferGiven(v *paramValues) (given, value bool, rerr *RequestError) {
	switch raw := v[pDeferUnmatched]; {
	case isAbsent(raw):
		return false, false, nil
	case string(raw) == "true":
		return true, true, nil
	case string(raw) == "false":
		return true, false, nil
	}
	return false, false, paramErr(pDeferUnmatched, "must be a boolean")
}

// paramIndex returns the index of the publicParams member named key, or -1.
func paramIndex(key []byte) int {
	for i := range nParams {
		if string(key) == paramName(i) {
			return i
		}
	}
	return -1
}

func (d *decoder) validateParams(v *paramValues) (pipeline.Params, *RequestError) {
	var p pipeline.Params
	switch raw := v[pIsMatching]; {
	case isAbsent(raw):
		return p, paramErr(pIsMatching, "is required")
	case string(raw) == "true":
		p.IsMatching = true
	case string(raw) != "false":
		return p, paramErr(pIsMatching, "must be a boolean")
	}

	if p.IsMatching {
		mt, rerr := requiredOneOrTwo(v, pMatchingType, "is required when isMatching=true")
		if rerr != nil {
			return p, rerr
		}
		p.MatchingType = mt
		if mt == pipeline.MatchingFuzzy {
			iw, rerr := requiredOneOrTwo(v, pIdentifyWay, "is required when matchingType=2")
			if rerr != nil {
				return p, rerr
			}
			p.IdentifyWay = iw
		}
	}

	appType, rerr := d.paramText(v, pAppType)
	if rerr != nil {
		return p, rerr
	}
	appID, rerr := d.paramText(v, pAppID)
	if rerr != nil {
		return p, rerr
	}
	if utf8.RuneCountInString(appID) > pipeline.MaxAppIDLen {
		return p, paramErr(pAppID, fmt.Sprintf("must be at most %d characters", pipeline.MaxAppIDLen))
	}
	appType, appID = strings.TrimSpace(appType), strings.TrimSpace(appID)
	switch {
	case appType == "" && appID == "":
	case p.MatchingType == pipeline.MatchingFuzzy:
		i := pAppType
		if appType == "" {
			i = pAppID
		}
		return p, paramErr(i, "is only allowed when matchingType=1")
	case appType == "" || appID == "":
		if !p.IsMatching {
			break // one alone binds nothing; ignored
		}
		if appID == "" {
			return p, paramErr(pAppID, "is required when accurateMatchType is given")
		}
		return p, paramErr(pAppType, "is required when accurateMatchValue is given")
	default:
		canonical := canonicalAppType(appType)
		if canonical == "" {
			return p, paramErr(pAppType, "must be one of "+strings.Join(pipeline.AppTypes, ", "))
		}
		p.AppType, p.AppID = canonical, appID
	}

	opt, rerr := d.paramText(v, pOptType)
	if rerr != nil {
		return p, rerr
	}
	switch opt = strings.TrimSpace(opt); {
	case isAbsent(v[pOptType]):
		return p, paramErr(pOptType, "is required")
	case strings.EqualFold(opt, string(pipeline.OptAdd)):
		p.OptType = pipeline.OptAdd
	case strings.EqualFold(opt, string(pipeline.OptDelete)):
		p.OptType = pipeline.OptDelete
	default:
		return p, paramErr(pOptType, `must be "add" or "delete"`)
	}
	d.deferGiven, p.DeferUnmatched, rerr = deferGiven(v)
	return p, rerr
}

// requiredOneOrTwo reads publicParams member i, which must be the integer 1
// or 2; missing is the message when it is absent.
func requiredOneOrTwo(v *paramValues, i int, missing string) (int, *RequestError) {
	raw := v[i]
	if isAbsent(raw) {
		return 0, paramErr(i, missing)
	}
	n, ok := jsonscan.ParseIntegral(raw)
	if !ok {
		return 0, paramErr(i, "must be an integer")
	}
	if n != 1 && n != 2 {
		return 0, paramErr(i, "must be 1 or 2")
	}
	return int(n), nil
}

// paramText reads publicParams member i as text; absent reads as "".
func (d *decoder) paramText(v *paramValues, i int) (string, *RequestError) {
	if isAbsent(v[i]) {
		return "", nil
	}
	s, problem := d.text(v[i], nil)
	if problem != "" {
		return "", paramErr(i, problem)
	}
	return s, nil
}

func canonicalAppType(s string) string {
	for _, t := range pipeline.AppTypes {
		if strings.EqualFold(s, t) {
			return t
		}
	}
	return ""
}

// records reads data; ok is false when it is null.
func (d *decoder) records() (recs []pipeline.RawRecord, ok bool, rerr *RequestError) {
	switch d.s.Peek() {
	case '[':
	case 'n':
		_, rerr = d.value()
		return nil, false, rerr
	default:
		return nil, false, &RequestError{"data", "must be an array"}
	}
	if d.s.BeginArray() != nil {
		return nil, false, errWalk()
	}
	n := 0
	for ; ; n++ {
		more, err := d.s.NextElement(n == 0)
		if err != nil {
			return nil, false, errWalk()
		}
		if !more {
			break
		}
		if n >= pipeline.MaxRecords {
			// Too many: only count the rest, for the message.
			if _, rerr := d.value(); rerr != nil {
				return nil, false, rerr
			}
			continue
		}
		rec, rerr := d.record(n)
		if rerr != nil {
			return nil, false, rerr
		}
		recs = append(recs, rec)
	}
	if n == 0 || n > pipeline.MaxRecords {
		return nil, false, &RequestError{"data", fmt.Sprintf("must hold 1 to %d records, got %d", pipeline.MaxRecords, n)}
	}
	return recs, true, nil
}

// record reads data[i]; the cursor is at its first byte.
func (d *decoder) record(i int) (pipeline.RawRecord, *RequestError) {
	var rec pipeline.RawRecord
	if d.s.Peek() != '{' {
		return rec, &RequestError{fmt.Sprintf("data[%d]", i), "must be an object"}
	}
	if d.s.BeginObject() != nil {
		return rec, errWalk()
	}
	var seen uint16 // one bit per member read
	members := rec.Members()
	for first := true; ; first = false {
		key, more, err := d.s.NextMember(first)
		if err != nil {
			return rec, errWalk()
		}
		if !more {
			return rec, nil
		}
		var (
			dst   *string
			at    int
			bit   uint16
			cache *string
		)
		if j := pipeline.MemberIndex(key); j >= 0 {
			dst, at, bit = members[j].Value, j, 1<<j
		}
		switch dst {
		case &rec.IdentityType:
			cache = &d.lastIdentityType
		case &rec.Groups:
			cache = &d.lastGroups
		}
		raw, rerr := d.value()
		switch {
		case rerr != nil:
			return rec, rerr
		case dst == nil:
			continue
		case seen&bit != 0:
			return rec, &RequestError{fmt.Sprintf("data[%d].%s", i, memberName(at)), msgTwice}
		}
		seen |= bit
		if isAbsent(raw) {
			continue
		}
		s, problem := d.text(raw, cache)
		if problem != "" {
			return rec, &RequestError{fmt.Sprintf("data[%d].%s", i, memberName(at)), problem}
		}
		*dst = s
	}
}

// memberName returns the name of a record's member i (error paths only:
// taking it from the decoding loop's members would move the record to the
// heap).
func memberName(i int) string {
	var r pipeline.RawRecord
	return r.Members()[i].Name
}

// isAbsent reports whether a member value stands for "not given": missing
// (nil) or JSON null. raw is one JSON value without surrounding space.
func isAbsent(raw []byte) bool {
	return raw == nil || string(raw) == "null"
}

// text decodes raw, one complete JSON value, as a string. problem is
// non-empty when raw is not a string or not clean text (see DecodeRequest).
// When cache is not nil and the value equals *cache, *cache is returned
// instead of a new string, and *cache becomes the value.
func (d *decoder) text(raw []byte, cache *string) (s, problem string) {
	if len(raw) < 2 || raw[0] != '"' {
		return "", msgNotString
	}
	inner := raw[1 : len(raw)-1]
	if !d.utf8OK && !utf8.Valid(inner) {
		return "", msgNotUTF8
	}
	if bytes.IndexByte(inner, '\\') < 0 {
		// No escapes: the bytes are the text, and cannot hold NUL or
		// another control character (the JSON scanner rejects those).
		if cache != nil {
			if *cache == string(inner) {
				return *cache, ""
			}
			*cache = string(inner)
			return *cache, ""
		}
		return string(inner), ""
	}
	if !jsonscan.SurrogatesPaired(inner) {
		return "", msgNotUTF8
	}
	text, _ := jsonscan.Unquote(nil, inner) // cannot fail: raw is a valid JSON string
	if bytes.IndexByte(text, 0) >= 0 {
		return "", msgNUL
	}
	return string(text), ""
}
