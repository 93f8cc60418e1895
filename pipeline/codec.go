package pipeline

import (
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// The records and resolved messages are the two values every record passes
// through twice (encode and decode), and encoding/json's reflection cost
// about a third of the matcher's and the sink's CPU. This file writes them
// by hand and reads them on a fast path:
//
//   - append* writes exactly the bytes json.Marshal writes for the value
//     (same field order, omitempty, HTML-safe string escapes); a fuzz test
//     holds them equal.
//   - fast* reads the form those encoders write, allowing whitespace, any
//     field order and any string (read by AppendJSONString), and declines
//     (ok=false) anything else: unknown or differently cased keys, repeated
//     keys, null, numbers that are not plain integers. A declined value is
//     decoded by encoding/json, so the accepted language and its meaning
//     are encoding/json's; a fuzz test holds the fast path to agreeing with
//     it on everything it accepts.

// appendRecord appends the JSON of m, as json.Marshal writes it.
func appendRecord(b []byte, m *RecordMessage) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(m.V), 10)
	b = append(b, `,"tenantId":`...)
	b = strconv.AppendInt(b, m.TenantID, 10)
	b = append(b, `,"batchId":`...)
	b = strconv.AppendInt(b, m.BatchID, 10)
	b = append(b, `,"index":`...)
	b = strconv.AppendInt(b, int64(m.Index), 10)
	p := &m.Params
	b = append(b, `,"params":{"isMatching":`...)
	b = strconv.AppendBool(b, p.IsMatching)
	if p.MatchingType != 0 {
		b = append(b, `,"matchingType":`...)
		b = strconv.AppendInt(b, int64(p.MatchingType), 10)
	}
	if p.IdentifyWay != 0 {
		b = append(b, `,"identifyWay":`...)
		b = strconv.AppendInt(b, int64(p.IdentifyWay), 10)
	}
	b = appendOptString(b, `,"accurateMatchType":`, p.AppType)
	b = appendOptString(b, `,"accurateMatchValue":`, p.AppID)
	b = append(b, `,"optType":`...)
	b = appendString(b, string(p.OptType))
	if p.DeferUnmatched {
		b = append(b, `,"deferUnmatched":true`...)
	}
	b = append(b, `},"record":{`...)
	r := &m.Record
	n := len(b)
	b = appendOptString(b, `,"identityType":`, r.IdentityType)
	b = appendOptString(b, `,"thirdId":`, r.ThirdID)
	b = appendOptString(b, `,"openid":`, r.OpenID)
	b = appendOptString(b, `,"unionid":`, r.UnionID)
	b = appendOptString(b, `,"phone":`, r.Phone)
	b = appendOptString(b, `,"groups":`, r.Groups)
	if len(b) > n {
		b = append(b[:n], b[n+1:]...) // the first field's comma
	}
	return append(b, `}}`...)
}

// appendResolved appends the JSON of m, as json.Marshal writes it.
func appendResolved(b []byte, m *ResolvedMessage) []byte {
	b = append(b, `{"v":`...)
	b = strconv.AppendInt(b, int64(m.V), 10)
	b = append(b, `,"tenantId":`...)
	b = strconv.AppendInt(b, m.TenantID, 10)
	b = append(b, `,"batchId":`...)
	b = strconv.AppendInt(b, m.BatchID, 10)
	b = append(b, `,"index":`...)
	b = strconv.AppendInt(b, int64(m.Index), 10)
	b = append(b, `,"optType":`...)
	b = appendString(b, string(m.OptType))
	b = append(b, `,"outcome":`...)
	b = appendString(b, string(m.Outcome))
	b = appendOptString(b, `,"reason":`, string(m.Reason))
	b = appendOptString(b, `,"matchedBy":`, string(m.MatchedBy))
	if m.CustomerID != 0 {
		b = append(b, `,"customerId":`...)
		b = strconv.AppendInt(b, m.CustomerID, 10)
	}
	if m.Created {
		b = append(b, `,"created":true`...)
	}
	if m.Conflict {
		b = append(b, `,"conflict":true`...)
	}
	if len(m.Groups) > 0 {
		b = append(b, `,"groups":[`...)
		for i, g := range m.Groups {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, g)
		}
		b = append(b, ']')
	}
	if r := m.Ref; r != nil {
		b = append(b, `,"ref":{`...)
		n := len(b)
		b = appendOptString(b, `,"thirdId":`, r.ThirdID)
		b = appendOptString(b, `,"phone":`, r.Phone)
		b = appendOptString(b, `,"openid":`, r.OpenID)
		b = appendOptString(b, `,"unionid":`, r.UnionID)
		if len(b) > n {
			b = append(b[:n], b[n+1:]...)
		}
		b = append(b, '}')
	}
	if m.Pending != nil {
		// Rare (deferred batches only): encoding/json writes it, map keys
		// sorted, as json.Marshal of the whole message would.
		pb, err := json.Marshal(m.Pending)
		if err != nil {
			panic(fmt.Sprintf("pipeline: encode pending: %v", err)) // only strings, ints, bools, maps of strings
		}
		b = append(b, `,"pending":`...)
		b = append(b, pb...)
	}
	if m.Late {
		b = append(b, `,"late":true`...)
	}
	return append(b, '}')
}

