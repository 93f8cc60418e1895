// Package matchertest generates customer directories for the matcher's
// tests and benchmarks: directory lines in the JSON lines format of SPEC §9,
// and a large, realistic directory whose every customer can be recomputed
// from its position, so that look-up benchmarks can ask for identities that
// exist without holding a million customers in memory.
//
// It imports nothing of groupmatch but the pipeline vocabulary, so that
// tests inside package matcher can use it.
package matchertest

import (
	"bufio"
	"io"
	"math/rand/v2"
	"strconv"
	"unicode/utf8"

	"github.com/groupmatch/groupmatch/pipeline"
)

// Bound is a phone or unionid as a directory line gives it: Value as
// written (it may carry spaces or a prefix), and the application it was bound
// through, AppType and AppID both "" when none.
type Bound struct {
	Value, AppType, AppID string
}

// OpenID is an openid with the application that issued it.
type OpenID struct {
	OpenID, AppType, AppID string
}

// Customer is one directory line. A zero-valued field is left out of the
// line; UnionID and Phones are written as plain strings when unbound and as
// objects when bound to an application.
type Customer struct {
	ID      int64
	ThirdID string
	UnionID Bound
	Phones  []Bound
	OpenIDs []OpenID
}

// AppendLine appends c's directory line, without the newline, to dst.
func (c *Customer) AppendLine(dst []byte) []byte {
	dst = append(dst, `{"customerId":`...)
	dst = strconv.AppendInt(dst, c.ID, 10)
	if c.ThirdID != "" {
		dst = append(dst, `,"thirdId":`...)
		dst = AppendString(dst, c.ThirdID)
	}
	if c.UnionID.Value != "" {
		dst = append(dst, `,"unionid":`...)
		dst = appendBound(dst, "unionid", c.UnionID)
	}
	if len(c.Phones) > 0 {
		dst = append(dst, `,"phones":[`...)
		for i, p := range c.Phones {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendBound(dst, "phone", p)
		}
		dst = append(dst, ']')
	}
	if len(c.OpenIDs) > 0 {
		dst = append(dst, `,"openids":[`...)
		for i, o := range c.OpenIDs {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, `{"openid":`...)
			dst = AppendString(dst, o.OpenID)
			dst = append(dst, `,"appType":`...)
			dst = AppendString(dst, o.AppType)
			dst = append(dst, `,"appId":`...)
			dst = AppendString(dst, o.AppID)
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

func appendBound(dst []byte, field string, b Bound) []byte {
	if b.AppType == "" && b.AppID == "" {
		return AppendString(dst, b.Value)
	}
	dst = append(dst, `{"`...)
	dst = append(dst, field...)
	dst = append(dst, `":`...)
	dst = AppendString(dst, b.Value)
	dst = append(dst, `,"appType":`...)
	dst = AppendString(dst, b.AppType)
	dst = append(dst, `,"appId":`...)
	dst = AppendString(dst, b.AppID)
	return append(dst, '}')
}

// AppendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD.
func AppendString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			dst = append(dst, '\\', byte(r))
		case r < 0x20:
			dst = append(dst, '\\', 'u', '0', '0', hex[r>>4], hex[r&0xF])
		default:
			dst = utf8.AppendRune(dst, r)
		}
	}
	return append(dst, '"')
}

// App is an application identities are bound through.
type App struct{ Type, ID string }

// BigApps are the applications of Big directories, in the order BigCustomer
// assigns openids. Read-only.
var BigApps = []App{
	{"gzh", "wx1"}, {"gzh", "wx2"}, {"workwechat", "ww1"}, {"contentminiapp", "mini1"}, {"YOUZAN", "shop1"},
}

