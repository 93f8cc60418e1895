package deploy

import (
	"bytes"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

const k8sBase = "k8s/base"

var update = flag.Bool("update", false, "rewrite generated files (k8s/base/prometheusrule.yaml) instead of comparing them")

// k8sObjects are the objects of the kustomize build of k8sBase, each
// decoded strictly (an unknown or misspelt field is an error) into its
// Kubernetes or prometheus-operator Go type.
type k8sObjects struct {
	deployments  map[string]*appsv1.Deployment
	services     map[string]*corev1.Service
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	pdbs         map[string]*policyv1.PodDisruptionBudget
	jobs         map[string]*batchv1.Job
	monitors     map[string]*monitoringv1.ServiceMonitor
	rules        map[string]*monitoringv1.PrometheusRule
	kindsInOrder []string
}

// buildK8s builds dir with kustomize's Go API (what kubectl apply -k runs),
// offline, and decodes every object strictly.
func buildK8s(t *testing.T, dir string) *k8sObjects {
	t.Helper()
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	o := &k8sObjects{
		deployments: map[string]*appsv1.Deployment{}, services: map[string]*corev1.Service{},
		configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{},
		pdbs: map[string]*policyv1.PodDisruptionBudget{}, jobs: map[string]*batchv1.Job{},
		monitors: map[string]*monitoringv1.ServiceMonitor{}, rules: map[string]*monitoringv1.PrometheusRule{},
	}
	for _, r := range m.Resources() {
		raw, err := r.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		kind, name := r.GetKind(), r.GetName()
		o.kindsInOrder = append(o.kindsInOrder, kind)
		var obj any
		var apiVersion string
		switch kind {
		case "Deployment":
			v := &appsv1.Deployment{}
			o.deployments[name], obj, apiVersion = v, v, "apps/v1"
		case "Service":
			v := &corev1.Service{}
			o.services[name], obj, apiVersion = v, v, "v1"
		case "ConfigMap":
			v := &corev1.ConfigMap{}
			o.configMaps[name], obj, apiVersion = v, v, "v1"
		case "Secret":
			v := &corev1.Secret{}
			o.secrets[name], obj, apiVersion = v, v, "v1"
		case "PodDisruptionBudget":
			v := &policyv1.PodDisruptionBudget{}
			o.pdbs[name], obj, apiVersion = v, v, "policy/v1"
		case "Job":
			v := &batchv1.Job{}
			o.jobs[name], obj, apiVersion = v, v, "batch/v1"
		case "ServiceMonitor":
			v := &monitoringv1.ServiceMonitor{}
			o.monitors[name], obj, apiVersion = v, v, "monitoring.coreos.com/v1"
		case "PrometheusRule":
			v := &monitoringv1.PrometheusRule{}
			o.rules[name], obj, apiVersion = v, v, "monitoring.coreos.com/v1"
		default:
			t.Errorf("%s/%s: a kind this test does not validate", kind, name)
			continue
		}
		if got := r.GetApiVersion(); got != apiVersion {
			t.Errorf("%s/%s: apiVersion %q, want %q", kind, name, got, apiVersion)
		}
		if err := yaml.UnmarshalStrict(raw, obj); err != nil {
			t.Errorf("%s/%s does not decode strictly: %v", kind, name, err)
		}
	}
	return o
}

// The strict decoding rejects what kubectl would reject: a field the type
// does not have. A misspelt field must fail the build test.
func TestK8sStrictDecodingRejectsUnknownFields(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"kustomization.yaml": "resources: [pdb.yaml]\n",
		"pdb.yaml": `apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: x}
spec:
  maxUnavailable: 1
  selectr: {matchLabels: {a: b}}
`,
	}
	for name, body := range files {
		if err := os.WriteFile(dir+"/"+name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	m, err := krusty.MakeKustomizer(krusty.MakeDefaultOptions()).Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := m.Resources()[0].AsYAML()
	if err != nil {
		t.Fatal(err)
	}
	err = yaml.UnmarshalStrict(raw, &policyv1.PodDisruptionBudget{})
	if err == nil || !strings.Contains(err.Error(), "selectr") {
		t.Fatalf("a misspelt field decoded: %v", err)
	}
}

// adminPorts are the Deployments and their admin ports (the issue-14 contract:
// --admin-addr defaults to :9180 for ingest, :9181 matcher, :9182 sink).
var adminPorts = map[string]int32{"ingest": 9180, "matcher": 9181, "sink": 9182}

// shutdownBound is how long a stage takes, after its drain delay, to finish
// in-flight work on SIGTERM (cmd/groupmatch's shutdownTimeout).
const shutdownBound = 10 * time.Second

func TestK8sBase(t *testing.T) {
	o := buildK8s(t, k8sBase)
	cfg := o.configMaps["groupmatch-config"]
	if cfg == nil {
		t.Fatal("no ConfigMap groupmatch-config")
	}
	drain, err := time.ParseDuration(cfg.Data["DRAIN_DELAY"])
	if err != nil {
		t.Fatalf("DRAIN_DELAY %q: %v", cfg.Data["DRAIN_DELAY"], err)
	}
	if cfg.Data["KAFKA_BROKERS"] == "" {
		t.Error("the ConfigMap sets no KAFKA_BROKERS")
	}
	for k := range cfg.Data {
		if strings.Contains(k, "PASSWORD") || k == "DATABASE_URL" {
			t.Errorf("ConfigMap key %s: secrets belong in the Secret groupmatch-secrets", k)
		}
	}
	// The Secret is referenced, never committed.
	if len(o.secrets) != 0 {
		t.Errorf("the base holds Secrets %v: secrets are created by the operator, not committed", slices.Collect(maps.Keys(o.secrets)))
	}

	for stage, adminPort := range adminPorts {
		t.Run(stage, func(t *testing.T) {
			name := "groupmatch-" + stage
			d := o.deployments[name]
			if d == nil {
				t.Fatalf("no Deployment %s", name)
			}
			pod := d.Spec.Template.Spec
			if len(pod.Containers) != 1 {
				t.Fatalf("%d containers", len(pod.Containers))
			}
			c := pod.Containers[0]
			if !slices.Equal(c.Args, []string{stage}) {
				t.Errorf("args %v, want [%s]", c.Args, stage)
			}
			if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
				t.Errorf("replicas %v: a PodDisruptionBudget of one pod blocks node drains", d.Spec.Replicas)
			}
			sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("the selector %v does not select the pod template's labels %v (%v)", d.Spec.Selector, d.Spec.Template.Labels, err)
			}

			// Probes on the admin port of the contract.
			port := map[string]int32{}
			for _, p := range c.Ports {
				port[p.Name] = p.ContainerPort
			}
			if port["admin"] != adminPort {
				t.Errorf("admin port %d, want %d", port["admin"], adminPort)
			}
			if env(c, "ADMIN_ADDR") != fmt.Sprintf(":%d", adminPort) {
				t.Errorf("ADMIN_ADDR %q, want :%d", env(c, "ADMIN_ADDR"), adminPort)
			}
			for _, pr := range []struct {
				name  string
				probe *corev1.Probe
				path  string
			}{{"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}, {"startup", c.StartupProbe, "/healthz"}} {
				if pr.probe == nil || pr.probe.HTTPGet == nil {
					t.Errorf("no HTTP %s probe", pr.name)
					continue
				}
				g := pr.probe.HTTPGet
				if g.Path != pr.path || (g.Port.StrVal != "admin" && g.Port.IntVal != adminPort) {
					t.Errorf("%s probe %s on port %s, want %s on admin (%d)", pr.name, g.Path, g.Port.String(), pr.path, adminPort)
				}
			}
			if stage == "ingest" {
				if port["http"] != 8080 || env(c, "HTTP_ADDR") != ":8080" {
					t.Errorf("ingest's API: port %d, HTTP_ADDR %q, want 8080", port["http"], env(c, "HTTP_ADDR"))
				}
			} else if _, ok := port["http"]; ok {
				t.Errorf("%s exposes an API port; only ingest serves the API", stage)
			}

			// Resources: requests for scheduling, a memory limit.
			if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() || c.Resources.Limits.Memory().IsZero() {
				t.Errorf("resources %+v: want cpu and memory requests and a memory limit", c.Resources)
			}

			// SIGTERM: drain, then shut down, before the kubelet kills.
			grace := time.Duration(*pod.TerminationGracePeriodSeconds) * time.Second
			if grace <= drain+shutdownBound {
				t.Errorf("terminationGracePeriodSeconds %s, want more than DRAIN_DELAY %s + shutdown %s", grace, drain, shutdownBound)
			}

			// Configuration from the ConfigMap, secrets from the Secret.
			if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "groupmatch-config" {
				t.Errorf("envFrom %+v, want the ConfigMap groupmatch-config", c.EnvFrom)
			}
			checkSecretEnv(t, c, map[string]bool{"DATABASE_URL": false, "KAFKA_SASL_PASSWORD": true})

			// Hardening: the image runs as nonroot and writes nothing.
			sc := c.SecurityContext
			if pod.SecurityContext == nil || pod.SecurityContext.RunAsNonRoot == nil || !*pod.SecurityContext.RunAsNonRoot ||
				sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
				sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
				t.Errorf("security context %+v / %+v", pod.SecurityContext, sc)
			}

			// A PodDisruptionBudget selecting the pods.
			pdb := o.pdbs[name]
			if pdb == nil {
				t.Fatalf("no PodDisruptionBudget %s", name)
			}
			sel, err = metav1.LabelSelectorAsSelector(pdb.Spec.Selector)
			if err != nil || !sel.Matches(labels.Set(d.Spec.Template.Labels)) || pdb.Spec.MaxUnavailable == nil {
				t.Errorf("PodDisruptionBudget %+v does not cover the pods (%v)", pdb.Spec, err)
			}

			// The Service the ServiceMonitor scrapes (its name is the job).
			svc := o.services[name]
			if svc == nil {
				t.Fatalf("no Service %s", name)
			}
			if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(d.Spec.Template.Labels)) {
				t.Errorf("Service %s selects %v, not the pods", name, svc.Spec.Selector)
			}
			svcPorts := map[string]corev1.ServicePort{}
			for _, p := range svc.Spec.Ports {
				svcPorts[p.Name] = p
			}
			if p, ok := svcPorts["admin"]; !ok || p.Port != adminPort || p.TargetPort.StrVal != "admin" {
				t.Errorf("Service %s: admin port %+v", name, svcPorts["admin"])
			}
			if stage == "ingest" {
				if p, ok := svcPorts["http"]; !ok || p.TargetPort.StrVal != "http" {
					t.Errorf("Service %s: no http port to the API: %+v", name, svc.Spec.Ports)
				}
			}
		})
	}

	// migrate: a Job running groupmatch migrate with the database's secret.
	job := o.jobs["groupmatch-migrate"]
	if job == nil {
		t.Fatal("no Job groupmatch-migrate")
	}
	jc := job.Spec.Template.Spec.Containers[0]
	if !slices.Equal(jc.Args, []string{"migrate"}) || job.Spec.Template.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("migrate Job: args %v restartPolicy %s", jc.Args, job.Spec.Template.Spec.RestartPolicy)
	}
	checkSecretEnv(t, jc, map[string]bool{"DATABASE_URL": false})

	// The ServiceMonitor scrapes the admin port of every stage's Service.
	sm := o.monitors["groupmatch"]
	if sm == nil {
		t.Fatal("no ServiceMonitor groupmatch")
	}
	smSel, err := metav1.LabelSelectorAsSelector(&sm.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	for stage := range adminPorts {
		svc := o.services["groupmatch-"+stage]
		if svc != nil && !smSel.Matches(labels.Set(svc.Labels)) {
			t.Errorf("the ServiceMonitor does not select Service %s (labels %v)", svc.Name, svc.Labels)
		}
	}
	if len(sm.Spec.Endpoints) != 1 || sm.Spec.Endpoints[0].Port != "admin" || sm.Spec.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor endpoints %+v, want /metrics on port admin", sm.Spec.Endpoints)
	}

	if o.rules["groupmatch"] == nil {
		t.Error("no PrometheusRule groupmatch")
	}
	// Every object the base holds is checked above.
	for _, kind := range o.kindsInOrder {
		if !slices.Contains([]string{"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "Job", "ServiceMonitor", "PrometheusRule"}, kind) {
			t.Errorf("unchecked kind %s", kind)
		}
	}
}

