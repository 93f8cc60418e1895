package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// maxStageRSS bounds the resident memory of every stage process during the
// hostile-input test: the issue saw ingest grow past 1 GB on one request.
const maxStageRSS = 300 << 20

// hostileRig is a cluster (every stage its own process) with two tenants:
// "evil" sends the hostile inputs, "good" proves after each that the
// service still works for everyone else.
type hostileRig struct {
	t         *testing.T
	c         *cluster
	brokers   string
	prefix    string
	evilToken string
	goodToken string
	good      *http.Client // dials from 127.0.0.2: another client address
	goodSeq   int
}

func newHostileRig(t *testing.T) *hostileRig {
	t.Helper()
	c := startCluster(t, startSystemDB(t).url)
	r := &hostileRig{t: t, c: c, prefix: "groupmatch."}
	for _, kv := range c.env {
		if v, ok := strings.CutPrefix(kv, "KAFKA_BROKERS="); ok {
			r.brokers = v
		}
		if v, ok := strings.CutPrefix(kv, "TOPIC_PREFIX="); ok {
			r.prefix = v
		}
	}
	dialer := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 5 * time.Second}
	r.good = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DialContext: dialer.DialContext}}
	r.evilToken = r.token("evil", nil)
	r.goodToken = r.token("good", r.good)
	runProc(t, c.env, strings.NewReader(testDirectory), "directory", "load", "--tenant", "good", "-")
	return r
}

// token creates an application of tenant and returns an access token,
// asked for through client (nil: the contract client).
func (r *hostileRig) token(tenant string, client *http.Client) string {
	r.t.Helper()
	var creds struct{ InstanceAppid, InstanceSecrect string }
	out := runProc(r.t, r.c.env, nil, "app", "create", "--tenant", tenant, "--name", "crm", "--scope", "audience.group")
	if err := json.Unmarshal([]byte(out), &creds); err != nil {
		r.t.Fatalf("app create printed %q: %v", out, err)
	}
	var tok struct {
		Data struct{ OrgAccessToken string }
	}
	h := &system{t: r.t, base: r.c.base, client: client}
	h.get("/api/open/app/getOrgAccessToken?instanceAppid="+creds.InstanceAppid+"&instanceSecrect="+creds.InstanceSecrect, "", http.StatusOK, &tok)
	return tok.Data.OrgAccessToken
}

// sys is the rig seen from subtest t, speaking as the evil tenant's client.
func (r *hostileRig) sys(t *testing.T) *system { return &system{t: t, base: r.c.base} }

// afterEach checks what must hold after any hostile input: every process is
// up, a batch of the good tenant submitted now is final promptly, and no
// process has grown beyond maxStageRSS.
func (r *hostileRig) afterEach(t *testing.T) {
	t.Helper()
	for _, p := range []*proc{r.c.ingest, r.c.matcher, r.c.sink} {
		if done, err := p.Exited(); done {
			t.Fatalf("%s exited (%v)", p.name, err)
		}
	}
	r.goodSeq++
	h := &system{t: t, base: r.c.base, client: r.good}
	group := "good-" + strconv.Itoa(r.goodSeq)
	start := time.Now()
	id := h.postBatch(r.goodToken, `{"publicParams":{"isMatching":true,"matchingType":1,"optType":"add"},
		"data":[{"identityType":"id","thirdId":"crm-1","groups":"`+group+`"},{"identityType":"unionid","unionid":"union-3","groups":"`+group+`"}]}`)
	res := h.waitFinal(r.goodToken, id, 15*time.Second)
	if res.Status != "SUCCESS" || res.Success != 2 {
		t.Fatalf("good tenant's batch after the hostile input: %+v", res)
	}
	t.Logf("good tenant's batch final in %s", time.Since(start).Round(time.Millisecond))
	var rss []string
	for _, p := range []*proc{r.c.ingest, r.c.matcher, r.c.sink} {
		n := processRSS(t, p.PID())
		if n > maxStageRSS {
			t.Errorf("%s resident memory %d MB, more than %d MB", p.name, n>>20, maxStageRSS>>20)
		}
		rss = append(rss, fmt.Sprintf("%s %d MB", p.name, n>>20))
	}
	t.Logf("resident memory: %s", strings.Join(rss, ", "))
}