// BigCustomer returns customer i (from 0) of the Big directory; it is a pure
// function of i, so the directory is reproducible, can be generated in
// parallel and can be asked about again without being stored. Customer i
// has id i+1 and, by the residues of i and a hash of it:
//
//   - thirdId "crm-<i>" for 95 % of customers;
//   - a unionid for 80 %, bound to gzh/wx1 for a tenth of those;
//   - no phone for 5 %, two for 10 %, else one; a tenth are bound to
//     YOUZAN/shop1, one in twenty is written with "+86 " and dashes, and
//     one customer in a hundred shares its first phone with customer i-1;
//   - openids in one to three of BigApps (1.6 on average); for one customer
//     in fifty the gzh/wx2 openid is the same string as the gzh/wx1 one.
//
// In all about 1.05 phones and 1.5 openids per customer.
func BigCustomer(i int) Customer {
	h := mix(uint64(i))
	c := Customer{ID: int64(i) + 1, ThirdID: BigThirdID(i)}
	if u := BigUnionID(i); u != "" {
		c.UnionID.Value = u
		if (h>>8)%10 == 0 {
			c.UnionID.AppType, c.UnionID.AppID = "gzh", "wx1"
		}
	}
	for k := range bigPhoneCount(h) {
		p := Bound{Value: BigPhone(i, k)}
		if (h>>16)%20 == 0 {
			p.Value = "+86 " + p.Value[:3] + "-" + p.Value[3:7] + "-" + p.Value[7:]
		}
		if (h>>24)%10 == uint64(k) {
			p.AppType, p.AppID = "YOUZAN", "shop1"
		}
		c.Phones = append(c.Phones, p)
	}
	for _, a := range bigOpenApps(h) {
		c.OpenIDs = append(c.OpenIDs, OpenID{OpenID: BigOpenID(i, a), AppType: BigApps[a].Type, AppID: BigApps[a].ID})
	}
	return c
}

func bigPhoneCount(h uint64) int {
	switch (h >> 32) % 20 {
	case 0:
		return 0
	case 1, 2:
		return 2
	}
	return 1
}

// bigOpenApps returns the indexes in BigApps of customer h's openids.
func bigOpenApps(h uint64) []int {
	switch (h >> 40) % 10 {
	case 0, 1, 2, 3, 4, 5:
		return []int{0}
	case 6, 7:
		return []int{0, 1}
	case 8:
		return []int{2, 3}
	}
	return []int{0, 2, 4}
}

// BigUnionID returns the canonical unionid of Big customer i, or "" when it
// has none.
func BigUnionID(i int) string {
	h := mix(uint64(i))
	if (h>>48)%5 == 0 {
		return ""
	}
	return "o6_" + token(mix(h^0x756e696f6e), 25)
}

// BigThirdID returns the thirdId of Big customer i, or "" when it has none.
func BigThirdID(i int) string {
	if mix(uint64(i))%20 == 7 {
		return ""
	}
	return "crm-" + strconv.Itoa(i)
}

// BigPhone returns the canonical k-th phone (from 0) Big customer i is
// generated with, whether or not the customer has that many phones (see
// BigPhones).
func BigPhone(i, k int) string {
	if k == 0 && i%100 == 1 {
		i-- // shares customer i-1's first phone
	}
	h := mix(uint64(i)*4 + uint64(k) + 0x70686f6e65)
	b := make([]byte, 11)
	b[0], b[1] = '1', byte('3'+h%7)
	h /= 7
	for j := 2; j < 11; j++ {
		b[j] = byte('0' + h%10)
		h /= 10
	}
	return string(b)
}

// BigPhones returns how many phones Big customer i has.
func BigPhones(i int) int { return bigPhoneCount(mix(uint64(i))) }

// BigOpenID returns the openid Big customer i has, or would have, in
// BigApps[app].
func BigOpenID(i, app int) string {
	h := mix(uint64(i))
	if app == 1 && h%50 == 3 {
		app = 0 // the same string as the gzh/wx1 openid
	}
	return "oA" + token(mix(h^uint64(app+1)<<56), 26)
}

// BigOpenApps returns the indexes in BigApps where Big customer i has an
// openid.
func BigOpenApps(i int) []int { return bigOpenApps(mix(uint64(i))) }

// WriteBig writes customers from to to-1 of the Big directory to w, one
// line each.
func WriteBig(w io.Writer, from, to int) error {
	bw := bufio.NewWriterSize(w, 256<<10)
	var line []byte
	for i := from; i < to; i++ {
		c := BigCustomer(i)
		line = append(c.AppendLine(line[:0]), '\n')
		if _, err := bw.Write(line); err != nil {
			return err
		}
	}
	return bw.Flush()
}

const tokenAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

// token returns n characters of tokenAlphabet drawn from seed.
func token(seed uint64, n int) string {
	b := make([]byte, n)
	var bits uint64
	for j := range b {
		if j%10 == 0 {
			seed = mix(seed)
			bits = seed
		}
		b[j] = tokenAlphabet[bits&63]
		bits >>= 6
	}
	return string(b)
}

// mix is SplitMix64's finaliser: a bijection of uint64 that scatters
// neighbouring inputs.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// BatchMode is how the records of a generated batch are to be matched.
type BatchMode int

