// Package jsonscan is the JSON lexer under groupmatch's hand-written
// decoders (the pipeline message codecs, ingest's request decoder and the
// directory line parser). It reads JSON text from a byte slice exactly as
// encoding/json reads it: white space, literals, strings (escapes, UTF-16
// surrogate pairs, invalid UTF-8 read as U+FFFD), numbers, objects and
// arrays, and skips values of any kind without recursion and with a depth
// limit. The decoders above it keep only their field tables and the logic
// that fills their structs.
//
// What it must never do:
//
//   - know any groupmatch field or type: member names reach the caller as
//     bytes, and only the caller decides what they mean (EqualFoldASCII is
//     there for the callers that match names as encoding/json does);
//   - put a byte of the input into an error: errors are *Error, which holds
//     an offset and a fixed description, because the decoders' errors end up
//     in logs and dead letters and identity values must never appear there;
//   - allocate per token beyond what the caller asks for: strings are
//     returned as slices of the input or of one scratch buffer the Scanner
//     reuses, numbers as slices of the input; converting them to Go strings
//     is the caller's choice;
//   - recurse on the input's nesting: Skip and Valid keep one bit per
//     level, so a hostile body costs time linear in its length and no stack;
//   - hold global state: a Scanner belongs to one goroutine, and distinct
//     Scanners share nothing.
//
// What a value means for a field stays with the caller too: ParseInt reads
// a number as json.Unmarshal stores it in a Go integer, ParseIntegral as a
// schema's "integer" (1.0 is 1), and each decoder picks the one its
// contract names.
package jsonscan

import (
	"strconv"
	"unicode/utf8"
)

// Scanner reads one JSON text from a byte slice. The zero value reads an
// empty input; New returns one positioned at the start of b. A Scanner does
// not modify b, and the slices it returns share memory with b or with its
// scratch buffer, valid until the next call that reads a string.
type Scanner struct {
	b   []byte
	i   int    // b[:i] has been read
	buf []byte // scratch for unescaped strings, reused
	// stack is Skip's, one bit per open object or array; only input nested
	// more than 64 deep allocates, once per Scanner.
	stack bitStack
}

// New returns a Scanner that reads b from its first byte.
func New(b []byte) Scanner { return Scanner{b: b} }

// Offset returns the number of bytes read so far.
func (s *Scanner) Offset() int { return s.i }

// Error is a syntax error or a value nested too deeply. It names a position
// in the input and never any of its bytes.
type Error struct {
	// Offset is the index of the byte that made the input invalid
	// (len(input) when it ended too early).
	Offset int
	// TooDeep is set when the input nests values beyond the limit the
	// caller gave; it may be valid JSON.
	TooDeep bool
}

// Error returns "malformed JSON at byte N", N counting bytes from 1 up to
// and including the bad one, or "JSON nested too deeply".
func (e *Error) Error() string {
	if e.TooDeep {
		return "JSON nested too deeply"
	}
	return "malformed JSON at byte " + strconv.Itoa(e.Offset+1)
}

// syntax returns the syntax error at the current position.
func (s *Scanner) syntax() error { return &Error{Offset: s.i} }

