package identity

import "unicode/utf8"

// maskStars replaces the hidden middle of a masked value. It has a fixed
// width, so a masked value does not reveal the length of what it hides.
const maskStars = "****"

// MaxMaskLen bounds the bytes of one masked value: at most 7 kept runes of
// at most 4 bytes each, and the stars.
const MaxMaskLen = 7*utf8.UTFMax + len(maskStars)

// MaskPhone hides most of a phone for a result page: a value of 11 runes or
// more keeps its first 3 and last 4 ("13800000000" → "138****0000",
// "+14155552671" → "+14****2671"); 8–10 runes keep 2 and 2; 5–7 keep 1 and
// 1; up to 4 runes give "****". "" stays "". The hidden part is always
// "****", whatever its length, and a value longer than 4 runes is never
// returned whole. Safe on any string, canonical or not.
func MaskPhone(s string) string {
	var buf [MaxMaskLen]byte
	return string(appendMask(buf[:0], s, true))
}

// MaskID hides most of an openid, unionid or other identifier for a result
// page: a value of 12 runes or more keeps its first 4 and last 3
// ("oA_xY1234567Q9Zk" → "oA_x****9Zk"); 8–11 runes keep 2 and 2; 5–7 keep 1
// and 1; up to 4 runes give "****". "" stays "". Like MaskPhone, the hidden
// part is always "****" and a value longer than 4 runes is never returned
// whole.
func MaskID(s string) string {
	var buf [MaxMaskLen]byte
	return string(appendMask(buf[:0], s, false))
}

// AppendMaskedPhone appends MaskPhone(s) to dst, at most MaxMaskLen bytes.
func AppendMaskedPhone(dst []byte, s string) []byte { return appendMask(dst, s, true) }

// AppendMaskedID appends MaskID(s) to dst, at most MaxMaskLen bytes.
func AppendMaskedID(dst []byte, s string) []byte { return appendMask(dst, s, false) }

// appendMask appends the masked form of s to dst (see MaskPhone, MaskID).
func appendMask(dst []byte, s string, phone bool) []byte {
	n := utf8.RuneCountInString(s)
	var keepHead, keepTail int
	switch {
	case n == 0:
		return dst
	case n <= 4:
	case n <= 7:
		keepHead, keepTail = 1, 1
	case phone && n <= 10, !phone && n <= 11:
		keepHead, keepTail = 2, 2
	case phone:
		keepHead, keepTail = 3, 4
	default:
		keepHead, keepTail = 4, 3
	}
	i, r := 0, 0
	for ; r < keepHead; r++ {
		_, w := utf8.DecodeRuneInString(s[i:])
		i += w
	}
	dst = append(dst, s[:i]...)
	dst = append(dst, maskStars...)
	j := len(s)
	for r = 0; r < keepTail; r++ {
		_, w := utf8.DecodeLastRuneInString(s[:j])
		j -= w
	}
	return append(dst, s[j:]...)
}
