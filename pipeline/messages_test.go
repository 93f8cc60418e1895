package pipeline

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	in := RecordMessage{TenantID: 3, BatchID: 42, Index: 499,
		Params: Params{IsMatching: true, MatchingType: MatchingFuzzy, IdentifyWay: IdentifyThirdIDFirst, OptType: OptDelete},
		Record: RawRecord{ThirdID: "crm-1", Phone: "13800000000", Groups: "a,b"}}
	b, err := EncodeRecord(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeRecord(b)
	in.V = Version
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
}

func TestResolvedRoundTrip(t *testing.T) {
	in := ResolvedMessage{TenantID: 3, BatchID: 42, Index: 7, OptType: OptAdd, Outcome: OutcomeMatched,
		MatchedBy: KindPhone, CustomerID: 1001, Conflict: true, Groups: []string{"vip"}}
	b, err := EncodeResolved(in)
	if err != nil {
		t.Fatal(err)
	}
	out, err := DecodeResolved(b)
	in.V = Version
	if err != nil || !reflect.DeepEqual(in, out) {
		t.Fatalf("round trip: %+v, %v", out, err)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := map[string]string{
		"not json":          `{`,
		"array":             `[]`,
		"old version":       `{"v":0,"tenantId":1,"batchId":1,"index":0,"optType":"add","outcome":"NOT_FOUND"}`,
		"no tenant":         `{"v":1,"batchId":1,"index":0,"optType":"add","outcome":"NOT_FOUND"}`,
		"batch id too big":  `{"v":1,"tenantId":1,"batchId":9007199254740992,"index":0,"optType":"add","outcome":"NOT_FOUND"}`,
		"huge number":       `{"v":1,"tenantId":1e400,"batchId":1,"index":0,"optType":"add","outcome":"NOT_FOUND"}`,
		"index 500":         `{"v":1,"tenantId":1,"batchId":1,"index":500,"optType":"add","outcome":"NOT_FOUND"}`,
		"negative index":    `{"v":1,"tenantId":1,"batchId":1,"index":-1,"optType":"add","outcome":"NOT_FOUND"}`,
		"bad opt":           `{"v":1,"tenantId":1,"batchId":1,"index":0,"optType":"merge","outcome":"NOT_FOUND"}`,
		"bad outcome":       `{"v":1,"tenantId":1,"batchId":1,"index":0,"optType":"add","outcome":"MAYBE"}`,
		"matched no groups": `{"v":1,"tenantId":1,"batchId":1,"index":0,"optType":"add","outcome":"MATCHED","customerId":5}`,
		"wrong type":        `{"v":"1","tenantId":1,"batchId":1,"index":0,"optType":"add","outcome":"NOT_FOUND"}`,
		"deep nesting":      strings.Repeat("[", 100000),
	}
	for name, in := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := DecodeResolved([]byte(in)); !errors.Is(err, ErrUndecodable) {
				t.Fatalf("DecodeResolved: %v, want ErrUndecodable", err)
			}
		})
	}
	if _, err := DecodeRecord([]byte(`{"v":1,"tenantId":1,"batchId":1,"index":0,"params":{"optType":"ADD"}}`)); !errors.Is(err, ErrUndecodable) {
		t.Fatalf("DecodeRecord with upper-case optType: %v", err)
	}
}

func TestPeekPosition(t *testing.T) {
	p, ok := PeekPosition([]byte(`{"tenantId":1,"batchId":9,"index":3,"outcome":42}`))
	if !ok || p != (Position{TenantID: 1, BatchID: 9, Index: 3}) {
		t.Fatalf("peek: %+v %v", p, ok)
	}
	if _, ok := PeekPosition([]byte(`garbage`)); ok {
		t.Fatal("peeked a position in garbage")
	}
}

