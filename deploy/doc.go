// Package deploy holds the container and monitoring set-up of groupmatch:
// the Dockerfile, Prometheus's scrape configuration and rules, Grafana's
// provisioning and dashboard, and the Kubernetes manifests (k8s/base). Its
// tests check them, and docker-compose.yml, structurally, since no Docker
// engine or cluster runs where the tests do; promtool checks the Prometheus
// files (make test), cmd/groupmatch's TestPrometheusQueries evaluates every
// expression against a live Prometheus, and kustomize's Go API builds the
// Kubernetes base, every object decoded strictly into its API type.
//
// It holds no Go code that runs: only this doc and tests. Nothing imports
// it, and no secret is ever written into its files.
package deploy
