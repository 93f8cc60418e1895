package bench

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	"github.com/groupmatch/groupmatch/matcher/matchertest"
	"github.com/groupmatch/groupmatch/pipeline"
)

// Mode is how the records of one batch are to be matched.
type Mode int

// The modes a workload mixes. Exact modes send only the field their
// identityType names; fuzzy modes send every identifier they list.
const (
	ModePhone   Mode = iota // exact, identityType phone
	ModeID                  // exact, identityType id (half of the records spell it "thirdId")
	ModeOpenID              // exact, identityType openid; scoped to gzh/wx1 for a share of batches
	ModeUnionID             // exact, identityType unionid
	ModeFuzzy               // fuzzy, identifyWay 1, with unionid, openid, phone and thirdId
	ModeFuzzy2              // fuzzy, identifyWay 2, with thirdId and phone
	numModes
)

var modeNames = [numModes]string{"phone", "id", "openid", "unionid", "fuzzy", "fuzzy2"}

func (m Mode) String() string {
	if m >= 0 && m < numModes {
		return modeNames[m]
	}
	return "mode" + strconv.Itoa(int(m))
}

// Mix weighs the modes: a batch's mode is drawn with probability
// proportional to its weight.
type Mix [numModes]float64

// DefaultMix is the mix of the documented workload:
// phone=25,id=10,openid=15,unionid=10,fuzzy=30,fuzzy2=10.
var DefaultMix = Mix{25, 10, 15, 10, 30, 10}

// ParseMix reads "mode=weight,…"; modes left out weigh 0.
func ParseMix(s string) (Mix, error) {
	var m Mix
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, val, ok := strings.Cut(part, "=")
		if !ok {
			return m, fmt.Errorf("bench: mix: %q is not mode=weight", part)
		}
		i := slices.Index(modeNames[:], strings.TrimSpace(name))
		if i < 0 {
			return m, fmt.Errorf("bench: mix: unknown mode %q (want one of %s)", name, strings.Join(modeNames[:], ", "))
		}
		w, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil || w < 0 {
			return m, fmt.Errorf("bench: mix: weight of %s must be a number ≥ 0", name)
		}
		m[i] = w
	}
	if m.total() <= 0 {
		return m, errors.New("bench: mix: no mode has a positive weight")
	}
	return m, nil
}

func (m Mix) total() float64 {
	t := 0.0
	for _, w := range m {
		t += w
	}
	return t
}

