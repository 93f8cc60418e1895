package deploy

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/groupmatch/groupmatch/devenv"
)

// compose is the part of a compose file the tests look at.
type compose struct {
	Services map[string]service `yaml:"services"`
	Volumes  map[string]any     `yaml:"volumes"`
}

type service struct {
	Image         string               `yaml:"image"`
	Build         any                  `yaml:"build"`
	ContainerName string               `yaml:"container_name"`
	Command       []string             `yaml:"command"`
	Environment   map[string]string    `yaml:"environment"`
	Ports         []string             `yaml:"ports"`
	Volumes       []string             `yaml:"volumes"`
	Restart       string               `yaml:"restart"`
	DependsOn     map[string]dependsOn `yaml:"depends_on"`
	Healthcheck   *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

type dependsOn struct {
	Condition string `yaml:"condition"`
}

func readYAML(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func loadCompose(t *testing.T) compose {
	t.Helper()
	var c compose
	readYAML(t, "../docker-compose.yml", &c)
	return c
}

// stages are the groupmatch services, with the command each runs.
var stages = map[string]string{"migrate": "migrate", "topics": "topics", "ingest": "ingest", "matcher": "matcher", "sink": "sink"}

var pinnedImage = regexp.MustCompile(`^[a-z0-9./_-]+:[A-Za-z0-9._-]+$`)

func TestComposeServices(t *testing.T) {
	c := loadCompose(t)
	for _, name := range []string{"kafka", "postgres", "migrate", "topics", "ingest", "matcher", "sink", "prometheus", "grafana"} {
		if _, ok := c.Services[name]; !ok {
			t.Errorf("service %s missing", name)
		}
	}
	for name, s := range c.Services {
		if !pinnedImage.MatchString(s.Image) || strings.HasSuffix(s.Image, ":latest") {
			t.Errorf("%s: image %q is not pinned to a tag (and never :latest)", name, s.Image)
		}
		if strings.Contains(s.Image, "bitnami") {
			t.Errorf("%s: image %q: use apache/kafka", name, s.Image)
		}
		if s.ContainerName != "" {
			t.Errorf("%s: container_name %q prevents --scale", name, s.ContainerName)
		}
	}
	if img := c.Services["kafka"].Image; !strings.HasPrefix(img, "apache/kafka:") {
		t.Errorf("kafka image %q, want apache/kafka", img)
	}
	kenv := c.Services["kafka"].Environment
	if !strings.Contains(kenv["KAFKA_PROCESS_ROLES"], "controller") || kenv["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "" {
		t.Errorf("kafka is not in KRaft mode: %v", kenv)
	}
	if !strings.HasPrefix(c.Services["postgres"].Image, "postgres:") {
		t.Errorf("postgres image %q", c.Services["postgres"].Image)
	}
}

func TestComposeStages(t *testing.T) {
	c := loadCompose(t)
	for name, cmd := range stages {
		s := c.Services[name]
		if s.Build == nil || s.Image != "groupmatch:dev" {
			t.Errorf("%s: built from deploy/Dockerfile as groupmatch:dev? build %v image %q", name, s.Build, s.Image)
		}
		if len(s.Command) == 0 || s.Command[0] != cmd {
			t.Errorf("%s: command %v, want %s", name, s.Command, cmd)
		}
		if s.Environment["KAFKA_BROKERS"] != "kafka:9092" {
			t.Errorf("%s: KAFKA_BROKERS %q, want kafka:9092", name, s.Environment["KAFKA_BROKERS"])
		}
		if u := s.Environment["DATABASE_URL"]; !strings.HasPrefix(u, "postgres://") || !strings.Contains(u, "@postgres:5432/") {
			t.Errorf("%s: DATABASE_URL %q does not name the postgres service", name, u)
		}
		if s.Environment["ADMIN_ADDR"] != ":9180" {
			t.Errorf("%s: ADMIN_ADDR %q, want :9180 (prometheus.yml scrapes port 9180)", name, s.Environment["ADMIN_ADDR"])
		}
	}
	for _, name := range []string{"migrate", "topics"} {
		if r := c.Services[name].Restart; r != "no" {
			t.Errorf("%s is one-shot: restart %q, want \"no\"", name, r)
		}
	}
	if d := c.Services["migrate"].DependsOn["postgres"].Condition; d != "service_healthy" {
		t.Errorf("migrate waits for postgres %q, want service_healthy", d)
	}
	if d := c.Services["topics"].DependsOn["kafka"].Condition; d != "service_healthy" {
		t.Errorf("topics waits for kafka %q, want service_healthy", d)
	}
	for _, name := range []string{"ingest", "matcher", "sink"} {
		s := c.Services[name]
		for _, dep := range []string{"migrate", "topics"} {
			if d := s.DependsOn[dep].Condition; d != "service_completed_successfully" {
				t.Errorf("%s waits for %s %q, want service_completed_successfully", name, dep, d)
			}
		}
		if s.Healthcheck == nil || !slices.Equal(s.Healthcheck.Test[:3], []string{"CMD", "/usr/local/bin/groupmatch", "healthcheck"}) {
			t.Errorf("%s: healthcheck %+v must run the binary (the image has no shell)", name, s.Healthcheck)
		} else if !slices.Contains(s.Healthcheck.Test, "http://127.0.0.1:9180/readyz") {
			t.Errorf("%s: healthcheck %v does not probe /readyz on the admin port 9180", name, s.Healthcheck.Test)
		}
	}
	if p := c.Services["ingest"].Ports; !slices.Contains(p, "127.0.0.1:8080:8080") {
		t.Errorf("ingest ports %v, want 127.0.0.1:8080:8080", p)
	}
	for _, name := range []string{"matcher", "sink"} {
		if p := c.Services[name].Ports; len(p) > 0 {
			t.Errorf("%s publishes %v: a fixed host port prevents --scale", name, p)
		}
	}
	for _, name := range []string{"kafka", "postgres", "prometheus", "grafana"} {
		if c.Services[name].Healthcheck == nil {
			t.Errorf("%s has no healthcheck", name)
		}
	}
	if d := c.Services["grafana"].DependsOn["prometheus"].Condition; d != "service_healthy" {
		t.Errorf("grafana waits for prometheus %q, want service_healthy", d)
	}
}

// The monitoring services mount what deploy/ holds, where the configuration
// expects it.
func TestComposeMonitoringMounts(t *testing.T) {
	c := loadCompose(t)
	mounts := func(name string) map[string]string { // container path -> host path
		m := map[string]string{}
		for _, v := range c.Services[name].Volumes {
			parts := strings.Split(v, ":")
			if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") {
				m[parts[1]] = parts[0]
				if _, err := os.Stat(filepath.Join("..", parts[0])); err != nil {
					t.Errorf("%s mounts %s, which does not exist", name, parts[0])
				}
			}
		}
		return m
	}
	prom := mounts("prometheus")
	if prom["/etc/prometheus"] != "./deploy/prometheus" {
		t.Errorf("prometheus mounts %v, want ./deploy/prometheus at /etc/prometheus", prom)
	}
	if !slices.Contains(c.Services["prometheus"].Command, "--config.file=/etc/prometheus/prometheus.yml") {
		t.Errorf("prometheus command %v", c.Services["prometheus"].Command)
	}
	graf := mounts("grafana")
	if graf["/etc/grafana/provisioning"] != "./deploy/grafana/provisioning" || graf["/var/lib/grafana/dashboards"] != "./deploy/grafana/dashboards" {
		t.Errorf("grafana mounts %v", graf)
	}
	for _, p := range []string{"127.0.0.1:9090:9090", "127.0.0.1:3000:3000"} {
		if !slices.Contains(c.Services["prometheus"].Ports, p) && !slices.Contains(c.Services["grafana"].Ports, p) {
			t.Errorf("port %s not published", p)
		}
	}
}

// prometheus.yml scrapes every stage through the compose service names, on
// the port the stages listen on; its rule file exists.
func TestPrometheusConfig(t *testing.T) {
	var cfg struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName      string `yaml:"job_name"`
			DNSSDConfigs []struct {
				Names []string `yaml:"names"`
				Type  string   `yaml:"type"`
				Port  int      `yaml:"port"`
			} `yaml:"dns_sd_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "prometheus/prometheus.yml", &cfg)
	c := loadCompose(t)
	for _, stage := range []string{"ingest", "matcher", "sink"} {
		found := false
		for _, sc := range cfg.ScrapeConfigs {
			if sc.JobName != "groupmatch-"+stage {
				continue
			}
			for _, d := range sc.DNSSDConfigs {
				if slices.Contains(d.Names, stage) && d.Type == "A" && d.Port == 9180 {
					found = true
				}
			}
		}
		if !found {
			t.Errorf("no job groupmatch-%s discovering the %s service by DNS on the admin port 9180", stage, stage)
		}
		if _, ok := c.Services[stage]; !ok {
			t.Errorf("prometheus.yml scrapes %s, which compose does not run", stage)
		}
	}
	for _, f := range cfg.RuleFiles {
		if _, err := os.Stat(filepath.Join("prometheus", f)); err != nil {
			t.Errorf("rule file %s: %v", f, err)
		}
	}
}

// dashboard is the part of the Grafana dashboard the tests look at.
type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

type panel struct {
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	Targets []struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	} `json:"targets"`
}

func TestGrafanaProvisioning(t *testing.T) {
	var ds struct {
		Datasources []struct {
			UID, Type, URL string
		} `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].Type != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Fatalf("datasources %+v, want one prometheus at http://prometheus:9090", ds.Datasources)
	}
	var prov struct {
		Providers []struct {
			Type    string
			Options struct{ Path string }
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/groupmatch.yml", &prov)
	if len(prov.Providers) != 1 || prov.Providers[0].Options.Path != "/var/lib/grafana/dashboards" {
		t.Fatalf("dashboard providers %+v", prov.Providers)
	}

	b, err := os.ReadFile("grafana/dashboards/groupmatch.json")
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard: %v", err)
	}
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q title %q", d.UID, d.Title)
	}
	var titles []string
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		titles = append(titles, p.Title)
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the variable ${datasource}", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" || tg.RefID == "" {
				t.Errorf("panel %q: empty query or refId", p.Title)
			}
		}
	}
	// What the issue asks the dashboard to show.
	for _, want := range []string{"Ingest throughput", "End-to-end throughput", "Consumer lag per partition", "Time to drain",
		"Outcomes", "Match rate by identifier", "Batch latency", "DB chunk latency", "Retries", "Dead letters", "Rebalances", "HTTP error ratio",
		"DB pool connections", "DB pool acquires that waited", "DB pool wait time", "CPU", "Memory", "Garbage collection",
		"HTTP requests in flight", "Sink outcomes", "Duplicates and skipped records", "Consumer lag in seconds", "Lag collection errors"} {
		if !slices.Contains(titles, want) {
			t.Errorf("dashboard lacks the panel %q", want)
		}
	}
}

