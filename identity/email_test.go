package identity

import (
	"strings"
	"testing"
)

func TestNormalizeEmail(t *testing.T) {
	tests := []struct {
		in, want string // want "" means malformed
	}{
		{"alice@example.com", "alice@example.com"},
		{"  Alice.Smith@Example.COM\t", "alice.smith@example.com"},
		{"a+tag@sub.example.cn", "a+tag@sub.example.cn"},
		{"\u3000bob@example.org\u3000", "bob@example.org"},
		{"用户@例子.中国", "用户@例子.中国"},
		{"", ""},
		{"alice", ""},
		{"@example.com", ""},
		{"alice@", ""},
		{"alice@example", ""},
		{"alice@.com", ""},
		{"alice@example.", ""},
		{"a@b@example.com", ""},
		{"al ice@example.com", ""},
		{"alice@exa mple.com", ""},
		{"alice\x00@example.com", ""},
		{"alice\x7f@example.com", ""},
		{"alice\u200b@example.com", ""},
		{"alice\u2028@example.com", ""},
		{"alice\xff@example.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, ok := NormalizeEmail(tt.in)
			if want := tt.want != ""; ok != want || got != tt.want {
				t.Errorf("NormalizeEmail(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, want)
			}
			if ok {
				if again, ok := NormalizeEmail(got); !ok || again != got {
					t.Errorf("NormalizeEmail(%q) = %q, %v; want it unchanged", got, again, ok)
				}
			}
		})
	}
}

func TestMaskEmail(t *testing.T) {
	tests := []struct{ in, want string }{
		{"alice@example.com", "a***@example.com"},
		{"a@example.com", "a***@example.com"},
		{"用户@例子.中国", "用***@例子.中国"},
		{"", ""},
		{"not-an-address", MaskID("not-an-address")},
		{"@example.com", MaskID("@example.com")},
		{"alice@", MaskID("alice@")},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got := MaskEmail(tt.in)
			if got != tt.want {
				t.Errorf("MaskEmail(%q) = %q, want %q", tt.in, got, tt.want)
			}
			if local, _, ok := strings.Cut(tt.in, "@"); ok && len(local) > 1 && strings.Contains(got, local) {
				t.Errorf("MaskEmail(%q) = %q shows the local part", tt.in, got)
			}
		})
	}
}
