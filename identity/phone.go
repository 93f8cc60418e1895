package identity

import (
	"strings"
	"unicode"
)

// maxPhoneDigits is the most digits a phone may carry before its prefix is
// removed: "00" followed by a 15-digit E.164 number.
const maxPhoneDigits = 17

// NormalizePhone returns the canonical form of the phone s, or ok=false when s
// is malformed. It does not apply the block list: callers test IsBlocked first
// (NormalizePhone("0") is simply malformed).
//
// The rules (SPEC §5), in order:
//
//  1. Leading and trailing white space is trimmed.
//  2. Separators are removed wherever they stand: white space (including the
//     ideographic and no-break spaces), dashes ("-", "－", U+2010–U+2015,
//     U+2212) and round brackets, ASCII or full-width ("(", ")", "（", "）").
//     Full-width digits "０"–"９" and plus "＋" read as their ASCII forms.
//     Any other character (letters, dots, slashes, "ext") makes s malformed,
//     as does a "+" anywhere but before the first digit.
//  3. An international prefix, "+" or "00", introduces an international
//     number. When it is followed by "86" and a Chinese mobile, the result is
//     that mobile; otherwise the digits after the prefix must be an E.164
//     number: 8 to 15 digits, the first not "0" (no country code starts with
//     0). Its canonical form is "+" and those digits, so "0044…" and "+44…"
//     are the same phone.
//  4. Without an international prefix, the digits must be a Chinese mobile,
//     optionally preceded by "86" (13 digits in all). A bare foreign number
//     without "+" or "00" is malformed: it cannot be told from a typo.
//
// A Chinese mobile matches ^1[3-9]\d{9}$ and its canonical form is those 11
// digits, whichever prefix it came with. The "86" prefix is removed only when
// what remains is a Chinese mobile (the brief says "11 digits"; this is
// stricter), so an E.164 landline such as "+86 755 1234 5678" stays
// "+8675512345678" instead of being cut into a malformed 11-digit number.
//
// NormalizePhone is idempotent: a canonical form normalises to itself.
func NormalizePhone(s string) (string, bool) {
	s = strings.TrimSpace(s)
	// buf[0] is reserved for the '+' of an E.164 result; digits start at 1.
	var buf [1 + maxPhoneDigits]byte
	n := 1
	plus := false
	for _, r := range s {
		switch {
		case r >= '0' && r <= '9':
		case r >= '０' && r <= '９':
			r = r - '０' + '0'
		case r == '+' || r == '＋':
			if plus || n > 1 {
				return "", false
			}
			plus = true
			continue
		case isPhoneSeparator(r):
			continue
		default:
			return "", false
		}
		if n == len(buf) {
			return "", false
		}
		buf[n] = byte(r)
		n++
	}
	d := buf[1:n]
	var c []byte
	switch {
	case plus:
		c = international(buf[0:n])
	case len(d) > 2 && d[0] == '0' && d[1] == '0':
		c = international(buf[2:n])
	case isCNMobile(d):
		c = d
	case len(d) == 13 && d[0] == '8' && d[1] == '6' && isCNMobile(d[2:]):
		c = d[2:]
	}
	if c == nil {
		return "", false
	}
	// Most phones arrive canonical or with only a prefix in front: reuse s.
	if len(s) >= len(c) && s[len(s)-len(c):] == string(c) {
		return s[len(s)-len(c):], true
	}
	return string(c), true
}

// international returns the canonical form of the digits b[1:], which
// followed an international prefix: a Chinese mobile's 11 digits after "86",
// or b itself with b[0] overwritten by '+' when the digits are an E.164
// number. It returns nil when they are neither.
func international(b []byte) []byte {
	d := b[1:]
	if len(d) == 13 && d[0] == '8' && d[1] == '6' && isCNMobile(d[2:]) {
		return d[2:]
	}
	if len(d) < 8 || len(d) > 15 || d[0] == '0' {
		return nil
	}
	b[0] = '+'
	return b
}

// isCNMobile reports whether the ASCII digits d match ^1[3-9]\d{9}$.
func isCNMobile(d []byte) bool {
	return len(d) == 11 && d[0] == '1' && d[1] >= '3' && d[1] <= '9'
}

func isPhoneSeparator(r rune) bool {
	switch r {
	case '-', '(', ')', '（', '）', '－', '\u2212':
		return true
	}
	return (r >= '\u2010' && r <= '\u2015') || unicode.IsSpace(r)
}