// processRSS reads a process's resident set size from /proc.
func processRSS(t *testing.T, pid int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// post sends a raw batchAdd with extra headers and returns the status and
// envelope. It bypasses the contract client only where the request itself
// cannot be expressed through it.
func (r *hostileRig) post(t *testing.T, body []byte, headers map[string]string) (int, envelope) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, r.c.base+"/api/integrate/audience/group/rel/batchAdd", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Token", r.evilToken)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header[k] = []string{v} // as sent: no canonicalisation of the value
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var env envelope
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("HTTP %d answered %q, not the envelope", resp.StatusCode, raw)
	}
	return resp.StatusCode, env
}

// wantRefused checks a 4xx answer with the given errorCode, and that the
// message quotes nothing of the request.
func wantRefused(t *testing.T, status int, env envelope, wantStatus int, errorCode string, secret string) {
	t.Helper()
	if status != wantStatus || env.ErrorCode != errorCode {
		t.Fatalf("answered HTTP %d %+v, want %d %s", status, env, wantStatus, errorCode)
	}
	if secret != "" && strings.Contains(env.Msg, secret) {
		t.Fatalf("the answer quotes the request: %q", env.Msg)
	}
}

// batchOf returns a batchAdd body with the given params and records.
func batchOf(params string, records ...map[string]string) []byte {
	data, _ := json.Marshal(records)
	return []byte(`{"publicParams":` + params + `,"data":` + string(data) + `}`)
}

const (
	noMatching = `{"isMatching":false,"optType":"add"}`
	exactAdd   = `{"isMatching":true,"matchingType":1,"optType":"add"}`
	fuzzyAdd   = `{"isMatching":true,"matchingType":2,"identifyWay":1,"optType":"add"}`
)

// randomText is n random characters from all over Unicode but the
// surrogates, the controls and the format characters.
func randomText(rng *rand.Rand, n int) string {
	var b strings.Builder
	for count := 0; count < n; {
		c := rune(0x21 + rng.IntN(0x2FFFF))
		if c >= 0xD800 && c <= 0xDFFF || c >= 0x7F && c <= 0x9F || c == 0xAD || c >= 0x2000 && c <= 0x206F || c == 0x3000 || c == 0xFEFF {
			continue // surrogates, controls, spaces and format characters
		}
		b.WriteRune(c)
		count++
	}
	return b.String()
}

