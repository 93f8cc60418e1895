package identity

import (
	"strings"

	"github.com/groupmatch/groupmatch/pipeline"
)

// ParseIdentityType maps a record's identityType to the kind it names:
// "phone", "id", "openid", "unionid", and the platform's historical "thirdId"
// for "id". Letter case and surrounding white space are ignored. ok is false,
// and the kind "", for anything else, including "" (callers tell a missing
// identityType from an unknown one with IsBlocked first).
func ParseIdentityType(s string) (pipeline.IdentityKind, bool) {
	s = strings.TrimSpace(s)
	switch {
	case strings.EqualFold(s, "phone"):
		return pipeline.KindPhone, true
	case strings.EqualFold(s, "id"), strings.EqualFold(s, "thirdId"):
		return pipeline.KindThirdID, true
	case strings.EqualFold(s, "openid"):
		return pipeline.KindOpenID, true
	case strings.EqualFold(s, "unionid"):
		return pipeline.KindUnionID, true
	}
	return "", false
}
