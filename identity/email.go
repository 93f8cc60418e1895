package identity

import (
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/pipeline"
)

// NormalizeEmail returns the canonical form of the email address s, or
// ok=false when s is malformed. Like NormalizePhone it does not apply the
// block list.
//
// The canonical form is s trimmed of white space and lower-cased (the
// whole address: the platform treats addresses case-insensitively). It is
// valid when it holds exactly one "@" with a non-empty local part before it
// and a domain after it that contains a dot, neither at its start nor its
// end, and no white space, control or format character, nor invalid UTF-8,
// anywhere. The length limit (pipeline.MaxEmailLen) is the caller's, as for
// every kind.
//
// NormalizeEmail is idempotent: a canonical form normalises to itself.
func NormalizeEmail(s string) (string, bool) {
	s = strings.TrimSpace(s)
	at := strings.IndexByte(s, '@')
	if at <= 0 || strings.IndexByte(s[at+1:], '@') >= 0 {
		return "", false
	}
	domain := s[at+1:]
	if dot := strings.IndexByte(domain, '.'); dot <= 0 || strings.HasSuffix(domain, ".") {
		return "", false
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c <= ' ' || c == 0x7f {
				return "", false
			}
			i++
			continue
		}
		r, w := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && w == 1 || unicode.IsSpace(r) || unicode.In(r, unicode.Cc, unicode.Cf) ||
			r == '\u2028' || r == '\u2029' {
			return "", false
		}
		i += w
	}
	return strings.ToLower(s), true
}

func normalizeEmail(s string) (string, pipeline.Reason) {
	if c, ok := NormalizeEmail(s); ok {
		return c, pipeline.ReasonNone
	}
	return "", pipeline.ReasonInvalidEmail
}

// MaskEmail hides most of an email address for a result page: its first
// character, "***@" and its domain ("alice@example.com" →
// "a***@example.com"); the local part's length is never shown. A value
// without an "@" after its first character (a malformed address) is
// masked as MaskID masks it. "" stays "".
func MaskEmail(s string) string {
	return string(AppendMaskedEmail(nil, s))
}

// AppendMaskedEmail appends MaskEmail(s) to dst.
func AppendMaskedEmail(dst []byte, s string) []byte {
	at := strings.LastIndexByte(s, '@')
	_, w := utf8.DecodeRuneInString(s)
	if at < w || at == len(s)-1 {
		return AppendMaskedID(dst, s)
	}
	dst = append(dst, s[:w]...)
	dst = append(dst, "***@"...)
	return append(dst, s[at+1:]...)
}