// Every hostile input of SPEC §10 against every stage as a separate process:
// each gets a clear answer (a 4xx, or 200 and a batch that ends final with
// the bad records counted as not applied), no process stops or bloats, and
// a batch of another tenant submitted right after finishes promptly.
func TestHostileInputs(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	r := newHostileRig(t)
	rng := rand.New(rand.NewPCG(11, 12))

	// final posts body as the evil tenant, expects 200 and a final batch.
	final := func(t *testing.T, body []byte) batchResult {
		t.Helper()
		h := r.sys(t)
		id := h.postBatch(r.evilToken, string(body))
		return h.waitFinal(r.evilToken, id, 20*time.Second)
	}
	reasons := func(t *testing.T, res batchResult, success int, want map[string]int) {
		t.Helper()
		if res.Success != success || res.Processed != res.Total {
			t.Fatalf("result %+v, want %d applied and every record processed", res, success)
		}
		for reason, n := range want {
			if res.ErrorCounts[reason] != n {
				t.Fatalf("errorCounts %v, want %s=%d", res.ErrorCounts, reason, n)
			}
		}
	}

	cases := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"3000-character thirdId creating a customer", func(t *testing.T) {
			res := final(t, batchOf(noMatching,
				map[string]string{"thirdId": randomText(rng, 3000), "groups": "x"},
				map[string]string{"thirdId": "evil-ok-1", "groups": "x"}))
			reasons(t, res, 1, map[string]int{"VALUE_TOO_LONG": 1})
		}},
		{"long unionid, openid and phone on a created customer", func(t *testing.T) {
			res := final(t, batchOf(noMatching,
				map[string]string{"thirdId": "evil-2", "unionid": strings.Repeat("u", 129), "groups": "x"},
				map[string]string{"thirdId": "evil-3", "openid": randomText(rng, 2000), "groups": "x"},
				map[string]string{"thirdId": "evil-4", "phone": "1" + strings.Repeat(" ", 40) + "3800000000", "groups": "x"},
				map[string]string{"thirdId": strings.Repeat("t", 128), "unionid": strings.Repeat("u", 128), "groups": "x"}))
			reasons(t, res, 1, map[string]int{"VALUE_TOO_LONG": 3})
		}},
		{"long identity values in matching", func(t *testing.T) {
			res := final(t, batchOf(fuzzyAdd,
				map[string]string{"unionid": randomText(rng, 5000), "thirdId": "crm-1", "groups": "x"},
				map[string]string{"identityType": "phone", "phone": strings.Repeat("1", 33), "groups": "x"}))
			reasons(t, res, 0, map[string]int{"VALUE_TOO_LONG": 2})
		}},
		{"144,000 group names in one record", func(t *testing.T) {
			names := make([]string, 144000)
			for i := range names {
				names[i] = strconv.FormatInt(int64(i), 36)
			}
			// More than the 64 KiB of text a record may hold: the request is refused.
			status, env := r.post(t, batchOf(noMatching, map[string]string{"thirdId": "evil-5", "groups": strings.Join(names, ",")}), nil)
			wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", "")
			res := final(t, batchOf(noMatching,
				map[string]string{"thirdId": "evil-5", "groups": strings.Join(names[:10000], ",")},
				map[string]string{"thirdId": "evil-6", "groups": strings.Join(names[:101], ",")},
				map[string]string{"thirdId": "evil-7", "groups": strings.Join(names[:100], ",")}))
			reasons(t, res, 1, map[string]int{"TOO_MANY_GROUPS": 2})
		}},
		{"control and format characters in group names", func(t *testing.T) {
			var recs []map[string]string
			for i, bad := range []string{"\u202Evip", "v\u200Bip", "vi\u2028p", "\ufeffvip", "v\tip", "vip\u2066", "v\x1bip"} {
				recs = append(recs, map[string]string{"thirdId": "evil-g" + strconv.Itoa(i), "groups": "fine," + bad})
			}
			recs = append(recs, map[string]string{"thirdId": "evil-g-long", "groups": strings.Repeat("群", 65)})
			recs = append(recs, map[string]string{"thirdId": "evil-g-ok", "groups": strings.Repeat("群", 64)})
			res := final(t, batchOf(noMatching, recs...))
			reasons(t, res, 1, map[string]int{"GROUP_NAME_INVALID": 7, "GROUP_NAME_TOO_LONG": 1})
		}},
		{"NUL and control characters in every field", func(t *testing.T) {
			// NUL cannot be stored: the request decoder refuses it in any field.
			for _, field := range []string{"thirdId", "unionid", "phone", "openid", "groups", "identityType"} {
				rec := map[string]string{"thirdId": "evil-nul", "groups": "x"}
				rec[field] = "a\x00b"
				status, env := r.post(t, batchOf(noMatching, rec), nil)
				wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", "")
			}
			res := final(t, batchOf(fuzzyAdd,
				map[string]string{"thirdId": "\x1b[31mcrm", "unionid": "\x07union", "phone": "1380000000\x7f1", "openid": "\x01", "groups": "x"},
				map[string]string{"thirdId": "\x1b", "unionid": "\x08", "groups": "x"}))
			if res.Success != 0 || res.Processed != 2 {
				t.Fatalf("result %+v: records with control characters applied", res)
			}
			res = final(t, batchOf(noMatching,
				map[string]string{"thirdId": "evil\x01ctl", "groups": "x"},
				map[string]string{"thirdId": "evil-8", "unionid": "u\x1f", "openid": "o\x7f", "groups": "x"}))
			if res.Processed != 2 {
				t.Fatalf("result %+v", res)
			}
		}},
		{"invalid UTF-8 in the body", func(t *testing.T) {
			body := []byte(`{"publicParams":` + noMatching + `,"data":[{"thirdId":"evil-\xff\xfe","groups":"g\xc3"}]}`)
			status, env := r.post(t, body, nil)
			switch status {
			case http.StatusBadRequest:
				wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", "")
			case http.StatusOK:
				var id int64
				if err := json.Unmarshal(env.Data, &id); err != nil {
					t.Fatal(err)
				}
				res := r.sys(t).waitFinal(r.evilToken, id, 20*time.Second)
				if res.Processed != 1 {
					t.Fatalf("result %+v", res)
				}
			default:
				t.Fatalf("answered HTTP %d %+v", status, env)
			}
		}},
		{"Idempotency-Key not valid UTF-8", func(t *testing.T) {
			status, env := r.post(t, batchOf(noMatching, map[string]string{"thirdId": "evil-9", "groups": "x"}), map[string]string{"Idempotency-Key": "key-\xff\xfe"})
			wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", "")
		}},
		{"Idempotency-Key too long or unprintable", func(t *testing.T) {
			for _, key := range []string{strings.Repeat("k", 65), "key\tx", "ключ"} {
				status, env := r.post(t, batchOf(noMatching, map[string]string{"thirdId": "evil-10", "groups": "x"}), map[string]string{"Idempotency-Key": key})
				wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", key)
			}
			status, env := r.post(t, batchOf(noMatching, map[string]string{"thirdId": "evil-10", "groups": "x"}), map[string]string{"Idempotency-Key": strings.Repeat("k", 64)})
			if status != http.StatusOK {
				t.Fatalf("a 64-character key answered HTTP %d %+v", status, env)
			}
		}},
		{"accurateMatchValue of 400,000 characters in a 1 MiB request", func(t *testing.T) {
			value := strings.Repeat("a", 400000)
			recs := make([]map[string]string, 500)
			for i := range recs {
				recs[i] = map[string]string{"identityType": "openid", "openid": "o" + strconv.Itoa(i), "groups": "x"}
			}
			body := batchOf(`{"isMatching":true,"matchingType":1,"optType":"add","accurateMatchType":"gzh","accurateMatchValue":"`+value+`"}`, recs...)
			if len(body) > 1<<20 {
				t.Fatalf("body of %d bytes exceeds 1 MiB", len(body))
			}
			status, env := r.post(t, body, nil)
			wantRefused(t, status, env, http.StatusBadRequest, "INVALID_PARAMETER", value[:200])
			ok := batchOf(`{"isMatching":true,"matchingType":1,"optType":"add","accurateMatchType":"gzh","accurateMatchValue":"`+strings.Repeat("a", 128)+`"}`, recs[0])
			res := final(t, ok)
			if res.Processed != 1 {
				t.Fatalf("128-character accurateMatchValue: %+v", res)
			}
		}},
		{"malformed bodies", func(t *testing.T) {
			bodies := map[string][]byte{
				"huge number":    []byte(`{"publicParams":{"isMatching":true,"matchingType":1e400,"optType":"add"},"data":[{"thirdId":"a","groups":"x"}]}`),
				"huge integer":   []byte(`{"publicParams":{"isMatching":true,"matchingType":99999999999999999999999,"optType":"add"},"data":[{"thirdId":"a","groups":"x"}]}`),
				"deep nesting":   []byte(`{"publicParams":` + strings.Repeat("[", 200000) + strings.Repeat("]", 200000) + `}`),
				"not JSON":       []byte("\x00\x01 not json at all"),
				"empty":          nil,
				"array":          []byte(`[1,2,3]`),
				"trailing bytes": []byte(`{"publicParams":` + noMatching + `,"data":[{"thirdId":"a","groups":"x"}]} {}`),
			}
			for name, body := range bodies {
				status, env := r.post(t, body, nil)
				if status != http.StatusBadRequest || env.ErrorCode != "INVALID_PARAMETER" {
					t.Errorf("%s: answered HTTP %d %+v", name, status, env)
				}
			}
		}},
		{"extreme paging parameters", func(t *testing.T) {
			h := r.sys(t)
			var env envelope
			for _, q := range []string{
				"/api/integrate/audience/group/rel/batchResult?batchId=1&pageNo=0",
				"/api/integrate/audience/group/rel/batchResult?batchId=1&pageNo=99999999999999999999",
				"/api/integrate/audience/group/rel/batchResult?batchId=1&pageSize=-1",
				"/api/integrate/audience/group/rel/batchResult?batchId=-5",
				"/api/integrate/audience/group/rel/batchResult?batchId=1e3",
				"/api/integrate/audience/group/list?pageSize=1001",
				"/api/integrate/audience/group/list?pageNo=0",
				"/api/integrate/audience/group/list?pageNo=abc",
				"/api/integrate/audience/group/members?groupName=x&pageSize=0",
				"/api/integrate/audience/group/members?groupName=x&cursor=%00",
				"/api/integrate/audience/group/members?groupName=x&cursor=-1",
			} {
				h.get(q, r.evilToken, http.StatusBadRequest, &env)
			}
			var page struct {
				Data struct {
					Total  int               `json:"total"`
					Groups []json.RawMessage `json:"groups"`
				}
			}
			h.get("/api/integrate/audience/group/list?pageNo=2147483647&pageSize=1000", r.evilToken, http.StatusOK, &page)
			if len(page.Data.Groups) != 0 || page.Data.Total == 0 {
				t.Fatalf("a page far beyond the end: %+v", page.Data)
			}
		}},
		{"hostile messages on the requests topic", func(t *testing.T) {
			r.testRequestsTopic(t)
		}},
		// Last: it spends this client address's budget of failed checks.
		{"a flood of forged tokens", func(t *testing.T) {
			r.testForgedTokens(t)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.run(t)
			r.afterEach(t)
		})
	}
}