// docker compose validates the file against the Compose schema, offline:
// the compose plugin where it exists, else Debian's docker-compose (which
// make deps installs). No Docker engine is needed for that.
// The secrets come from the environment (.env): with every variable of
// .env.example set, the file validates; with one missing, compose refuses.
func TestComposeConfigValidates(t *testing.T) {
	vars := envExample(t)
	composeConfig := func(env []string) *exec.Cmd {
		cmd := exec.Command("docker", "compose", "-f", "../docker-compose.yml", "config", "-q")
		if exec.Command("docker", "compose", "version").Run() != nil {
			if _, err := exec.LookPath("docker-compose"); err != nil {
				t.Fatal("neither docker compose nor docker-compose is installed; make deps installs Debian's docker-compose")
			}
			cmd = exec.Command("docker-compose", "-f", "../docker-compose.yml", "config", "-q")
		}
		// The variables are given explicitly; a developer's own .env
		// beside the file fills only what the environment leaves unset.
		cmd.Env = append(os.Environ(), env...)
		return cmd
	}
	var all []string
	for _, v := range vars {
		all = append(all, v+"=secret1")
	}
	if out, err := composeConfig(all).CombinedOutput(); err != nil {
		t.Fatalf("compose config: %v\n%s", err, out)
	}
	if _, err := os.Stat("../.env"); err == nil {
		t.Log("../.env exists: not checking that compose refuses missing secrets")
		return
	}
	for i, v := range vars {
		env := append(slices.Clone(all[:i]), all[i+1:]...)
		env = append(env, v+"=")
		out, err := composeConfig(env).CombinedOutput()
		if err == nil || !strings.Contains(string(out), v) {
			t.Errorf("compose config without %s: %v, want a refusal naming it\n%s", v, err, out)
		}
	}
}