// String formats m as ParseMix reads it.
func (m Mix) String() string {
	var b strings.Builder
	for i, w := range m {
		if w == 0 {
			continue
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(modeNames[i] + "=" + strconv.FormatFloat(w, 'g', -1, 64))
	}
	return b.String()
}

func (m Mix) draw(rng *rand.Rand) Mode {
	x := rng.Float64() * m.total()
	for i, w := range m {
		if x < w {
			return Mode(i)
		}
		x -= w
	}
	return numModes - 1
}

// Workload is a reproducible set of batchAdd requests over the first
// Customers customers of matchertest's Big directory: batch b is a pure
// function of Seed and b, so a driver and the baseline can each generate
// it again without storing it.
type Workload struct {
	Customers int `json:"customers"` // directory size; default 1,000,000
	Records   int `json:"records"`   // records in all; default 2,000,000
	BatchSize int `json:"batchSize"` // records per request; default 500 (the API's maximum)
	Mix       Mix `json:"-"`         // modes of the batches; default DefaultMix
	// MatchRate is the share of records naming a customer of the
	// directory by an identifier that customer has; the others name
	// identities nobody has (NOT_FOUND). Default 0.92. Records of
	// customers sharing a phone come out AMBIGUOUS when matched by it.
	MatchRate float64 `json:"matchRate"`
	// DeleteShare is the share of batches with optType delete; default 0.1.
	DeleteShare float64 `json:"deleteShare"`
	// Groups is how many group names each record carries; default 2.
	Groups int `json:"groups"`
	// GroupNames is how many distinct group names the workload uses;
	// default 20. GroupPrefix starts each name; default "bench-".
	GroupNames  int    `json:"groupNames"`
	GroupPrefix string `json:"groupPrefix"`
	// FormattedPhones is the share of phones sent as "+86 138-0000-0000"
	// rather than in canonical form; default 0.25.
	FormattedPhones float64 `json:"formattedPhones"`
	// ScopedOpenIDs is the share of openid batches scoped to the gzh/wx1
	// application with accurateMatchType/Value; default 0.67.
	ScopedOpenIDs float64 `json:"scopedOpenIds"`
	Seed          uint64  `json:"seed"` // default 1
}

// WithDefaults returns w with zero fields set to their defaults. A
// negative MatchRate, DeleteShare, FormattedPhones or ScopedOpenIDs means 0.
func (w Workload) WithDefaults() Workload {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	def(&w.Customers, 1000000)
	def(&w.Records, 2000000)
	def(&w.BatchSize, pipeline.MaxRecords)
	def(&w.Groups, 2)
	def(&w.GroupNames, 20)
	if w.Mix.total() <= 0 {
		w.Mix = DefaultMix
	}
	deff := func(v *float64, d float64) {
		switch {
		case *v == 0:
			*v = d
		case *v < 0:
			*v = 0
		}
	}
	deff(&w.MatchRate, 0.92)
	deff(&w.DeleteShare, 0.1)
	deff(&w.FormattedPhones, 0.25)
	deff(&w.ScopedOpenIDs, 0.67)
	if w.GroupPrefix == "" {
		w.GroupPrefix = "bench-"
	}
	if w.Seed == 0 {
		w.Seed = 1
	}
	return w
}

// Validate reports the first setting out of range.
func (w Workload) Validate() error {
	switch {
	case w.Customers < 100:
		return errors.New("bench: customers must be at least 100")
	case w.Customers > maxCustomers:
		return fmt.Errorf("bench: customers must be at most %d", maxCustomers)
	case w.Records < 1:
		return errors.New("bench: records must be at least 1")
	case w.BatchSize < 1 || w.BatchSize > pipeline.MaxRecords:
		return fmt.Errorf("bench: batch size must be 1 to %d", pipeline.MaxRecords)
	case w.MatchRate > 1, w.DeleteShare > 1, w.FormattedPhones > 1, w.ScopedOpenIDs > 1:
		return errors.New("bench: shares must be at most 1")
	case w.GroupNames > 1000:
		return errors.New("bench: at most 1000 group names")
	case w.Groups < 1 || w.Groups > w.GroupNames:
		return errors.New("bench: groups per record must be 1 to the number of group names")
	case len(w.GroupPrefix)+3 > pipeline.MaxGroupNameLen:
		return errors.New("bench: group prefix too long")
	}
	return nil
}

// Batches is how many requests the workload sends.
func (w Workload) Batches() int { return (w.Records + w.BatchSize - 1) / w.BatchSize }

// batchLen is the number of records of batch b (the last may be short).
func (w Workload) batchLen(b int) int { return min(w.BatchSize, w.Records-b*w.BatchSize) }

// GroupName returns the j-th group name of the workload.
func (w Workload) GroupName(j int) string { return w.GroupPrefix + strconv.Itoa(j) }

// maxCustomers bounds the directory; customers from maxCustomers on are
// the ones misses are drawn from, whose identities nobody has.
const maxCustomers = 1 << 30

// Record is one record of a batch: as sent, and its normalised identifiers
// as the matcher would look them up (only the identityType's field for
// exact modes), which is what the baseline is given.
type Record struct {
	Raw pipeline.RawRecord
	// The normalised values the record is matched by; "" when absent.
	ThirdID, Phone, OpenID, UnionID string
	Groups                          []int // indexes of the group names (GroupName)
}

// Batch is one request of the workload.
type Batch struct {
	Index   int // from 0, in the order drivers send them
	Mode    Mode
	Params  pipeline.Params
	Records []Record
}

// Batch fills dst with batch b, reusing its slices.
func (w Workload) Batch(b int, dst *Batch) {
	rng := rand.New(rand.NewPCG(w.Seed, uint64(b)))
	dst.Index = b
	dst.Mode = w.Mix.draw(rng)
	p := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	if rng.Float64() < w.DeleteShare {
		p.OptType = pipeline.OptDelete
	}
	switch dst.Mode {
	case ModeOpenID:
		if rng.Float64() < w.ScopedOpenIDs {
			p.AppType, p.AppID = matchertest.BigApps[0].Type, matchertest.BigApps[0].ID
		}
	case ModeFuzzy:
		p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyUnionIDFirst
	case ModeFuzzy2:
		p.MatchingType, p.IdentifyWay = pipeline.MatchingFuzzy, pipeline.IdentifyThirdIDFirst
	}
	dst.Params = p
	n := w.batchLen(b)
	dst.Records = slices.Grow(dst.Records[:0], n)[:n]
	for j := range dst.Records {
		w.record(rng, dst.Mode, j, &dst.Records[j])
	}
}

// record draws one record of a batch of mode m.
func (w Workload) record(rng *rand.Rand, m Mode, j int, r *Record) {
	groups := r.Groups[:0]
	for len(groups) < w.Groups {
		g := rng.IntN(w.GroupNames)
		if !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	*r = Record{Groups: groups}
	hit := rng.Float64() < w.MatchRate
	i := w.customer(rng, m, hit)
	formatted := rng.Float64() < w.FormattedPhones
	phone := func() {
		r.Phone = matchertest.BigPhone(i, 0)
		r.Raw.Phone = r.Phone
		if formatted {
			r.Raw.Phone = "+86 " + r.Phone[:3] + "-" + r.Phone[3:7] + "-" + r.Phone[7:]
		}
	}
	switch m {
	case ModePhone:
		r.Raw.IdentityType = "phone"
		phone()
	case ModeID:
		r.Raw.IdentityType = "id"
		if j%2 == 1 {
			r.Raw.IdentityType = "thirdId"
		}
		r.ThirdID = thirdID(i)
	case ModeOpenID:
		r.Raw.IdentityType = "openid"
		r.OpenID = matchertest.BigOpenID(i, 0)
	case ModeUnionID:
		r.Raw.IdentityType = "unionid"
		r.UnionID = unionID(i)
	case ModeFuzzy:
		r.UnionID = matchertest.BigUnionID(i)
		apps := matchertest.BigOpenApps(i)
		r.OpenID = matchertest.BigOpenID(i, apps[rng.IntN(len(apps))])
		if matchertest.BigPhones(i) > 0 || !hit {
			phone()
		}
		r.ThirdID = matchertest.BigThirdID(i)
	case ModeFuzzy2:
		r.ThirdID = matchertest.BigThirdID(i)
		if matchertest.BigPhones(i) > 0 || !hit {
			phone()
		}
	}
	if r.Raw.ThirdID == "" {
		r.Raw.ThirdID = r.ThirdID
	}
	r.Raw.OpenID, r.Raw.UnionID = r.OpenID, r.UnionID
	var b strings.Builder
	for k, g := range r.Groups {
		if k > 0 {
			b.WriteByte(',')
		}
		b.WriteString(w.GroupName(g))
	}
	r.Raw.Groups = b.String()
}

// thirdID and unionID are the customer's, or, for a customer beyond the
// directory, values nobody has.
func thirdID(i int) string {
	if t := matchertest.BigThirdID(i); t != "" {
		return t
	}
	return "crm-" + strconv.Itoa(i)
}

func unionID(i int) string {
	if u := matchertest.BigUnionID(i); u != "" {
		return u
	}
	return "o6_none_" + strconv.Itoa(i)
}

// customer draws the customer a record names. A hit is a customer of the
// directory holding what mode m matches by; a miss is a customer beyond the
// directory, whose identities nobody has.
func (w Workload) customer(rng *rand.Rand, m Mode, hit bool) int {
	if !hit {
		return maxCustomers + rng.IntN(maxCustomers)
	}
	for {
		i := rng.IntN(w.Customers)
		switch m {
		case ModePhone:
			if matchertest.BigPhones(i) == 0 {
				continue
			}
		case ModeID:
			if matchertest.BigThirdID(i) == "" {
				continue
			}
		case ModeOpenID:
			if !slices.Contains(matchertest.BigOpenApps(i), 0) {
				continue
			}
		case ModeUnionID:
			if matchertest.BigUnionID(i) == "" {
				continue
			}
		case ModeFuzzy2:
			if matchertest.BigThirdID(i) == "" && matchertest.BigPhones(i) == 0 {
				continue
			}
		}
		return i
	}
}

// AppendBody appends b's batchAdd body (SPEC §4) to dst.
func AppendBody(dst []byte, b *Batch) []byte {
	p := b.Params
	dst = append(dst, `{"publicParams":{"isMatching":`...)
	dst = strconv.AppendBool(dst, p.IsMatching)
	if p.MatchingType != 0 {
		dst = append(dst, `,"matchingType":`...)
		dst = strconv.AppendInt(dst, int64(p.MatchingType), 10)
	}
	if p.IdentifyWay != 0 {
		dst = append(dst, `,"identifyWay":`...)
		dst = strconv.AppendInt(dst, int64(p.IdentifyWay), 10)
	}
	if p.AppType != "" {
		dst = append(dst, `,"accurateMatchType":`...)
		dst = matchertest.AppendString(dst, p.AppType)
		dst = append(dst, `,"accurateMatchValue":`...)
		dst = matchertest.AppendString(dst, p.AppID)
	}
	dst = append(dst, `,"optType":`...)
	dst = matchertest.AppendString(dst, string(p.OptType))
	dst = append(dst, `},"data":[`...)
	for i := range b.Records {
		r := &b.Records[i].Raw
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		first := true
		field := func(name, v string) {
			if v == "" {
				return
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = append(dst, '"')
			dst = append(dst, name...)
			dst = append(dst, `":`...)
			dst = matchertest.AppendString(dst, v)
		}
		field("identityType", r.IdentityType)
		field("thirdId", r.ThirdID)
		field("openid", r.OpenID)
		field("unionid", r.UnionID)
		field("phone", r.Phone)
		field("groups", r.Groups)
		dst = append(dst, '}')
	}
	return append(dst, "]}"...)
}