// appendOptString appends key and s unless s is empty (omitempty).
func appendOptString(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendString(append(b, key...), s)
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string, escaped as encoding/json does
// with HTML escaping on: <, > and & as \u003c, \u003e, \u0026; U+2028 and
// U+2029 escaped; each byte of invalid UTF-8 as \ufffd.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xF])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// scanner reads the canonical form of our messages. Every method returns
// false when the input leaves the fast path; the caller then declines.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// byte consumes c, after whitespace.
func (s *scanner) byte(c byte) bool {
	s.space()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// peek returns the next byte after whitespace, or 0 at the end.
func (s *scanner) peek() byte {
	s.space()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// end reports whether only whitespace remains.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

// object calls field for each key of an object, the scanner positioned
// at the key's value. Keys with escapes leave the fast path.
func (s *scanner) object(field func(key []byte) bool) bool {
	if !s.byte('{') {
		return false
	}
	if s.byte('}') {
		return true
	}
	for {
		if !s.byte('"') {
			return false
		}
		j := s.i
		for j < len(s.b) && s.b[j] != '"' && s.b[j] != '\\' {
			j++
		}
		if j == len(s.b) || s.b[j] != '"' {
			return false
		}
		key := s.b[s.i:j]
		s.i = j + 1
		if !s.byte(':') || !field(key) {
			return false
		}
		if s.byte(',') {
			continue
		}
		return s.byte('}')
	}
}

// str reads a string value, decoded as encoding/json decodes it. The
// string never shares memory with the input: the Kafka client reuses it.
func (s *scanner) str() (string, bool) {
	if !s.byte('"') {
		return "", false
	}
	start := s.i
	ascii := true
	for ; s.i < len(s.b); s.i++ {
		c := s.b[s.i]
		if c == '"' {
			if v := s.b[start:s.i]; ascii || utf8.Valid(v) {
				s.i++
				return string(v), true
			}
			break // invalid UTF-8 reads as U+FFFD
		}
		if c == '\\' || c < 0x20 {
			break
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	end := JSONStringEnd(s.b, s.i)
	if end < 0 {
		return "", false
	}
	out, ok := AppendJSONString(make([]byte, 0, end-start), s.b[start:end])
	s.i = end + 1
	return string(out), ok
}

// int reads a plain integer (no fraction, exponent or leading zeros).
func (s *scanner) int() (int64, bool) {
	s.space()
	j := s.i
	if j < len(s.b) && s.b[j] == '-' {
		j++
	}
	d := j
	for j < len(s.b) && '0' <= s.b[j] && s.b[j] <= '9' {
		j++
	}
	if j == d || (s.b[d] == '0' && j-d > 1) {
		return 0, false
	}
	if j < len(s.b) && (s.b[j] == '.' || s.b[j] == 'e' || s.b[j] == 'E') {
		return 0, false
	}
	v, err := strconv.ParseInt(string(s.b[s.i:j]), 10, 64)
	if err != nil {
		return 0, false
	}
	s.i = j
	return v, true
}

func (s *scanner) bool() (bool, bool) {
	s.space()
	rest := s.b[s.i:]
	switch {
	case len(rest) >= 4 && string(rest[:4]) == "true":
		s.i += 4
		return true, true
	case len(rest) >= 5 && string(rest[:5]) == "false":
		s.i += 5
		return false, true
	}
	return false, false
}

// seen tracks which keys of an object were read; a repeated key leaves the
// fast path (encoding/json would merge or overwrite).
type seen uint32

func (m *seen) first(bit uint) bool {
	if *m&(1<<bit) != 0 {
		return false
	}
	*m |= 1 << bit
	return true
}

// intField reads an integer into an int, as encoding/json would accept it
// on this platform.
func (s *scanner) intField(dst *int) bool {
	v, ok := s.int()
	if !ok || int64(int(v)) != v {
		return false
	}
	*dst = int(v)
	return true
}

func (s *scanner) int64Field(dst *int64) bool {
	v, ok := s.int()
	*dst = v
	return ok
}

func (s *scanner) strField(dst *string) bool {
	v, ok := s.str()
	*dst = v
	return ok
}

// header reads key's value when key is one of the fields both messages
// begin with (bits 0-3 of f); known is false for any other key.
func (s *scanner) header(key []byte, f *seen, v *int, tenant, batch *int64, index *int) (known, ok bool) {
	switch string(key) {
	case "v":
		return true, f.first(0) && s.intField(v)
	case "tenantId":
		return true, f.first(1) && s.int64Field(tenant)
	case "batchId":
		return true, f.first(2) && s.int64Field(batch)
	case "index":
		return true, f.first(3) && s.intField(index)
	}
	return false, false
}

// fastRecord decodes the canonical form of a records message.
func fastRecord(b []byte, m *RecordMessage) bool {
	s := scanner{b: b}
	var top seen
	ok := s.object(func(key []byte) bool {
		if known, ok := s.header(key, &top, &m.V, &m.TenantID, &m.BatchID, &m.Index); known {
			return ok
		}
		switch string(key) {
		case "params":
			return top.first(4) && s.params(&m.Params)
		case "record":
			return top.first(5) && s.record(&m.Record)
		}
		return false
	})
	return ok && s.end()
}

func (s *scanner) params(p *Params) bool {
	var f seen
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "isMatching":
			v, ok := s.bool()
			p.IsMatching = v
			return f.first(0) && ok
		case "matchingType":
			return f.first(1) && s.intField(&p.MatchingType)
		case "identifyWay":
			return f.first(2) && s.intField(&p.IdentifyWay)
		case "accurateMatchType":
			return f.first(3) && s.strField(&p.AppType)
		case "accurateMatchValue":
			return f.first(4) && s.strField(&p.AppID)
		case "optType":
			v, ok := s.str()
			p.OptType = OptType(v)
			return f.first(5) && ok
		case "deferUnmatched":
			v, ok := s.bool()
			p.DeferUnmatched = v
			return f.first(6) && ok
		}
		return false
	})
}

func (s *scanner) record(r *RawRecord) bool {
	var f seen
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "identityType":
			return f.first(0) && s.strField(&r.IdentityType)
		case "thirdId":
			return f.first(1) && s.strField(&r.ThirdID)
		case "openid":
			return f.first(2) && s.strField(&r.OpenID)
		case "unionid":
			return f.first(3) && s.strField(&r.UnionID)
		case "phone":
			return f.first(4) && s.strField(&r.Phone)
		case "groups":
			return f.first(5) && s.strField(&r.Groups)
		}
		return false
	})
}