// envExample returns the variables .env.example documents.
func envExample(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../.env.example")
	if err != nil {
		t.Fatal(err)
	}
	var vars []string
	for _, line := range strings.Split(string(b), "\n") {
		if name, _, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
			vars = append(vars, strings.TrimSpace(name))
		}
	}
	if len(vars) == 0 {
		t.Fatal(".env.example names no variable")
	}
	return vars
}

// No secret is written in the compose file, nothing listens beyond this
// host, and Prometheus cannot be reconfigured or stopped over HTTP.
func TestComposeHardening(t *testing.T) {
	c := loadCompose(t)
	vars := envExample(t)
	secretRef := regexp.MustCompile(`\$\{([A-Z_]+):\?[^}]*\}`)
	secrets := map[string]string{ // service -> variable holding a secret
		"postgres": "POSTGRES_PASSWORD",
		"grafana":  "GF_SECURITY_ADMIN_PASSWORD",
	}
	for name, key := range secrets {
		v := c.Services[name].Environment[key]
		m := secretRef.FindStringSubmatch(v)
		if m == nil || !slices.Contains(vars, m[1]) {
			t.Errorf("%s: %s = %q, want ${VAR:?…} with VAR documented in .env.example", name, key, v)
		}
	}
	for name := range stages {
		u := c.Services[name].Environment["DATABASE_URL"]
		if m := secretRef.FindStringSubmatch(u); m == nil || m[1] != "POSTGRES_PASSWORD" {
			t.Errorf("%s: DATABASE_URL %q does not take its password from POSTGRES_PASSWORD", name, u)
		}
	}
	raw, err := os.ReadFile("../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	if regexp.MustCompile(`(?i)(password|passwd)["']?\s*[:=]\s*["']?(admin|groupmatch|postgres)\b`).Match(raw) {
		t.Error("docker-compose.yml writes a password in the clear")
	}
	for name, s := range c.Services {
		for _, p := range s.Ports {
			if !strings.HasPrefix(p, "127.0.0.1:") {
				t.Errorf("%s publishes %q on every interface, want 127.0.0.1:…", name, p)
			}
		}
		for _, arg := range s.Command {
			if strings.Contains(arg, "web.enable-lifecycle") || strings.Contains(arg, "web.enable-admin-api") {
				t.Errorf("%s: %s lets anyone who reaches it stop or reconfigure it", name, arg)
			}
		}
	}
}

// Kafka in compose is the broker the tests run (devenv.StartKafka): the
// same version and single-node settings, and its log in a named volume so
// that down and up keep records and offsets.
func TestComposeKafkaMatchesTests(t *testing.T) {
	c := loadCompose(t)
	k := c.Services["kafka"]
	if want := "apache/kafka:" + devenv.KafkaVersion; k.Image != want {
		t.Errorf("kafka image %q, want %s", k.Image, want)
	}
	for key, want := range devenv.KafkaSettings() {
		name := "KAFKA_" + strings.ToUpper(strings.ReplaceAll(key, ".", "_"))
		if got := k.Environment[name]; got != want {
			t.Errorf("kafka %s = %q, want %q as the tests run it (%s)", name, got, want, key)
		}
	}
	dir := k.Environment["KAFKA_LOG_DIRS"]
	if dir == "" || k.Environment["CLUSTER_ID"] == "" {
		t.Errorf("kafka needs KAFKA_LOG_DIRS and a fixed CLUSTER_ID to keep its log: %v", k.Environment)
	}
	var named bool
	for _, v := range k.Volumes {
		src, dst, _ := strings.Cut(v, ":")
		if dst == dir && !strings.HasPrefix(src, ".") && !strings.HasPrefix(src, "/") {
			_, named = c.Volumes[src]
		}
	}
	if !named {
		t.Errorf("kafka's log dir %q is not a named volume: %v", dir, k.Volumes)
	}
}