// The modes of BigBatches.
const (
	ExactPhone        BatchMode = iota // exact by phone
	ExactID                            // exact by thirdId, half spelling identityType "thirdId"
	ExactOpenIDScoped                  // exact by the gzh/wx1 openid, accurateMatchType gzh/wx1
	ExactOpenID                        // exact by the gzh/wx1 openid, unscoped
	ExactUnionID                       // exact by unionid
	FuzzyWay1                          // fuzzy, identifyWay 1, every identity the customer has
	FuzzyWay2                          // fuzzy, identifyWay 2, thirdId and phone
)

// MixedModes is the default mix of BigBatches, a mode per entry: a quarter
// exact by phone, a tenth exact by id, a tenth exact by openid scoped and a
// twentieth unscoped, a tenth exact by unionid, three tenths fuzzy by
// identifyWay 1 and a tenth by identifyWay 2. Read-only.
var MixedModes = []BatchMode{
	ExactPhone, ExactPhone, ExactPhone, ExactPhone, ExactPhone,
	ExactID, ExactID, ExactOpenIDScoped, ExactOpenIDScoped, ExactOpenID, ExactUnionID, ExactUnionID,
	FuzzyWay1, FuzzyWay1, FuzzyWay1, FuzzyWay1, FuzzyWay1, FuzzyWay1, FuzzyWay2, FuzzyWay2,
}

// ExactModes is a mix of exact matching only. Read-only.
var ExactModes = []BatchMode{ExactPhone, ExactID, ExactOpenIDScoped, ExactOpenID, ExactUnionID}

// FuzzyModes is a mix of fuzzy matching only. Read-only.
var FuzzyModes = []BatchMode{FuzzyWay1, FuzzyWay2}

// BigBatches returns batches of Big directory records as a matcher consumes
// them: batchSize records per batch sharing the batch's params, the
// batches' records in order. Each batch draws its mode from modes (nil:
// MixedModes), and each record a customer among the first customers of the
// directory, from rng. One record in twelve names identities nobody has.
// Phones come in the canonical form or with "+86" and separators.
func BigBatches(rng *rand.Rand, customers, batches, batchSize int, tenantID int64, modes []BatchMode) []pipeline.RecordMessage {
	if modes == nil {
		modes = MixedModes
	}
	out := make([]pipeline.RecordMessage, 0, batches*batchSize)
	for b := range batches {
		p := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
		mode := modes[rng.IntN(len(modes))]
		switch mode {
		case ExactOpenIDScoped:
			p.AppType, p.AppID = BigApps[0].Type, BigApps[0].ID
		case FuzzyWay1:
			p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyUnionIDFirst
		case FuzzyWay2:
			p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyThirdIDFirst
		}
		for j := range batchSize {
			i := rng.IntN(customers)
			miss := rng.IntN(12) == 0
			if miss {
				i = customers + rng.IntN(1<<30) // beyond the directory: nobody has its identities
			}
			r := pipeline.RawRecord{Groups: "vip,新客户"}
			phone := ""
			if BigPhones(i) > 0 || miss {
				phone = BigPhone(i, 0)
				if rng.IntN(4) == 0 {
					phone = "+86 " + phone[:3] + "-" + phone[3:7] + "-" + phone[7:]
				}
			}
			third := "crm-" + strconv.Itoa(i)
			switch mode {
			case ExactPhone:
				r.IdentityType, r.Phone = "phone", phone
				if phone == "" {
					r.Phone = "13000000000"
				}
			case ExactID:
				r.IdentityType, r.ThirdID = "id", third
				if j%2 == 1 {
					r.IdentityType = "thirdId"
				}
			case ExactOpenIDScoped, ExactOpenID:
				r.IdentityType, r.OpenID = "openid", BigOpenID(i, 0)
			case ExactUnionID:
				r.IdentityType, r.UnionID = "unionid", BigUnionID(i)
				if r.UnionID == "" {
					r.UnionID = "o6_nobody"
				}
			case FuzzyWay1:
				r.UnionID, r.Phone, r.ThirdID = BigUnionID(i), phone, third
				apps := BigOpenApps(i)
				r.OpenID = BigOpenID(i, apps[rng.IntN(len(apps))])
			case FuzzyWay2:
				r.ThirdID, r.Phone = third, phone
			}
			out = append(out, pipeline.RecordMessage{
				V: pipeline.Version, TenantID: tenantID, BatchID: int64(b + 1), Index: j, Params: p, Record: r,
			})
		}
	}
	return out
}