// fastResolved decodes the canonical form of a resolved message.
func fastResolved(b []byte, m *ResolvedMessage) bool {
	s := scanner{b: b}
	var top seen
	ok := s.object(func(key []byte) bool {
		if known, ok := s.header(key, &top, &m.V, &m.TenantID, &m.BatchID, &m.Index); known {
			return ok
		}
		switch string(key) {
		case "optType":
			v, ok := s.str()
			m.OptType = OptType(v)
			return top.first(4) && ok
		case "outcome":
			v, ok := s.str()
			m.Outcome = Outcome(v)
			return top.first(5) && ok
		case "reason":
			v, ok := s.str()
			m.Reason = Reason(v)
			return top.first(6) && ok
		case "matchedBy":
			v, ok := s.str()
			m.MatchedBy = IdentityKind(v)
			return top.first(7) && ok
		case "customerId":
			return top.first(8) && s.int64Field(&m.CustomerID)
		case "created":
			v, ok := s.bool()
			m.Created = v
			return top.first(9) && ok
		case "conflict":
			v, ok := s.bool()
			m.Conflict = v
			return top.first(10) && ok
		case "groups":
			return top.first(11) && s.groups(&m.Groups)
		case "ref":
			if !top.first(12) || s.peek() != '{' {
				return false
			}
			m.Ref = &RecordRef{}
			return s.ref(m.Ref)
		case "late":
			v, ok := s.bool()
			m.Late = v
			return top.first(13) && ok
		}
		return false
	})
	return ok && s.end()
}

func (s *scanner) groups(dst *[]string) bool {
	if !s.byte('[') {
		return false
	}
	g := []string{}
	if !s.byte(']') {
		for {
			v, ok := s.str()
			if !ok {
				return false
			}
			g = append(g, v)
			if s.byte(',') {
				continue
			}
			if !s.byte(']') {
				return false
			}
			break
		}
	}
	*dst = g
	return true
}

func (s *scanner) ref(r *RecordRef) bool {
	var f seen
	return s.object(func(key []byte) bool {
		switch string(key) {
		case "thirdId":
			return f.first(0) && s.strField(&r.ThirdID)
		case "phone":
			return f.first(1) && s.strField(&r.Phone)
		case "openid":
			return f.first(2) && s.strField(&r.OpenID)
		case "unionid":
			return f.first(3) && s.strField(&r.UnionID)
		}
		return false
	})
}
