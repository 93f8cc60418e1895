package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

const dashboardPath = "grafana/dashboards/groupmatch.json"

// datasourceRefs returns, for every "datasource" object or string anywhere
// in the dashboard (panels, targets, variables, annotations, rows' nested
// panels), its JSON path and the uid it names.
func datasourceRefs(v any, path string, out map[string]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, child := range v {
			p := path + "." + k
			if k == "datasource" {
				switch ds := child.(type) {
				case map[string]any:
					uid, _ := ds["uid"].(string)
					out[p] = uid
				case string:
					out[p] = ds // the pre-8.3 form: a datasource by name
				case nil:
					out[p] = "" // null: Grafana's default datasource
				}
				continue
			}
			datasourceRefs(child, p, out)
		}
	case []any:
		for i, child := range v {
			datasourceRefs(child, fmt.Sprintf("%s[%d]", path, i), out)
		}
	}
}

func readDashboard(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	return d
}

// The dashboard names no datasource uid: every panel, target and query
// variable uses the ${datasource} variable, which lists the Prometheus
// datasources of the Grafana it is imported into. Imported into a Grafana
// whose Prometheus has any other uid, it works.
func TestDashboardDatasourceIsAVariable(t *testing.T) {
	d := readDashboard(t)
	refs := map[string]string{}
	datasourceRefs(d, "", refs)
	if len(refs) < 50 {
		t.Fatalf("only %d datasource references found; the walk is broken", len(refs))
	}
	for path, uid := range refs {
		if uid != "${datasource}" {
			t.Errorf("%s names datasource %q, want ${datasource}", path, uid)
		}
	}
	var ds map[string]any
	for _, v := range variables(t, d) {
		if v["name"] == "datasource" {
			ds = v
		}
	}
	if ds == nil || ds["type"] != "datasource" || ds["query"] != "prometheus" {
		t.Fatalf("datasource variable %v, want type datasource, query prometheus", ds)
	}
	// Nothing Grafana substitutes at import (${DS_…} inputs) is needed.
	if _, ok := d["__inputs"]; ok {
		t.Error("the dashboard has __inputs: importing it would ask for a datasource")
	}
}

func variables(t *testing.T, d map[string]any) []map[string]any {
	t.Helper()
	tmpl, _ := d["templating"].(map[string]any)
	list, _ := tmpl["list"].([]any)
	var out []map[string]any
	for _, v := range list {
		m, ok := v.(map[string]any)
		if !ok {
			t.Fatalf("templating entry %v is not an object", v)
		}
		out = append(out, m)
	}
	return out
}

// The job, instance, group and topic variables exist, accept several values
// and "All", and every query of every panel filters by job and instance;
// the lag queries of the consumer groups also by group and topic.
func TestDashboardVariables(t *testing.T) {
	d := readDashboard(t)
	vars := map[string]map[string]any{}
	for _, v := range variables(t, d) {
		vars[v["name"].(string)] = v
	}
	for _, name := range []string{"job", "instance", "group", "topic"} {
		v := vars[name]
		if v == nil {
			t.Errorf("no variable %q", name)
			continue
		}
		q, _ := v["query"].(map[string]any)
		if v["type"] != "query" || v["multi"] != true || v["includeAll"] != true || v["allValue"] != ".*" ||
			!strings.HasPrefix(fmt.Sprint(q["query"]), "label_values(") {
			t.Errorf("variable %q: %v", name, v)
		}
	}

	var dash dashboard
	b, _ := os.ReadFile(dashboardPath)
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	// A metric selector: a name followed by its braces, not by "(".
	selector := regexp.MustCompile(`\b(groupmatch_[a-z_]+|process_[a-z_]+|go_[a-z_]+|up)\b(\{[^}]*\})?(\s*\()?`)
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			n := 0
			for _, m := range selector.FindAllStringSubmatch(tg.Expr, -1) {
				if m[3] != "" {
					continue // a function
				}
				n++
				name, body := m[1], m[2]
				for _, want := range []string{`job=~"$job"`, `instance=~"$instance"`} {
					if !strings.Contains(body, want) {
						t.Errorf("panel %q: %s lacks %s", p.Title, name, want)
					}
				}
				if strings.HasPrefix(name, "groupmatch_kafka_consumer_lag_") && !strings.Contains(body, `group="groupmatch-dlq-replay"`) {
					for _, want := range []string{`group=~"$group"`, `topic=~"$topic"`} {
						if !strings.Contains(body, want) {
							t.Errorf("panel %q: %s lacks %s", p.Title, name, want)
						}
					}
				}
			}
			if n == 0 {
				t.Errorf("panel %q: no metric found in %s", p.Title, tg.Expr)
			}
		}
	}
}

// Panels do not overlap and fit the 24-column grid.
func TestDashboardLayout(t *testing.T) {
	var dash struct {
		Panels []struct {
			Title   string
			ID      int
			GridPos struct{ H, W, X, Y int }
		}
	}
	b, _ := os.ReadFile(dashboardPath)
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatal(err)
	}
	ids := map[int]bool{}
	type cell struct{ x, y int }
	taken := map[cell]string{}
	for _, p := range dash.Panels {
		if ids[p.ID] {
			t.Errorf("panel %q: id %d used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside the grid", p.Title, g)
		}
		for x := g.X; x < g.X+g.W; x++ {
			for y := g.Y; y < g.Y+g.H; y++ {
				if other, ok := taken[cell{x, y}]; ok {
					t.Fatalf("panels %q and %q overlap at %d,%d", other, p.Title, x, y)
				}
				taken[cell{x, y}] = p.Title
			}
		}
	}
}