// The decoders never panic, reject with ErrUndecodable only, read what
// encoding/json reads wherever their fast path accepts, and whatever they
// accept survives a round trip unchanged.
func FuzzDecodeRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":2,"index":3,"params":{"isMatching":true,"matchingType":1,"optType":"add"},"record":{"identityType":"phone","phone":"1"}}`))
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":2,"index":3,"params":{"isMatching":true,"matchingType":1,"optType":"add"},"record":{"identityType":"email","thirdId":"t","openid":"o","unionid":"u","phone":"1","email":"A@b.cn","groups":"g"}}`))
	f.Add([]byte(`{"v":1}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFastRecord(t, b)
		m, err := DecodeRecord(b)
		if err != nil {
			if !errors.Is(err, ErrUndecodable) {
				t.Fatalf("error %v does not wrap ErrUndecodable", err)
			}
			return
		}
		// The encoding of an accepted message is canonical: decoding and
		// encoding it again gives the same bytes.
		again, err := EncodeRecord(m)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := json.Marshal(m); string(again) != string(want) {
			t.Fatalf("EncodeRecord wrote %s, json.Marshal %s", again, want)
		}
		m2, err := DecodeRecord(again)
		if err != nil {
			t.Fatalf("re-encoded message rejected: %v", err)
		}
		third, err := EncodeRecord(m2)
		if err != nil || string(third) != string(again) {
			t.Fatalf("round trip changed %s into %s (%v)", again, third, err)
		}
	})
}

func FuzzDecodeResolved(f *testing.F) {
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"add","outcome":"MATCHED","matchedBy":"id","customerId":4,"groups":["g"]}`))
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"delete","outcome":"INVALID","reason":"NO_GROUPS","ref":{"thirdId":"x"}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":1,"index":0,"optType":"add","outcome":"NOT_FOUND","groups":[]}`))
	f.Add([]byte(`{"v":1,"tenantId":1,"batchId":2,"index":3,"optType":"add","outcome":"INVALID","reason":"INVALID_EMAIL","ref":{"thirdId":"x","phone":"1****2","openid":"o****1","unionid":"u****1","email":"a***@b.cn"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		checkFastResolved(t, b)
		m, err := DecodeResolved(b)
		if err != nil {
			if !errors.Is(err, ErrUndecodable) {
				t.Fatalf("error %v does not wrap ErrUndecodable", err)
			}
			return
		}
		// The encoding of an accepted message is canonical: decoding and
		// encoding it again gives the same bytes.
		again, err := EncodeResolved(m)
		if err != nil {
			t.Fatal(err)
		}
		if want, _ := json.Marshal(m); string(again) != string(want) {
			t.Fatalf("EncodeResolved wrote %s, json.Marshal %s", again, want)
		}
		m2, err := DecodeResolved(again)
		if err != nil {
			t.Fatalf("re-encoded message rejected: %v", err)
		}
		third, err := EncodeResolved(m2)
		if err != nil || string(third) != string(again) {
			t.Fatalf("round trip changed %s into %s (%v)", again, third, err)
		}
	})
}

func TestRecordKey(t *testing.T) {
	k := RecordKey(7, KindThirdID, "crm-1")
	// Pinned: partitioning must not change between versions.
	sum := sha256.Sum256([]byte("7\x00id\x00crm-1"))
	if want := hex.EncodeToString(sum[:16]); string(k) != want {
		t.Fatalf("RecordKey = %s, want %s", k, want)
	}
	if !bytes.Equal(k, RecordKey(7, KindThirdID, "crm-1")) {
		t.Error("RecordKey is not stable")
	}
	distinct := map[string]bool{string(k): true}
	for _, other := range [][]byte{
		RecordKey(8, KindThirdID, "crm-1"),
		RecordKey(7, KindPhone, "crm-1"),
		RecordKey(7, KindThirdID, "crm-2"),
		RecordKey(71, KindThirdID, "crm-1"), // no ambiguity between tenant and value
		RecordKey(7, KindThirdID, ""),
	} {
		if distinct[string(other)] {
			t.Errorf("key %s repeats", other)
		}
		distinct[string(other)] = true
	}
	for _, v := range []string{"13800000000", "oA_xY1234567Q9Zk", "crm-000123", strings.Repeat("长", 3000)} {
		key := string(RecordKey(1, KindOpenID, v))
		if len(key) != 32 || strings.Contains(key, v) || strings.Trim(key, "0123456789abcdef") != "" {
			t.Errorf("RecordKey(%.20q) = %q: want 32 hex digits without the value", v, key)
		}
	}
}

// TestDecodeErrorsHideValues: decoding errors go to logs and dead-letter
// headers, so they must not quote the message.
func TestDecodeErrorsHideValues(t *testing.T) {
	for _, b := range []string{
		`{"v":1,"tenantId":1,"batchId":1,"index":0,"params":{"optType":"add"},"record":{"phone":13800000000}}`,
		`{"v":1,"tenantId":1,"batchId":1,"index":0,"params":{"optType":"add"},"record":{"thirdId":["crm-secret-1"]}}`,
		`{"v":1,"tenantId":1,"batchId":1,"index":0,"record":{"phone":"13800000000"`,
		`{"v":1,"tenantId":1,"batchId":1,"index":0,"outcome":"MATCHED","customerId":13800000000,"ref":{"thirdId":13800000000}}`,
	} {
		_, errRec := DecodeRecord([]byte(b))
		_, errRes := DecodeResolved([]byte(b))
		for _, err := range []error{errRec, errRes} {
			if err == nil || !errors.Is(err, ErrUndecodable) {
				t.Fatalf("%s: error %v, want ErrUndecodable", b, err)
			}
			if strings.Contains(err.Error(), "13800000000") || strings.Contains(err.Error(), "crm-secret-1") {
				t.Errorf("error %q quotes the message", err)
			}
		}
	}
}

func TestDirectoryRoundTrip(t *testing.T) {
	m := DirectoryMessage{Type: DirectoryIdentity, TenantID: 7, Kind: KindPhone, Value: "13800000000", CustomerID: 42}
	b, err := EncodeDirectory(m)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeDirectory(b)
	m.V = Version
	if err != nil || got != m {
		t.Fatalf("DecodeDirectory(%s) = %+v, %v; want %+v", b, got, err, m)
	}
	longest := DirectoryMessage{V: Version, Type: DirectoryRecheck, TenantID: 7, Kind: KindEmail, Value: strings.Repeat("é", MaxEmailLen)}
	if b, _ := EncodeDirectory(longest); true {
		if got, err := DecodeDirectory(b); err != nil || got != longest {
			t.Errorf("a value of %d characters: %+v, %v", MaxEmailLen, got, err)
		}
	}
	if string(DirectoryKey(m)) != string(RecordKey(7, KindPhone, "13800000000")) {
		t.Error("DirectoryKey is not RecordKey of the identity")
	}
	for _, bad := range []string{
		`{"v":1,"type":"identity","tenantId":7,"kind":"phone","value":"13800000000"}`,                              // no customer
		`{"v":1,"type":"other","tenantId":7,"kind":"phone","value":"1","customerId":1}`,                            // type
		`{"v":1,"type":"recheck","tenantId":0,"kind":"phone","value":"1"}`,                                         // tenant
		`{"v":1,"type":"recheck","tenantId":7,"kind":"email2","value":"1"}`,                                        // kind
		`{"v":1,"type":"recheck","tenantId":7,"kind":"phone","value":""}`,                                          // value
		`{"v":2,"type":"recheck","tenantId":7,"kind":"phone","value":"1"}`,                                         // version
		`{"v":1,"type":"recheck","tenantId":7,"kind":"phone","value":"13800000000"`,                                // syntax
		`{"v":1,"type":"recheck","tenantId":7,"kind":"email","value":"` + strings.Repeat("13800000000", 24) + `"}`, // 264 characters
		`{"v":1,"type":"recheck","tenantId":7,"kind":"phone","value":"13800000000\u0000"}`,                         // NUL
	} {
		_, err := DecodeDirectory([]byte(bad))
		if !errors.Is(err, ErrUndecodable) {
			t.Errorf("DecodeDirectory(%s) = %v, want ErrUndecodable", bad, err)
		} else if strings.Contains(err.Error(), "13800000000") {
			t.Errorf("error %q quotes the value", err)
		}
	}
}

// The documented names are the default prefix's, and a prefix names all
// six topics.
func TestTopicsFor(t *testing.T) {
	want := Topics{Requests: "groupmatch.requests", Records: "groupmatch.records", Resolved: "groupmatch.resolved",
		Events: "groupmatch.events", DLQ: "groupmatch.dlq", Directory: "groupmatch.directory"}
	if got := DefaultTopics(); got != want {
		t.Errorf("DefaultTopics() = %+v, want %+v", got, want)
	}
	if got := TopicsFor("t1-"); got != (Topics{Requests: "t1-requests", Records: "t1-records", Resolved: "t1-resolved",
		Events: "t1-events", DLQ: "t1-dlq", Directory: "t1-directory"}) {
		t.Errorf("TopicsFor(t1-) = %+v", got)
	}
}
