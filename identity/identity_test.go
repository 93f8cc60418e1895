package identity

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/pipeline"
)

func TestIsBlocked(t *testing.T) {
	tests := []struct {
		in   string
		want bool
	}{
		{"", true},
		{"   ", true},
		{"\u3000", true},
		{"null", true},
		{"NULL", true},
		{" Null ", true},
		{"undefined", true},
		{"UNDEFINED", true},
		{"0", true},
		{"000", true},
		{"0000", true},
		{"00000000000", true},
		{"-1", true},
		{" -1\t", true},
		{"nil", false},
		{"nul", false},
		{"nulls", false},
		{"-2", false},
		{"-0", false},
		{"1", false},
		{"0001", false},
		{"1000", false},
		{"abcd", false},
		{"undefine", false},
		{"13800000000", false},
		{"oA_xyz", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			if got := IsBlocked(tt.in); got != tt.want {
				t.Errorf("IsBlocked(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestNormalizePhone(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // "" means malformed
	}{
		{"cn mobile", "13800000000", "13800000000"},
		{"cn mobile trimmed", "  13912345678\t", "13912345678"},
		{"cn mobile spaces", "138 0000 0000", "13800000000"},
		{"cn mobile dashes", "138-0000-0000", "13800000000"},
		{"cn mobile brackets", "(138)0000-0000", "13800000000"},
		{"plus86", "+8613800000000", "13800000000"},
		{"plus86 spaces dashes", "+86 138-0000-0000", "13800000000"},
		{"plus86 bracketed", "(+86) 138 0000 0000", "13800000000"},
		{"0086", "008613800000000", "13800000000"},
		{"0086 spaces", "0086 138 0000 0000", "13800000000"},
		{"86", "8613800000000", "13800000000"},
		{"86 dashes", "86-138-0000-0000", "13800000000"},
		{"full-width digits and brackets", "（＋８６）１３８－００００－００００", "13800000000"},
		{"ideographic space", "138\u30000000\u30000000", "13800000000"},
		{"en dash", "138\u20130000\u20130000", "13800000000"},
		{"second digit 9", "19912345678", "19912345678"},
		{"e164 us", "+1 (415) 555-2671", "+14155552671"},
		{"e164 uk", "+44 20 7946 0958", "+442079460958"},
		{"e164 00 prefix becomes plus", "0044 20 7946 0958", "+442079460958"},
		{"e164 shortest 8 digits", "+12345678", "+12345678"},
		{"e164 longest 15 digits", "+123456789012345", "+123456789012345"},
		{"e164 cn landline kept whole", "+86 755 1234 5678", "+8675512345678"},
		{"e164 plus without 86 before cn mobile", "+13800000000", "+13800000000"},

		{"empty", "", ""},
		{"zero", "0", ""},
		{"letters", "138abc00000", ""},
		{"dots", "138.0000.0000", ""},
		{"extension", "13800000000 ext 12", ""},
		{"ten digits", "1380000000", ""},
		{"twelve digits", "138000000000", ""},
		{"second digit 2", "12800000000", ""},
		{"second digit 0", "10800000000", ""},
		{"first digit 2", "23800000000", ""},
		{"plus86 bad mobile", "+86 128 0000 0000", "+8612800000000"},
		{"86 bad mobile no plus", "8612800000000", ""},
		{"86 landline no plus", "8675512345678", ""},
		{"bare foreign number", "442079460958", ""},
		{"plus in the middle", "138+00000000", ""},
		{"two plus", "++8613800000000", ""},
		{"plus then 00", "+008613800000000", ""},
		{"e164 leading zero", "+0441234567", ""},
		{"e164 7 digits", "+1234567", ""},
		{"e164 16 digits", "+1234567890123456", ""},
		{"00 prefix 7 digits", "001234567", ""},
		{"way too long", "+86 138 0000 0000 0000 0000 0000", ""},
		{"only separators", "( - )", ""},
		{"only plus", "+", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := NormalizePhone(tt.in)
			if want := tt.want != ""; ok != want || got != tt.want {
				t.Errorf("NormalizePhone(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, want)
			}
		})
	}
}

var phoneShape = regexp.MustCompile(`^(1[3-9]\d{9}|\+[1-9]\d{7,14})$`)

func FuzzNormalizePhone(f *testing.F) {
	for _, s := range []string{"13800000000", "+86 138-0000-0000", "0044 20 7946 0958", "（＋８６）１３８", "+", "00", "8613800000000"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, ok := NormalizePhone(s)
		if !ok {
			if c != "" {
				t.Fatalf("NormalizePhone(%q) = %q with ok=false", s, c)
			}
			return
		}
		if !phoneShape.MatchString(c) {
			t.Fatalf("NormalizePhone(%q) = %q, not canonical", s, c)
		}
		if again, ok := NormalizePhone(c); !ok || again != c {
			t.Fatalf("NormalizePhone(%q) = %q, %v; want it unchanged", c, again, ok)
		}
	})
}

func TestParseIdentityType(t *testing.T) {
	tests := []struct {
		in     string
		want   pipeline.IdentityKind
		wantOK bool
	}{
		{"phone", pipeline.KindPhone, true},
		{"PHONE", pipeline.KindPhone, true},
		{" Phone ", pipeline.KindPhone, true},
		{"id", pipeline.KindThirdID, true},
		{"ID", pipeline.KindThirdID, true},
		{"thirdId", pipeline.KindThirdID, true},
		{"THIRDID", pipeline.KindThirdID, true},
		{"openid", pipeline.KindOpenID, true},
		{"openId", pipeline.KindOpenID, true},
		{"unionid", pipeline.KindUnionID, true},
		{"UnionID", pipeline.KindUnionID, true},
		{"", "", false},
		{"email", pipeline.KindEmail, true},
		{" EMAIL ", pipeline.KindEmail, true},
		{"e-mail", "", false},
		{"third_id", "", false},
		{"mobile", "", false},
		{"null", "", false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%q", tt.in), func(t *testing.T) {
			got, ok := ParseIdentityType(tt.in)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("ParseIdentityType(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestMaskPhone(t *testing.T) {
	tests := []struct{ in, want string }{
		{"13800000000", "138****0000"},
		{"13912345678", "139****5678"},
		{"+14155552671", "+14****2671"},
		{"+442079460958", "+44****0958"},
		{"+12345678", "+1****78"},
		{"1234567", "1****7"},
		{"12345", "1****5"},
		{"1234", "****"},
		{"1", "****"},
		{"", ""},
		{"１３８００００００００", "１３８****００００"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := MaskPhone(tt.in); got != tt.want {
				t.Errorf("MaskPhone(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestMaskID(t *testing.T) {
	tests := []struct{ in, want string }{
		{"oA_xY1234567Q9Zk", "oA_x****9Zk"},
		{"o6_bmjrPTlm6_2sgVt7hMZOPfL2M", "o6_b****L2M"},
		{"abcdefghijkl", "abcd****jkl"},
		{"abcdefghijk", "ab****jk"},
		{"abcdefgh", "ab****gh"},
		{"abcdefg", "a****g"},
		{"abcde", "a****e"},
		{"abcd", "****"},
		{"a", "****"},
		{"", ""},
		{"会员编号一二三四五六七八", "会员编号****六七八"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := MaskID(tt.in); got != tt.want {
				t.Errorf("MaskID(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestMaskNeverRevealsLongValues(t *testing.T) {
	for n := 0; n <= 40; n++ {
		s := strings.Repeat("x", n)
		for _, mask := range []func(string) string{MaskPhone, MaskID} {
			got := mask(s)
			switch {
			case n == 0 && got != "":
				t.Errorf("mask of empty = %q", got)
			case n > 0 && !strings.Contains(got, maskStars):
				t.Errorf("mask of %d runes = %q, no stars", n, got)
			case n > 4 && utf8.RuneCountInString(strings.ReplaceAll(got, maskStars, "")) >= n:
				t.Errorf("mask of %d runes = %q keeps everything", n, got)
			}
		}
	}
}
