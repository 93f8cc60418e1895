package pipeline

import (
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// checkFastRecord fails unless the fast path, where it accepts b, agrees
// with encoding/json.
func checkFastRecord(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	var fast RecordMessage
	if !fastRecord(b, &fast) {
		return false
	}
	var ref RecordMessage
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json says %v", b, err)
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("fast path read %q as %+v, encoding/json as %+v", b, fast, ref)
	}
	return true
}

func checkFastResolved(t *testing.T, b []byte) (accepted bool) {
	t.Helper()
	var fast ResolvedMessage
	if !fastResolved(b, &fast) {
		return false
	}
	var ref ResolvedMessage
	if err := json.Unmarshal(b, &ref); err != nil {
		t.Fatalf("fast path accepted %q, encoding/json says %v", b, err)
	}
	if !reflect.DeepEqual(fast, ref) {
		t.Fatalf("fast path read %q as %+v, encoding/json as %+v", b, fast, ref)
	}
	return true
}

// checkEncoders fails unless the hand-written encoders write json.Marshal's
// bytes, and the fast path reads them back.
func checkEncoders(t *testing.T, rec RecordMessage, res ResolvedMessage) {
	t.Helper()
	rec.V, res.V = Version, Version
	got, _ := EncodeRecord(rec)
	want, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("EncodeRecord wrote\n%s\njson.Marshal writes\n%s", got, want)
	}
	if !checkFastRecord(t, got) {
		t.Fatalf("fast path declined its own encoding %s", got)
	}
	got, _ = EncodeResolved(res)
	if want, err = json.Marshal(res); err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Fatalf("EncodeResolved wrote\n%s\njson.Marshal writes\n%s", got, want)
	}
	if !checkFastResolved(t, got) {
		t.Fatalf("fast path declined its own encoding %s", got)
	}
}

// nasty is text that exercises every escape of the encoders.
var nasty = []string{"", "a", "vip", "会员,老客", "<b>&amp;</b>", "q\"uo\\te", "\x00\x01\x1f\x7f", "\b\f\n\r\t",
	"\u2028\u2029", "\xff", "a\xc3", "\xed\xa0\x80", "😀", "\u00e9", "/", "\ufffd"}

func randText(rng *rand.Rand) string {
	var b strings.Builder
	for range rng.IntN(4) {
		b.WriteString(nasty[rng.IntN(len(nasty))])
	}
	return b.String()
}

func randMessages(rng *rand.Rand) (RecordMessage, ResolvedMessage) {
	opts := []OptType{OptAdd, OptDelete, ""}
	rec := RecordMessage{TenantID: rng.Int64N(1 << 40), BatchID: rng.Int64N(MaxBatchID), Index: rng.IntN(MaxRecords),
		Params: Params{IsMatching: rng.IntN(2) == 0, MatchingType: rng.IntN(3), IdentifyWay: rng.IntN(3),
			AppType: randText(rng), AppID: randText(rng), OptType: opts[rng.IntN(3)], DeferUnmatched: rng.IntN(2) == 0},
		Record: RawRecord{IdentityType: randText(rng), ThirdID: randText(rng), OpenID: randText(rng),
			UnionID: randText(rng), Phone: randText(rng), Groups: randText(rng)}}
	res := ResolvedMessage{TenantID: -rng.Int64N(3), BatchID: rng.Int64N(1 << 60), Index: rng.IntN(1000) - 1,
		OptType: opts[rng.IntN(3)], Outcome: Outcome(randText(rng)), Reason: Reason(randText(rng)),
		MatchedBy: IdentityKind(randText(rng)), CustomerID: rng.Int64N(3), Created: rng.IntN(2) == 0, Conflict: rng.IntN(2) == 0,
		Late: rng.IntN(2) == 0}
	for range rng.IntN(3) {
		res.Groups = append(res.Groups, randText(rng))
	}
	if rng.IntN(2) == 0 {
		res.Ref = &RecordRef{ThirdID: randText(rng), Phone: randText(rng), OpenID: randText(rng), UnionID: randText(rng)}
	}
	return rec, res
}

func TestEncodersWriteWhatJSONMarshalWrites(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	for range 20000 {
		rec, res := randMessages(rng)
		checkEncoders(t, rec, res)
	}
}

