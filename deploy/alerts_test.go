package deploy

import (
	"bufio"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// runbookPrefix is where every alert's runbook_url points: a section of
// docs/operations.md as GitHub renders it.
const runbookPrefix = "https://github.com/groupmatch/groupmatch/blob/main/docs/operations.md#"

// alertRules is the part of alerts.yml these tests read.
type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// markdownAnchors returns the anchors GitHub gives the headings of a
// Markdown file: lower-cased, punctuation other than '-' and '_' dropped,
// spaces turned into '-', and "-1", "-2"… appended to repeats. Headings in
// fenced code blocks are not headings.
func markdownAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	anchors := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(text), ""), " ", "-")
		if n := seen[slug]; n > 0 {
			anchors[slug+"-"+strconv.Itoa(n)] = true
		} else {
			anchors[slug] = true
		}
		seen[slug]++
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return anchors
}

func TestMarkdownAnchors(t *testing.T) {
	path := t.TempDir() + "/a.md"
	src := "# Operations\n## Lag\n### Dead letters\n```sh\n# not a heading\n```\n## Lag\n## Schema keys and Citus\n### Running on a secured cluster\n### `groupmatch migrate`, then roll\n"
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got := markdownAnchors(t, path)
	for _, want := range []string{"operations", "lag", "lag-1", "dead-letters", "schema-keys-and-citus",
		"running-on-a-secured-cluster", "groupmatch-migrate-then-roll"} {
		if !got[want] {
			t.Errorf("no anchor %q in %v", want, got)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("a comment in a code block made an anchor")
	}
}

// Every alert has a severity, a summary, a description, and a runbook_url
// pointing at a section docs/operations.md has; every description names
// the same section as the runbook_url.
func TestAlertsHaveRunbooks(t *testing.T) {
	var rules alertRules
	readYAML(t, "prometheus/alerts.yml", &rules)
	anchors := markdownAnchors(t, "../docs/operations.md")
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			a := r.Annotations
			if r.Labels["severity"] != "warning" && r.Labels["severity"] != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", r.Alert, r.Labels["severity"])
			}
			if strings.TrimSpace(a["summary"]) == "" {
				t.Errorf("%s: no summary", r.Alert)
			}
			if strings.TrimSpace(a["description"]) == "" {
				t.Errorf("%s: no description", r.Alert)
			}
			anchor, ok := strings.CutPrefix(a["runbook_url"], runbookPrefix)
			switch {
			case !ok:
				t.Errorf("%s: runbook_url %q does not start with %s", r.Alert, a["runbook_url"], runbookPrefix)
			case !anchors[anchor]:
				t.Errorf("%s: runbook_url names #%s, which docs/operations.md has no heading for", r.Alert, anchor)
			case !strings.Contains(a["description"], "docs/operations.md#"+anchor):
				t.Errorf("%s: the description does not name the runbook's section docs/operations.md#%s", r.Alert, anchor)
			}
		}
	}
	if alerts < 15 {
		t.Errorf("%d alerts read from alerts.yml; the file has at least 15", alerts)
	}
}

// Every alert that divides one rate by another only fires when the divisor
// saw traffic enough: one failure in ten requests must not page.
func TestRatioAlertsHaveTrafficGuard(t *testing.T) {
	var rules alertRules
	readYAML(t, "prometheus/alerts.yml", &rules)
	ratio := regexp.MustCompile(`/\s*sum(\s+by\s*\([^)]*\))?\s*\((rate|increase)\(`)
	guard := regexp.MustCompile(`(?s)\band\s+sum\(increase\(groupmatch_[a-z_]+_total\[[0-9]+m\]\)\)\s*>=\s*[0-9]+`)
	ratios := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || !ratio.MatchString(r.Expr) {
				continue
			}
			ratios++
			if !guard.MatchString(r.Expr) {
				t.Errorf("%s divides rates without a minimum-traffic guard (and sum(increase(…_total[…])) >= N):\n%s", r.Alert, r.Expr)
			}
		}
	}
	if ratios == 0 {
		t.Error("no ratio alert found: the test no longer recognises GroupmatchHTTPErrorRatioHigh")
	}
}