// testRequestsTopic publishes hostile requests with kcat, then a good one
// behind them in the same partition, and checks that each is answered.
func (r *hostileRig) testRequestsTopic(t *testing.T) {
	t.Helper()
	good := `{"publicParams":` + noMatching + `,"data":[{"thirdId":"evil-feed","groups":"x"}]}`
	sends := []struct {
		key, value string
		headers    []string
		accepted   bool
	}{
		{key: "h-1", value: "not json", headers: []string{"x-token=" + r.evilToken}},
		{key: "h-2", value: good, headers: []string{"x-token=" + r.evilToken, "idempotency-key=\xff\xfe"}},
		{key: "h-3", value: good, headers: []string{"x-token=" + r.evilToken, "idempotency-key=" + strings.Repeat("k", 65)}},
		{key: "h-4", value: good},
		{key: "h-5", value: good, headers: []string{"x-token=forged"}},
		{key: "h-6", value: `{"publicParams":` + strings.Repeat("[", 100000) + `}`, headers: []string{"x-token=" + r.evilToken}},
		{key: "h-7", value: good, headers: []string{"x-token=" + r.evilToken, "idempotency-key=fine-key"}, accepted: true},
	}
	for _, s := range sends {
		// One partition for all, so the good request queues behind the bad.
		args := []string{"-b", r.brokers, "-P", "-t", r.prefix + "requests", "-p", "0", "-k", s.key}
		for _, h := range s.headers {
			args = append(args, "-H", h)
		}
		kcatRun(t, s.value+"\n", args...)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out := kcatRun(t, "", "-b", r.brokers, "-C", "-t", r.prefix+"events", "-e", "-q", "-f", "%k\t%s\n")
		answered := map[string]event{}
		for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
			key, value, ok := strings.Cut(line, "\t")
			if !ok {
				continue
			}
			var e event
			if json.Unmarshal([]byte(value), &e) == nil && strings.HasPrefix(e.Type, "request.") {
				answered[key] = e
			}
		}
		missing := 0
		for _, s := range sends {
			e, ok := answered[s.key]
			switch {
			case !ok:
				missing++
			case s.accepted && (e.Type != "request.accepted" || e.BatchID <= 0):
				t.Fatalf("%s answered %+v, want request.accepted", s.key, e)
			case !s.accepted && (e.Type != "request.rejected" || !strings.HasPrefix(e.Code, "4") && e.Code != "100200"):
				t.Fatalf("%s answered %+v, want request.rejected with a 4xx code", s.key, e)
			}
		}
		if missing == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d requests unanswered after 30 s; answered %+v", missing, len(sends), answered)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// testForgedTokens floods ingest with forged tokens from one client address
// while the good tenant, from another, keeps its latency.
func (r *hostileRig) testForgedTokens(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	flood := &http.Client{Timeout: 10 * time.Second}
	start := time.Now()
	codes := make(chan int, 4096)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 2000 && ctx.Err() == nil; i++ {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.c.base+"/api/integrate/audience/group/list", nil)
			req.Header.Set("X-Token", "forged-"+strconv.Itoa(i))
			resp, err := flood.Do(req)
			if err != nil {
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			select {
			case codes <- resp.StatusCode:
			default:
			}
		}
	}()
	h := &system{t: t, base: r.c.base, client: r.good}
	var worst time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		var env envelope
		h.get("/api/integrate/audience/group/list", r.goodToken, http.StatusOK, &env)
		worst = max(worst, time.Since(start))
		time.Sleep(20 * time.Millisecond)
	}
	<-done
	close(codes)
	counts := map[int]int{}
	for c := range codes {
		counts[c]++
	}
	// The documented budget: a burst of 100 failed checks, then 20 a second.
	budget := 100 + int(20*time.Since(start).Seconds()) + 20
	if counts[http.StatusTooManyRequests] == 0 || counts[http.StatusUnauthorized] == 0 || counts[http.StatusUnauthorized] > budget {
		t.Fatalf("forged tokens answered %v: want at most %d 401s, then 429", counts, budget)
	}
	if worst > time.Second {
		t.Fatalf("the good tenant's slowest read during the flood took %s", worst)
	}
	t.Logf("forged tokens answered %v; the good tenant's slowest read %s", counts, worst)
}

// kcatRun runs Debian's kcat with args and returns its standard output.
func kcatRun(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	path, err := exec.LookPath("kcat")
	if err != nil {
		t.Fatal("kcat is not installed (make deps installs it): ", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("kcat %v: %v\n%s", args, err, errOut.String())
	}
	return out.String()
}
