package identity

import (
	"strings"
	"unicode/utf8"
)

// IsBlocked reports whether s, once trimmed of white space, counts as an
// absent value: "", "null", "undefined", "-1", or a run of zeros ("0",
// "000", ...). Letters are compared case-insensitively ("NULL", "Undefined").
//
// The block list applies to identity values and identityType only; group
// names are the enterprise's own labels and are never blocked.
func IsBlocked(s string) bool {
	return isBlockedTrimmed(strings.TrimSpace(s))
}

func isBlockedTrimmed(s string) bool {
	switch len(s) {
	case 0:
		return true
	case 2:
		if s == "-1" {
			return true
		}
	case 4:
		if strings.EqualFold(s, "null") {
			return true
		}
	case 9:
		if strings.EqualFold(s, "undefined") {
			return true
		}
	}
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
}

// LongerThan reports whether s has more than max code points; each byte that
// is not valid UTF-8 counts as one. Strings of at most max bytes are judged
// without counting. The limits themselves (pipeline.MaxIdentityLen,
// pipeline.MaxPhoneLen) belong to the vocabulary.
func LongerThan(s string, max int) bool {
	return len(s) > max && utf8.RuneCountInString(s) > max
}

// Storable returns s, or "" when it holds a NUL byte: PostgreSQL text
// cannot hold one, so such a value could be neither looked up nor stored.
func Storable(s string) string {
	if HasNUL(s) {
		return ""
	}
	return s
}

// HasNUL reports whether s holds a NUL byte, which PostgreSQL text cannot
// hold.
func HasNUL(s string) bool {
	return strings.IndexByte(s, 0) >= 0
}

// Usable returns s trimmed of white space, or "" when it is blocked
// (IsBlocked). A trimmed s is returned as is, without allocating.
func Usable(s string) string {
	s = strings.TrimSpace(s)
	if isBlockedTrimmed(s) {
		return ""
	}
	return s
}
