package jsonscan

import "bytes"

// ParseInt returns the value of raw, a number token, as json.Unmarshal
// stores it in a Go integer of bitSize bits (8 to 64): only a plain
// integer ("-0" included) that fits; a fraction or an exponent, even one
// giving an integer such as 1.0 or 1e3, is not one (encoding/json reports
// an UnmarshalTypeError). It does not allocate.
func ParseInt(raw []byte, bitSize int) (int64, bool) {
	neg := len(raw) > 0 && raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	if len(digits) == 0 {
		return 0, false
	}
	limit := uint64(1) << uint(bitSize-1) // |min|; max is limit-1
	var u uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		if u > (limit+9)/10 {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
		if u > limit {
			return 0, false
		}
	}
	switch {
	case neg:
		return -int64(u-1) - 1, true // u ≤ limit
	case u < limit:
		return int64(u), true
	}
	return 0, false
}

// ParseIntegral returns the value of raw, one complete JSON value, when it
// is a number without a fractional part that fits an int64 ("1", "1.0",
// "10e-1", "-0"), as a schema's "integer" type reads numbers rather than as
// encoding/json does (see ParseInt). It decides exactly, from the digits,
// so that no float rounding makes 1.0000000000000000001 an integer, and in
// time linear in len(raw) whatever the exponent.
func ParseIntegral(raw []byte) (int64, bool) {
	if len(raw) == 0 || (raw[0] != '-' && (raw[0] < '0' || raw[0] > '9')) {
		return 0, false // not a number
	}
	neg := raw[0] == '-'
	if neg {
		raw = raw[1:]
	}
	// raw = intPart [ "." frac ] [ ("e"|"E") [sign] exp ], as JSON's grammar.
	end := len(raw)
	expAt := bytes.IndexAny(raw, "eE")
	if expAt >= 0 {
		end = expAt
	}
	mant := raw[:end]
	intPart, frac := mant, []byte(nil)
	if dot := bytes.IndexByte(mant, '.'); dot >= 0 {
		intPart, frac = mant[:dot], mant[dot+1:]
	}
	const maxExp = 1 << 20 // beyond any digit count of a bounded body
	exp := 0
	if expAt >= 0 {
		e := raw[expAt+1:]
		expNeg := len(e) > 0 && e[0] == '-'
		if len(e) > 0 && (e[0] == '-' || e[0] == '+') {
			e = e[1:]
		}
		for _, c := range e {
			if c < '0' || c > '9' {
				return 0, false
			}
			if exp < maxExp {
				exp = exp*10 + int(c-'0')
			}
		}
		if expNeg {
			exp = -exp
		}
	}
	// The value is digits × 10^(exp-len(frac)), digits = intPart‖frac.
	n := len(intPart) + len(frac)
	digit := func(i int) byte {
		if i < len(intPart) {
			return intPart[i]
		}
		return frac[i-len(intPart)]
	}
	first, last := -1, -1 // the first and last non-zero digit
	for i := 0; i < n; i++ {
		c := digit(i)
		if c < '0' || c > '9' {
			return 0, false
		}
		if c != '0' {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if n == 0 {
		return 0, false
	}
	if first < 0 {
		return 0, true // zero, whatever the exponent
	}
	scale := exp - len(frac) + (n - 1 - last) // power of ten after the last non-zero digit
	if scale < 0 || last-first+1+scale > 19 {
		return 0, false // a fraction, or beyond int64
	}
	var u uint64
	for i := first; i <= last; i++ {
		u = u*10 + uint64(digit(i)-'0')
	}
	for range scale {
		u *= 10
	}
	// At most 19 digits: u < 10^19 < 2^64, so no step above overflowed.
	switch {
	case !neg && u <= 1<<63-1:
		return int64(u), true
	case neg && u <= 1<<63:
		return int64(-u), true
	}
	return 0, false
}