// A pending binding (deferred batches only) leaves the fast path; the bytes
// are still json.Marshal's and decode back to the same message.
func TestEncodeResolvedPending(t *testing.T) {
	rng := rand.New(rand.NewPCG(8, 8))
	for range 2000 {
		_, res := randMessages(rng)
		res.V = Version
		res.Pending = &Pending{Identities: map[IdentityKind]string{KindPhone: randText(rng), KindUnionID: randText(rng)},
			IdentityType: IdentityKind(randText(rng)), Params: Params{MatchingType: 2, IdentifyWay: rng.IntN(3), AppID: randText(rng)},
			Groups: []string{randText(rng)}}
		got, _ := EncodeResolved(res)
		want, err := json.Marshal(res)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Fatalf("EncodeResolved wrote\n%s\njson.Marshal writes\n%s", got, want)
		}
		var back ResolvedMessage
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		var again ResolvedMessage
		if err := json.Unmarshal(want, &again); err != nil || !reflect.DeepEqual(back, again) {
			t.Fatalf("round trip differs: %v", err)
		}
	}
}

// The fast path declines what it does not know, and encoding/json decides.
func TestFastPathDeclines(t *testing.T) {
	base := `{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"add","outcome":"NOT_FOUND"%s}`
	for _, tail := range []string{
		`,"extra":1`, `,"Outcome":"MATCHED"`, `,"v":1`, `,"ref":null`, `,"groups":null`, `,"customerId":1.0`,
		`,"customerId":1e2`, `,"customerId":01`, `,"customerId":99999999999999999999`,
		`,"reason":"a` + "\n" + `"`, `,"reason":"\x"`, `,"reason":"\u12"`, `,"created":tru`, `,"o\u0075tcome":"X"`,
	} {
		b := []byte(strings.Replace(base, "%s", tail, 1))
		if checkFastResolved(t, b) {
			t.Errorf("fast path accepted %s", b)
		}
		// Whatever encoding/json makes of it, DecodeResolved agrees.
		var ref ResolvedMessage
		jerr := json.Unmarshal(b, &ref)
		got, err := DecodeResolved(b)
		if jerr == nil && err == nil && !reflect.DeepEqual(got, ref) {
			t.Errorf("DecodeResolved(%s) = %+v, encoding/json %+v", b, got, ref)
		}
		if jerr != nil && err == nil {
			t.Errorf("DecodeResolved(%s) accepted what encoding/json rejects: %v", b, jerr)
		}
	}
	// Whitespace, key order and escapes stay on the fast path.
	for _, b := range []string{
		" {\n\"index\" : 3 , \"v\":1,\"tenantId\":1,\"batchId\":2,\"optType\":\"add\",\"outcome\":\"MATCHED\",\"customerId\":7,\"groups\":[ \"a\\u0026b\" , \"\\\"\\/\\n\" ] } \n",
		`{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"add","outcome":"INVALID","ref":{"phone":"138****0000"},"groups":[]}`,
		`{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"add","outcome":"NOT_FOUND","reason":"\ud83d\ude00 \ud83d \ude00\ud83dx 会员` + "\xff" + `"}`,
	} {
		if !checkFastResolved(t, []byte(b)) {
			t.Errorf("fast path declined %s", b)
		}
	}
}

// BenchmarkCodec compares the codecs with encoding/json on typical messages.
func BenchmarkCodec(b *testing.B) {
	rec := RecordMessage{V: 1, TenantID: 3, BatchID: 123456, Index: 417,
		Params: Params{IsMatching: true, MatchingType: MatchingFuzzy, IdentifyWay: IdentifyUnionIDFirst, OptType: OptAdd},
		Record: RawRecord{ThirdID: "crm-000417", OpenID: "oA1b2C3d4E5f6G7h8I9j0KlMnOpQ", UnionID: "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", Phone: "13800000417", Groups: "vip,老客"}}
	res := ResolvedMessage{V: 1, TenantID: 3, BatchID: 123456, Index: 417, OptType: OptAdd, Outcome: OutcomeMatched,
		MatchedBy: KindUnionID, CustomerID: 1000417, Groups: []string{"vip", "老客"}}
	recJSON, _ := json.Marshal(rec)
	resJSON, _ := json.Marshal(res)
	b.Run("record/decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeRecord(recJSON); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("record/decode-encoding-json", func(b *testing.B) {
		for b.Loop() {
			var m RecordMessage
			if err := json.Unmarshal(recJSON, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("record/encode", func(b *testing.B) {
		for b.Loop() {
			_, _ = EncodeRecord(rec)
		}
	})
	b.Run("record/encode-encoding-json", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(rec)
		}
	})
	b.Run("resolved/decode", func(b *testing.B) {
		for b.Loop() {
			if _, err := DecodeResolved(resJSON); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("resolved/decode-encoding-json", func(b *testing.B) {
		for b.Loop() {
			var m ResolvedMessage
			if err := json.Unmarshal(resJSON, &m); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("resolved/encode", func(b *testing.B) {
		for b.Loop() {
			_, _ = EncodeResolved(res)
		}
	})
	b.Run("resolved/encode-encoding-json", func(b *testing.B) {
		for b.Loop() {
			_, _ = json.Marshal(res)
		}
	})
}
