package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/internal/jsonscan"
)

// The records and resolved messages are the two values every record passes
// through twice (encode and decode), and encoding/json's reflection cost
// about a third of the matcher's and the sink's CPU. This file writes them
// by hand and reads them on a fast path:
//
//   - append* writes exactly the bytes json.Marshal writes for the value
//     (same field order, omitempty, HTML-safe string escapes); a fuzz test
//     holds them equal.
//   - fast* reads the form those encoders write with internal/jsonscan,
//     allowing whitespace, any field order, any string and escaped member
//     names, and declines (ok=false) anything else: unknown or differently
//     cased keys, repeated keys, null, numbers that are not plain integers.
//     A declined value is decoded by encoding/json, so the accepted language
//     and its meaning are encoding/json's; a fuzz test holds the fast path
//     to agreeing with it on everything it accepts.
//
// The encoders stay here rather than in jsonscan: they write exactly what
// json.Marshal writes for these two types, which is part of the messages'
// contract and pinned by this package's tests; jsonscan only reads.

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
	n := len(b)
	for _, f := range m.Record.Members() {
		if *f.Value != "" {
			b = append(append(append(b, `,"`...), f.Name...), `":`...)
			b = appendString(b, *f.Value)
		}
	}
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
		for _, f := range r.Members() {
			if *f.Value != "" {
				b = append(append(append(b, `,"`...), f.Name...), `":`...)
				b = appendString(b, *f.Value)
			}
		}
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

// errDecline makes a fast decoder give up; the caller then decodes with
// encoding/json. It is never returned to a caller of this package.
var errDecline = errors.New("pipeline: not the canonical form")

// fastDecoder reads the canonical form of our messages. Every method
// returns false when the input leaves the fast path; the caller then
// declines.
type fastDecoder struct {
	s jsonscan.Scanner
}

// member adapts a field reader's result to jsonscan.Scanner.Object.
func member(ok bool) error {
	if ok {
		return nil
	}
	return errDecline
}

// str reads a string value, decoded as encoding/json decodes it. The
// string never shares memory with the input: the Kafka client reuses it.
func (d *fastDecoder) str() (string, bool) {
	v, err := d.s.Text()
	return string(v), err == nil
}

