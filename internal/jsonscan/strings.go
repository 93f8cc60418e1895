package jsonscan

import (
	"unicode/utf16"
	"unicode/utf8"
)

// StringEnd returns the index in b of the quote that closes the JSON
// string whose body starts at b[start] (just after its opening quote), or -1
// when b ends first. It skips escaped characters and checks nothing else;
// Unquote validates the body.
func StringEnd(b []byte, start int) int {
	for i := start; i < len(b); i++ {
		switch b[i] {
		case '"':
			return i
		case '\\':
			i++
		}
	}
	return -1
}

// Unquote appends the text of body, the bytes between the quotes of a JSON
// string, to dst, decoded as encoding/json decodes it: escapes resolved, a
// UTF-16 surrogate pair combined, any other surrogate escape and each byte
// of invalid UTF-8 read as U+FFFD. ok is false when body is not a valid
// string body: a control character, an unescaped quote or a malformed
// escape.
func Unquote(dst, body []byte) (out []byte, ok bool) {
	out = dst
	for i := 0; i < len(body); {
		c := body[i]
		switch {
		case c == '"' || c < 0x20:
			return out, false
		case c == '\\':
			if i+1 >= len(body) {
				return out, false
			}
			e := body[i+1]
			i += 2
			switch e {
			case '"', '\\', '/':
				out = append(out, e)
			case 'b':
				out = append(out, '\b')
			case 'f':
				out = append(out, '\f')
			case 'n':
				out = append(out, '\n')
			case 'r':
				out = append(out, '\r')
			case 't':
				out = append(out, '\t')
			case 'u':
				r := hex4(body[i:])
				if r < 0 {
					return out, false
				}
				i += 4
				if utf16.IsSurrogate(r) {
					// A pair only when a \u escape of the other half follows;
					// otherwise U+FFFD, and what follows stands alone.
					r2 := rune(-1)
					if len(body)-i >= 6 && body[i] == '\\' && body[i+1] == 'u' {
						r2 = hex4(body[i+2:])
					}
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				}
				out = utf8.AppendRune(out, r)
			default:
				return out, false
			}
		case c < utf8.RuneSelf:
			out = append(out, c)
			i++
		default:
			r, size := utf8.DecodeRune(body[i:])
			if r == utf8.RuneError && size == 1 {
				out = utf8.AppendRune(out, utf8.RuneError)
			} else {
				out = append(out, body[i:i+size]...)
			}
			i += size
		}
	}
	return out, true
}

// SurrogatesPaired reports whether every \u escape of a UTF-16 surrogate
// in body, the bytes between the quotes of a valid JSON string, is a high
// surrogate directly followed by a low one: whether Unquote reads it
// without replacing an escape by U+FFFD.
func SurrogatesPaired(body []byte) bool {
	for i := 0; i < len(body); i++ {
		if body[i] != '\\' {
			continue
		}
		i++ // the escaped character; a valid string has one
		if body[i] != 'u' {
			continue
		}
		r := hex4(body[i+1:])
		i += 4
		switch {
		case r >= 0xd800 && r < 0xdc00:
			if i+7 > len(body) || body[i+1] != '\\' || body[i+2] != 'u' {
				return false
			}
			if lo := hex4(body[i+3:]); lo < 0xdc00 || lo > 0xdfff {
				return false
			}
			i += 6
		case r >= 0xdc00 && r <= 0xdfff:
			return false
		}
	}
	return true
}

// hex4 returns the value of the four hexadecimal digits b starts with, or
// -1.
func hex4(b []byte) rune {
	if len(b) < 4 {
		return -1
	}
	var r rune
	for _, c := range b[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}