// env returns the literal value of the container's variable name.
func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// checkSecretEnv checks that each variable of want comes from the Secret
// groupmatch-secrets (optional as want says), and that no variable that
// looks secret has a literal value.
func checkSecretEnv(t *testing.T, c corev1.Container, want map[string]bool) {
	t.Helper()
	found := map[string]bool{}
	for _, e := range c.Env {
		secretish := strings.Contains(e.Name, "PASSWORD") || strings.Contains(e.Name, "SECRET") || e.Name == "DATABASE_URL"
		if secretish && e.Value != "" {
			t.Errorf("%s: %s has a literal value; it must come from the Secret", c.Name, e.Name)
		}
		optional, ok := want[e.Name]
		if !ok {
			continue
		}
		found[e.Name] = true
		ref := e.ValueFrom
		if ref == nil || ref.SecretKeyRef == nil || ref.SecretKeyRef.Name != "groupmatch-secrets" || ref.SecretKeyRef.Key != e.Name {
			t.Errorf("%s: %s is not read from groupmatch-secrets/%s: %+v", c.Name, e.Name, e.Name, ref)
			continue
		}
		if got := ref.SecretKeyRef.Optional != nil && *ref.SecretKeyRef.Optional; got != optional {
			t.Errorf("%s: %s optional %v, want %v", c.Name, e.Name, got, optional)
		}
	}
	for name := range want {
		if !found[name] {
			t.Errorf("%s: no %s from the Secret", c.Name, name)
		}
	}
}