// SkipSpace moves past JSON white space.
func (s *Scanner) SkipSpace() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// Peek returns the next byte after white space without reading it, or 0 at
// the end of the input.
func (s *Scanner) Peek() byte {
	s.SkipSpace()
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

// Consume reads c, after white space, and reports whether it came next.
func (s *Scanner) Consume(c byte) bool {
	s.SkipSpace()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// Literal reads word ("null", "true" or "false"), after white space, and
// reports whether it came next. Like encoding/json, it does not look at
// the byte after the word; the next read finds any junk there.
func (s *Scanner) Literal(word string) bool {
	s.SkipSpace()
	if len(s.b)-s.i >= len(word) && string(s.b[s.i:s.i+len(word)]) == word {
		s.i += len(word)
		return true
	}
	return false
}

// Bool reads true or false; ok is false, and nothing is read, when neither
// comes next.
func (s *Scanner) Bool() (v, ok bool) {
	switch {
	case s.Literal("true"):
		return true, true
	case s.Literal("false"):
		return false, true
	}
	return false, false
}

// End returns nil when only white space remains, and a syntax error at the
// first other byte otherwise.
func (s *Scanner) End() error {
	s.SkipSpace()
	if s.i != len(s.b) {
		return s.syntax()
	}
	return nil
}

// Text reads a string, after white space, and returns its text decoded
// as encoding/json decodes it: escapes resolved, a UTF-16 surrogate pair
// combined, any other surrogate escape and each byte of invalid UTF-8 read
// as U+FFFD. The text is a slice of the input when it holds no escape and
// is valid UTF-8, and of the Scanner's scratch buffer otherwise; either way
// it is valid only until the next call that reads a string. A missing
// opening quote, a control character, a malformed escape or a missing
// closing quote is a syntax error.
func (s *Scanner) Text() ([]byte, error) {
	s.SkipSpace()
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return nil, s.syntax()
	}
	s.i++
	start := s.i
	ascii := true
	for ; s.i < len(s.b); s.i++ {
		c := s.b[s.i]
		if c == '"' {
			if v := s.b[start:s.i]; ascii || utf8.Valid(v) {
				s.i++
				return v, nil
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
	end := StringEnd(s.b, s.i)
	if end < 0 {
		s.i = len(s.b)
		return nil, s.syntax()
	}
	out, ok := Unquote(s.buf[:0], s.b[start:end])
	if !ok {
		return nil, s.syntax()
	}
	s.buf = out
	s.i = end + 1
	return out, nil
}

// RawString reads a string, after white space, checking its syntax as
// Text does, and returns it with its quotes and undecoded. It never
// copies.
func (s *Scanner) RawString() ([]byte, error) {
	s.SkipSpace()
	start := s.i
	if err := s.skipString(); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// skipString reads the string at s.i, checking its syntax.
func (s *Scanner) skipString() error {
	if s.i >= len(s.b) || s.b[s.i] != '"' {
		return s.syntax()
	}
	for s.i++; s.i < len(s.b); s.i++ {
		switch c := s.b[s.i]; {
		case c == '"':
			s.i++
			return nil
		case c < 0x20:
			return s.syntax()
		case c == '\\':
			s.i++
			if s.i >= len(s.b) {
				return s.syntax()
			}
			switch s.b[s.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				for range 4 {
					s.i++
					if s.i >= len(s.b) || !isHex(s.b[s.i]) {
						return s.syntax()
					}
				}
			default:
				return s.syntax()
			}
		}
	}
	return s.syntax()
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// Number reads a number, after white space, and returns its bytes as they
// stand in the input. Anything that is not a number by JSON's grammar (a
// leading zero followed by digits, a lone minus, a dot or exponent without
// digits) is a syntax error, and the bytes returned with it are only what
// was read.
func (s *Scanner) Number() ([]byte, error) {
	s.SkipSpace()
	start := s.i
	err := s.number()
	return s.b[start:s.i], err
}

func (s *Scanner) number() error {
	if s.i < len(s.b) && s.b[s.i] == '-' {
		s.i++
	}
	switch {
	case s.i >= len(s.b):
		return s.syntax()
	case s.b[s.i] == '0':
		s.i++
	case '1' <= s.b[s.i] && s.b[s.i] <= '9':
		s.digits()
	default:
		return s.syntax()
	}
	if s.i < len(s.b) && s.b[s.i] == '.' {
		s.i++
		if s.digits() == 0 {
			return s.syntax()
		}
	}
	if s.i < len(s.b) && (s.b[s.i] == 'e' || s.b[s.i] == 'E') {
		s.i++
		if s.i < len(s.b) && (s.b[s.i] == '+' || s.b[s.i] == '-') {
			s.i++
		}
		if s.digits() == 0 {
			return s.syntax()
		}
	}
	return nil
}

func (s *Scanner) digits() int {
	n := 0
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		s.i++
		n++
	}
	return n
}

// Object reads an object, after white space, calling member with each
// member's name (decoded as Text decodes it) once the Scanner stands
// before the member's value; member must read that value. The name is
// valid only until member reads a string. An error from member is returned
// as it is. A missing '{', name, colon, comma or '}' is a syntax error.
func (s *Scanner) Object(member func(name []byte) error) error {
	// NextMember's steps, without a call per member.
	if !s.Consume('{') {
		return s.syntax()
	}
	if s.Consume('}') {
		return nil
	}
	for {
		name, err := s.Text()
		if err != nil {
			return err
		}
		if !s.Consume(':') {
			s.SkipSpace()
			return s.syntax()
		}
		s.SkipSpace()
		if err := member(name); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.i++
		case '}':
			s.i++
			return nil
		default:
			return s.syntax()
		}
	}
}

// BeginObject reads the '{' that opens an object, after white space; then
// NextMember reads the members. Object does both for callers that can take
// a callback.
func (s *Scanner) BeginObject() error {
	if !s.Consume('{') {
		return s.syntax()
	}
	return nil
}

// NextMember moves to the next member of the object being read (first is
// true for its first): past the comma before it, its name and its colon,
// the Scanner standing before the member's value, which the caller must
// read before calling NextMember again. At the end of the object it reads
// the '}' and returns more false. The name is decoded as Text decodes it
// and valid until the next call that reads a string.
func (s *Scanner) NextMember(first bool) (name []byte, more bool, err error) {
	switch s.Peek() {
	case '}':
		s.i++
		return nil, false, nil
	case ',':
		if first {
			return nil, false, s.syntax()
		}
		s.i++
	default:
		if !first {
			return nil, false, s.syntax()
		}
	}
	name, err = s.Text()
	if err != nil {
		return nil, false, err
	}
	if !s.Consume(':') {
		s.SkipSpace()
		return nil, false, s.syntax()
	}
	s.SkipSpace()
	return name, true, nil
}

// Array reads an array, after white space, calling elem for each element
// once the Scanner stands before it; elem must read the element. An error
// from elem is returned as it is. A missing '[', comma or ']' is a syntax
// error.
func (s *Scanner) Array(elem func() error) error {
	// NextElement's steps, without a call per element.
	if !s.Consume('[') {
		return s.syntax()
	}
	if s.Consume(']') {
		return nil
	}
	for {
		s.SkipSpace()
		if err := elem(); err != nil {
			return err
		}
		switch s.Peek() {
		case ',':
			s.i++
		case ']':
			s.i++
			return nil
		default:
			return s.syntax()
		}
	}
}

// BeginArray reads the '[' that opens an array, after white space; then
// NextElement reads the elements. Array does both for callers that can
// take a callback.
func (s *Scanner) BeginArray() error {
	if !s.Consume('[') {
		return s.syntax()
	}
	return nil
}

// NextElement moves to the next element of the array being read (first is
// true for its first): past the comma before it and white space, the
// Scanner standing before the element, which the caller must read before
// calling NextElement again. At the end of the array it reads the ']' and
// returns more false.
func (s *Scanner) NextElement(first bool) (more bool, err error) {
	switch s.Peek() {
	case ']':
		s.i++
		return false, nil
	case ',':
		if first {
			return false, s.syntax()
		}
		s.i++
		s.SkipSpace()
		return true, nil
	}
	if !first {
		return false, s.syntax()
	}
	return true, nil
}

// Skip reads one value of any kind, after white space, checking its
// syntax, and returns its bytes. A value inside it more than maxDepth levels
// down (its members and elements are one level down) is an *Error with
// TooDeep set, reported when the Scanner reaches that value. Skip does not
// recurse: its stack is one bit per level.
func (s *Scanner) Skip(maxDepth int) ([]byte, error) {
	s.SkipSpace()
	start := s.i
	if err := s.skip(maxDepth, false); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// Valid reports whether b is one JSON value with optional white space
// around it, exactly as json.Valid does (including its limit of 10000
// nested objects and arrays; invalid UTF-8 in strings is valid).
func Valid(b []byte) bool {
	s := New(b)
	s.SkipSpace()
	return s.skip(maxNesting, true) == nil && s.End() == nil
}

// maxNesting is encoding/json's limit on nested objects and arrays.
const maxNesting = 10000

// skip reads the value at s.i. With containers false, a value more than
// maxDepth levels down is too deep; with it true, an object or array that
// makes more than maxDepth of them open at once is, as encoding/json counts.
func (s *Scanner) skip(maxDepth int, containers bool) error {
	stack := &s.stack // 1 for an object, 0 for an array
	depth := 0
	for {
		// At the start of a value depth levels down.
		if !containers && depth > maxDepth {
			return &Error{Offset: s.i, TooDeep: true}
		}
		if s.i >= len(s.b) {
			return s.syntax()
		}
		switch c := s.b[s.i]; {
		case c == '{' || c == '[':
			if containers && depth >= maxDepth {
				return &Error{Offset: s.i, TooDeep: true}
			}
			s.i++
			s.SkipSpace()
			closer := byte(']')
			if c == '{' {
				closer = '}'
			}
			if s.i < len(s.b) && s.b[s.i] == closer {
				s.i++
				break // an empty container is a complete value
			}
			stack.push(c == '{', depth)
			depth++
			if c == '{' {
				if err := s.memberName(); err != nil {
					return err
				}
			}
			continue
		case c == '"':
			if err := s.skipString(); err != nil {
				return err
			}
		case c == '-' || '0' <= c && c <= '9':
			if err := s.number(); err != nil {
				return err
			}
		case c == 't' && s.Literal("true"), c == 'f' && s.Literal("false"), c == 'n' && s.Literal("null"):
		default:
			return s.syntax()
		}
		// A value is complete: close the containers it completes, or move
		// to the next member or element.
		for {
			if depth == 0 {
				return nil
			}
			object := stack.get(depth - 1)
			s.SkipSpace()
			if s.i >= len(s.b) {
				return s.syntax()
			}
			switch c := s.b[s.i]; {
			case c == ',':
				s.i++
				s.SkipSpace()
				if object {
					if err := s.memberName(); err != nil {
						return err
					}
				}
			case c == '}' && object, c == ']' && !object:
				s.i++
				depth--
				continue
			default:
				return s.syntax()
			}
			break
		}
	}
}

// memberName reads a member's name and colon at s.i, leaving the Scanner
// before the value.
func (s *Scanner) memberName() error {
	if err := s.skipString(); err != nil {
		return err
	}
	if !s.Consume(':') {
		s.SkipSpace()
		return s.syntax()
	}
	s.SkipSpace()
	return nil
}

// bitStack holds one bit per level: the first 64 in place, deeper ones in
// words allocated only for input nested that deep. A level's bit is valid
// once pushed; pushing overwrites what an earlier use left.
type bitStack struct {
	low  uint64
	high []uint64
}

func (b *bitStack) push(v bool, level int) {
	if level < 64 {
		if v {
			b.low |= 1 << uint(level)
		} else {
			b.low &^= 1 << uint(level)
		}
		return
	}
	b.pushHigh(v, uint(level))
}

func (b *bitStack) pushHigh(v bool, level uint) {
	n := int(level>>6) - 1
	if n >= len(b.high) {
		if n >= cap(b.high) {
			grown := make([]uint64, max(2*cap(b.high), maxNesting/64)) // encoding/json's limit in one step
			copy(grown, b.high)
			b.high = grown
		}
		b.high = b.high[:n+1]
	}
	if v {
		b.high[n] |= 1 << (level & 63)
	} else {
		b.high[n] &^= 1 << (level & 63)
	}
}

func (b *bitStack) get(level int) bool {
	if level < 64 {
		return b.low&(1<<uint(level)) != 0
	}
	return b.high[int(uint(level)>>6)-1]&(1<<(uint(level)&63)) != 0
}

// EqualFoldASCII reports whether name equals s ignoring ASCII letter case.
// encoding/json matches member names to fields this way and also folds
// the Kelvin sign (U+212A) with k and the long s (U+017F) with s; callers
// that need those do so themselves.
func EqualFoldASCII(name []byte, s string) bool {
	if len(name) != len(s) {
		return false
	}
	for i := range name {
		x, y := name[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}
