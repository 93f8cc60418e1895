package ingest

import (
	"bytes"
	"math"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/segmentio/kafka-go"

	"github.com/groupmatch/groupmatch/pipeline"
)

func TestValidIdempotencyKey(t *testing.T) {
	for key, want := range map[string]bool{
		"":                         true, // no key
		"a":                        true,
		"order-0001":               true,
		"!~":                       true, // 0x21 and 0x7E
		strings.Repeat("k", 64):    true,
		strings.Repeat("k", 65):    false,
		"order 1":                  false, // space
		"order\t1":                 false,
		"a\x00b":                   false,
		"a\x7fb":                   false,
		"\xff\xfe":                 false, // not UTF-8: failed in PostgreSQL (SQLSTATE 22021) before
		"订单1":                      false,
		strings.Repeat("订", 21):    false,
		strings.Repeat("k", 10000): false,
	} {
		if got := ValidIdempotencyKey(key); got != want {
			t.Errorf("ValidIdempotencyKey(%.30q) = %v, want %v", key, got, want)
		}
	}
}

// TestIdempotencyKeyRefusedOverHTTP checks that a malformed key is answered
// 400 before anything is stored: the test service has no store, so reaching
// it would panic.
func TestIdempotencyKeyRefusedOverHTTP(t *testing.T) {
	h := newTestService(t, Config{}).Handler()
	for name, keys := range map[string][]string{
		"65 characters": {strings.Repeat("k", 65)},
		"space inside":  {"order 1"},
		"not UTF-8":     {"\xff\xfeorder"},
		"control":       {"a\x01b"},
		"given twice":   {"k1", "k2"},
	} {
		t.Run(name, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodPost, "/api/open/audience/group/rel/batchAdd", strings.NewReader(validBody))
			req.Header.Set("X-Token", "good")
			for _, k := range keys {
				req.Header.Add("Idempotency-Key", k)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"INVALID_PARAMETER"`) ||
				!strings.Contains(rec.Body.String(), "Idempotency-Key") {
				t.Errorf("HTTP %d %s, want 400 INVALID_PARAMETER naming Idempotency-Key", rec.Code, rec.Body)
			}
			if strings.Contains(rec.Body.String(), keys[0]) {
				t.Errorf("answer %s echoes the key", rec.Body)
			}
		})
	}
}

func TestGroupListParamsRefused(t *testing.T) {
	h := newTestService(t, Config{}).Handler()
	for _, q := range []string{"pageNo=0", "pageNo=-1", "pageNo=abc", "pageNo=99999999999999999999", "pageNo=2147483648",
		"pageSize=0", "pageSize=-5", "pageSize=1001", "pageSize=1e3", "pageNo=1.5", "pageSize=%20100"} {
		req := httptest.NewRequest(http.MethodGet, "/api/integrate/audience/group/list?"+q, nil)
		req.Header.Set("X-Token", "good")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), `"INVALID_PARAMETER"`) {
			t.Errorf("%s: HTTP %d %s, want 400", q, rec.Code, rec.Body)
		}
	}
}

func TestLeadingIdentity(t *testing.T) {
	exact := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingExact, OptType: pipeline.OptAdd}
	fuzzy1 := pipeline.Params{IsMatching: true, MatchingType: pipeline.MatchingFuzzy, IdentifyWay: pipeline.IdentifyUnionIDFirst, OptType: pipeline.OptAdd}
	fuzzy2 := fuzzy1
	fuzzy2.IdentifyWay = pipeline.IdentifyThirdIDFirst
	none := pipeline.Params{OptType: pipeline.OptAdd}
	all := pipeline.RawRecord{ThirdID: " crm-1 ", OpenID: "oA1", UnionID: "u1", Phone: "13800000000"}
	tests := []struct {
		name  string
		p     pipeline.Params
		r     pipeline.RawRecord
		kind  pipeline.IdentityKind
		value string
	}{
		{"no matching: thirdId, trimmed", none, all, pipeline.KindThirdID, "crm-1"},
		{"exact phone", exact, withIdentityType(all, " PHONE "), pipeline.KindPhone, "13800000000"},
		{"exact thirdId spelling", exact, withIdentityType(all, "thirdId"), pipeline.KindThirdID, "crm-1"},
		{"exact id", exact, withIdentityType(all, "id"), pipeline.KindThirdID, "crm-1"},
		{"exact unknown type keys by thirdId", exact, withIdentityType(all, "mobile"), pipeline.KindThirdID, "crm-1"},
		{"fuzzy 1", fuzzy1, all, pipeline.KindUnionID, "u1"},
		{"fuzzy 1 skips blanks", fuzzy1, pipeline.RawRecord{UnionID: "  ", Phone: "138"}, pipeline.KindPhone, "138"},
		{"fuzzy 2", fuzzy2, all, pipeline.KindThirdID, "crm-1"},
		{"nothing", fuzzy1, pipeline.RawRecord{}, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, v := leadingIdentity(tt.p, tt.r)
			if k != tt.kind || v != tt.value {
				t.Errorf("leadingIdentity = %q, %q; want %q, %q", k, v, tt.kind, tt.value)
			}
		})
	}
	// The same thirdId meets in one partition whether it is created
	// (isMatching=false) or matched exactly by id: equal keys.
	k1, v1 := leadingIdentity(none, all)
	k2, v2 := leadingIdentity(exact, withIdentityType(all, "id"))
	if !bytes.Equal(pipeline.RecordKey(1, k1, v1), pipeline.RecordKey(1, k2, v2)) {
		t.Error("a thirdId keys differently with and without matching")
	}
}

func withIdentityType(r pipeline.RawRecord, it string) pipeline.RawRecord {
	r.IdentityType = it
	return r
}

// A request published without a key gets one from its position that is
// always a valid key, even under the longest topic name Kafka allows.
func TestDefaultIdempotencyKey(t *testing.T) {
	short := kafka.Message{Topic: "groupmatch.requests", Partition: 3, Offset: 42}
	if got := defaultIdempotencyKey(short); got != "groupmatch.requests/3/42" {
		t.Errorf("short topic: key %q", got)
	}
	long := kafka.Message{Topic: strings.Repeat("t", 249), Partition: math.MaxInt32, Offset: math.MaxInt64}
	other := long
	other.Topic = strings.Repeat("t", 248) + "u"
	k1, k2 := defaultIdempotencyKey(long), defaultIdempotencyKey(other)
	if !ValidIdempotencyKey(k1) || !ValidIdempotencyKey(k2) || k1 == k2 {
		t.Errorf("long topics: keys %q and %q, want two different valid keys", k1, k2)
	}
	next := long
	next.Offset--
	if defaultIdempotencyKey(next) == k1 {
		t.Error("two offsets share a key")
	}
}