// prometheusRuleYAML is k8s/base/prometheusrule.yaml as generated from
// prometheus/alerts.yml: the same rule groups, comments included, under a
// PrometheusRule's spec.
func prometheusRuleYAML(t *testing.T) []byte {
	t.Helper()
	alerts, err := os.ReadFile("prometheus/alerts.yml")
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(alerts, []byte("\ngroups:"))
	if i < 0 {
		t.Fatal("alerts.yml has no top-level groups:")
	}
	var b bytes.Buffer
	b.WriteString(`# GENERATED from deploy/prometheus/alerts.yml by
#   go test ./deploy -run TestPrometheusRuleMatchesAlerts -update
# Do not edit: edit alerts.yml (and its promtool tests), then regenerate.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: groupmatch
  labels:
    app.kubernetes.io/name: groupmatch
spec:
`)
	for line := range strings.SplitSeq(strings.TrimRight(string(alerts[i+1:]), "\n"), "\n") {
		if line == "" {
			b.WriteString("\n")
			continue
		}
		b.WriteString("  " + line + "\n")
	}
	return b.Bytes()
}

// The PrometheusRule holds exactly the rules of alerts.yml, which promtool
// tests; its rule groups decode to the same data.
func TestPrometheusRuleMatchesAlerts(t *testing.T) {
	const path = k8sBase + "/prometheusrule.yaml"
	want := prometheusRuleYAML(t)
	if *update {
		if err := os.WriteFile(path, want, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s differs from what deploy/prometheus/alerts.yml generates; run go test ./deploy -run TestPrometheusRuleMatchesAlerts -update", path)
	}
	// And in content, not only text: the same groups and rules.
	var rule monitoringv1.PrometheusRule
	if err := yaml.UnmarshalStrict(got, &rule); err != nil {
		t.Fatal(err)
	}
	var rules alertRules
	readYAML(t, "prometheus/alerts.yml", &rules)
	if len(rule.Spec.Groups) != len(rules.Groups) {
		t.Fatalf("%d groups, alerts.yml has %d", len(rule.Spec.Groups), len(rules.Groups))
	}
	for i, g := range rules.Groups {
		pg := rule.Spec.Groups[i]
		if pg.Name != g.Name || len(pg.Rules) != len(g.Rules) {
			t.Fatalf("group %d: %s with %d rules, alerts.yml %s with %d", i, pg.Name, len(pg.Rules), g.Name, len(g.Rules))
		}
		for j, r := range g.Rules {
			pr := pg.Rules[j]
			if pr.Alert != r.Alert || pr.Record != r.Record || pr.Expr.String() != r.Expr ||
				fmt.Sprint(pr.Labels) != fmt.Sprint(r.Labels) || fmt.Sprint(pr.Annotations) != fmt.Sprint(r.Annotations) ||
				(pr.For == nil) != (r.For == "") || (pr.For != nil && string(*pr.For) != r.For) {
				t.Errorf("group %s rule %d (%s%s) differs from alerts.yml", g.Name, j, r.Alert, r.Record)
			}
		}
	}
}

// The overlay docs/operations.md shows (image, brokers, SASL settings)
// builds on the base and changes what it says.
func TestK8sDocumentedOverlay(t *testing.T) {
	base, err := filepath.Abs(k8sBase)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	rel, err := filepath.Rel(dir, base) // kustomize takes no absolute base
	if err != nil {
		t.Fatal(err)
	}
	kust := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: groupmatch
resources: [` + rel + `]
images:
  - {name: groupmatch, newName: registry.example.com/groupmatch, newTag: v1.2.3}
patches:
  - target: {kind: ConfigMap, name: groupmatch-config}
    patch: |
      - {op: replace, path: /data/KAFKA_BROKERS, value: "kafka-1:9093,kafka-2:9093,kafka-3:9093"}
      - {op: add, path: /data/KAFKA_SASL_MECHANISM, value: SCRAM-SHA-512}
      - {op: add, path: /data/KAFKA_SASL_USERNAME, value: groupmatch}
`
	if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(kust), 0o644); err != nil {
		t.Fatal(err)
	}
	o := buildK8s(t, dir)
	cfg := o.configMaps["groupmatch-config"]
	if cfg == nil || cfg.Namespace != "groupmatch" || cfg.Data["KAFKA_BROKERS"] != "kafka-1:9093,kafka-2:9093,kafka-3:9093" ||
		cfg.Data["KAFKA_SASL_MECHANISM"] != "SCRAM-SHA-512" {
		t.Errorf("ConfigMap %+v", cfg)
	}
	for name, d := range o.deployments {
		if img := d.Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/groupmatch:v1.2.3" {
			t.Errorf("%s: image %s", name, img)
		}
	}
	if img := o.jobs["groupmatch-migrate"].Spec.Template.Spec.Containers[0].Image; img != "registry.example.com/groupmatch:v1.2.3" {
		t.Errorf("migrate: image %s", img)
	}
}