// int reads a plain integer (no fraction or exponent) that fits bitSize
// bits, as json.Unmarshal stores one.
func (d *fastDecoder) int(bitSize int) (int64, bool) {
	raw, err := d.s.Number()
	if err != nil {
		return 0, false
	}
	return jsonscan.ParseInt(raw, bitSize)
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
func (d *fastDecoder) intField(dst *int) bool {
	v, ok := d.int(strconv.IntSize)
	*dst = int(v)
	return ok
}

func (d *fastDecoder) int64Field(dst *int64) bool {
	v, ok := d.int(64)
	*dst = v
	return ok
}

func (d *fastDecoder) strField(dst *string) bool {
	v, ok := d.str()
	*dst = v
	return ok
}

// header reads key's value when key is one of the fields both messages
// begin with (bits 0-3 of f); known is false for any other key.
func (d *fastDecoder) header(key []byte, f *seen, v *int, tenant, batch *int64, index *int) (known, ok bool) {
	switch string(key) {
	case "v":
		return true, f.first(0) && d.intField(v)
	case "tenantId":
		return true, f.first(1) && d.int64Field(tenant)
	case "batchId":
		return true, f.first(2) && d.int64Field(batch)
	case "index":
		return true, f.first(3) && d.intField(index)
	}
	return false, false
}

// fastRecord decodes the canonical form of a records message.
func fastRecord(b []byte, m *RecordMessage) bool {
	d := fastDecoder{s: jsonscan.New(b)}
	var top seen
	err := d.s.Object(func(key []byte) error {
		if known, ok := d.header(key, &top, &m.V, &m.TenantID, &m.BatchID, &m.Index); known {
			return member(ok)
		}
		switch string(key) {
		case "params":
			return member(top.first(4) && d.params(&m.Params))
		case "record":
			return member(top.first(5) && d.record(&m.Record))
		}
		return errDecline
	})
	return err == nil && d.s.End() == nil
}

func (d *fastDecoder) params(p *Params) bool {
	var f seen
	return d.s.Object(func(key []byte) error {
		switch string(key) {
		case "isMatching":
			v, ok := d.s.Bool()
			p.IsMatching = v
			return member(f.first(0) && ok)
		case "matchingType":
			return member(f.first(1) && d.intField(&p.MatchingType))
		case "identifyWay":
			return member(f.first(2) && d.intField(&p.IdentifyWay))
		case "accurateMatchType":
			return member(f.first(3) && d.strField(&p.AppType))
		case "accurateMatchValue":
			return member(f.first(4) && d.strField(&p.AppID))
		case "optType":
			v, ok := d.str()
			p.OptType = OptType(v)
			return member(f.first(5) && ok)
		case "deferUnmatched":
			v, ok := d.s.Bool()
			p.DeferUnmatched = v
			return member(f.first(6) && ok)
		}
		return errDecline
	}) == nil
}

func (d *fastDecoder) record(r *RawRecord) bool {
	var f seen
	members := r.Members()
	return d.s.Object(func(key []byte) error {
		if i := MemberIndex(key); i >= 0 {
			return member(f.first(uint(i)) && d.strField(members[i].Value))
		}
		return errDecline
	}) == nil
}

// fastResolved decodes the canonical form of a resolved message.
func fastResolved(b []byte, m *ResolvedMessage) bool {
	d := fastDecoder{s: jsonscan.New(b)}
	var top seen
	err := d.s.Object(func(key []byte) error {
		if known, ok := d.header(key, &top, &m.V, &m.TenantID, &m.BatchID, &m.Index); known {
			return member(ok)
		}
		switch string(key) {
		case "optType":
			v, ok := d.str()
			m.OptType = OptType(v)
			return member(top.first(4) && ok)
		case "outcome":
			v, ok := d.str()
			m.Outcome = Outcome(v)
			return member(top.first(5) && ok)
		case "reason":
			v, ok := d.str()
			m.Reason = Reason(v)
			return member(top.first(6) && ok)
		case "matchedBy":
			v, ok := d.str()
			m.MatchedBy = IdentityKind(v)
			return member(top.first(7) && ok)
		case "customerId":
			return member(top.first(8) && d.int64Field(&m.CustomerID))
		case "created":
			v, ok := d.s.Bool()
			m.Created = v
			return member(top.first(9) && ok)
		case "conflict":
			v, ok := d.s.Bool()
			m.Conflict = v
			return member(top.first(10) && ok)
		case "groups":
			return member(top.first(11) && d.groups(&m.Groups))
		case "ref":
			if !top.first(12) || d.s.Peek() != '{' {
				return errDecline
			}
			m.Ref = &RecordRef{}
			return member(d.ref(m.Ref))
		case "late":
			v, ok := d.s.Bool()
			m.Late = v
			return member(top.first(13) && ok)
		}
		return errDecline
	})
	return err == nil && d.s.End() == nil
}

func (d *fastDecoder) groups(dst *[]string) bool {
	if d.s.BeginArray() != nil {
		return false
	}
	g := []string{}
	for first := true; ; first = false {
		more, err := d.s.NextElement(first)
		if err != nil {
			return false
		}
		if !more {
			break
		}
		v, ok := d.str()
		if !ok {
			return false
		}
		g = append(g, v)
	}
	*dst = g
	return true
}

func (d *fastDecoder) ref(r *RecordRef) bool {
	var f seen
	members := r.Members()
	return d.s.Object(func(key []byte) error {
		for i := range members {
			if string(key) == members[i].Name {
				return member(f.first(uint(i)) && d.strField(members[i].Value))
			}
		}
		return errDecline
	}) == nil
}
