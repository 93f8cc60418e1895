# groupmatch — see README.md.
GO        ?= go
BIN       ?= bin/groupmatch
FUZZTIME  ?= 5m
PKGS      := ./...

# What `groupmatch version` and groupmatch_build_info report for make build
# (go build's own VCS stamp is off where GOFLAGS has -buildvcs=false).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)

.PHONY: run build test test-cluster lint deps check-deploy fuzz fuzz-short clean bench bench-small kafka

## run: everything on this machine (in-process Kafka, PostgreSQL, all stages) with a demo tenant.
## It first makes sure of PostgreSQL as make test does (installs and starts Debian's, as root); where
## that cannot be done (not root), dev starts a private cluster from the installed server binaries.
run:
	-@bash .ci/ensure-postgres.sh
	$(GO) run ./cmd/groupmatch dev --demo

## build: the groupmatch binary in bin/
build:
	$(GO) build -ldflags "-X main.version=$(VERSION) -X main.revision=$(REVISION)" -o $(BIN) ./cmd/groupmatch

## deps: Go modules and the services and tools the tests need (PostgreSQL, Apache Kafka's jars
## from Maven Central with Maven and a Java runtime, prometheus/promtool, docker-compose, kcat)
deps:
	$(GO) mod download
	bash .ci/ensure-postgres.sh
	bash .ci/ensure-kafka.sh
	bash .ci/ensure-tools.sh

## kafka: Apache Kafka (the version the tests and docker-compose.yml run) in the foreground on
## 127.0.0.1:$(KAFKA_PORT), its log in KAFKA_DATA (default: a temporary folder); Ctrl-C stops it
KAFKA_PORT ?= 9092
KAFKA_DATA ?=
kafka: build
	bash .ci/ensure-kafka.sh
	$(BIN) kafka --addr 127.0.0.1:$(KAFKA_PORT) $(if $(KAFKA_DATA),--data $(KAFKA_DATA))

## bench: groupmatch bench at its defaults (1,000,000 customers, 2,000,000 records) with the
## plain-PostgreSQL baseline; report in bin/bench.json. Not part of make test (about 5 minutes on 2 cores).
## BENCH_FLAGS adds flags, e.g. BENCH_FLAGS='--single' or '--rate 7000'.
BENCH_FLAGS ?=
bench: build
	$(BIN) bench --baseline --json bin/bench.json $(BENCH_FLAGS)

## bench-small: the same at 200,000 customers and records (about a minute)
bench-small: build
	$(BIN) bench --customers 200000 --records 200000 --baseline --json bin/bench-small.json $(BENCH_FLAGS)

## test: every test, and a short run of each fuzz target on its seed corpus (< 10 min)
test: deps lint check-deploy
	$(GO) test -count=1 -timeout 9m $(PKGS)
	$(MAKE) --no-print-directory fuzz-short

## test-cluster: the three-broker tests, opted in by GROUPMATCH_CLUSTER_TESTS=1 (make test skips
## them): devenv's cluster helper, then TestClusterLeaderKill (partition leaders SIGKILLed while
## batches flow; nothing lost or doubled). About 2½ minutes on 2 cores; CI runs it after make test.
CLUSTER_TESTS := ^(TestStartKafkaCluster|TestClusterLeaderKill)$$
test-cluster: deps
	GROUPMATCH_CLUSTER_TESTS=1 $(GO) test -count=1 -p 1 -v -timeout 15m -run '$(CLUSTER_TESTS)' ./devenv ./cmd/groupmatch

## check-deploy: promtool checks the Prometheus configuration and rules, and runs the rules' unit tests
check-deploy:
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/alerts.yml
	promtool test rules deploy/prometheus/alerts_test.yml

## lint: formatting and go vet
lint:
	@fmt=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$fmt" ]; then echo "gofmt would change: $$fmt"; exit 1; fi
	$(GO) vet $(PKGS)

# Fuzz targets as package:Target:executions. fuzz-short runs each target for
# its number of executions (a few seconds each on an idle machine), not for a
# duration: with a duration, Go 1.26's fuzz coordinator can fail a target
# with a bare "context deadline exceeded" when the deadline passes while a
# starved worker is mid-input (go.dev/issue/75804, fixed in Go 1.27), which a
# loaded CI machine hits. A count has no deadline to race. FuzzPipeline runs
# on PostgreSQL, about 10 ms an input.
FUZZ_TARGETS := ./ingest:FuzzDecodeRequest:100000x ./identity:FuzzNormalizePhone:200000x \
	./pipeline:FuzzDecodeRecord:100000x ./pipeline:FuzzDecodeResolved:100000x \
	./directory:FuzzDecodeLine:50000x ./matcher:FuzzPipeline:300x \
	./internal/jsonscan:FuzzScan:100000x

## fuzz-short: each fuzz target for its FUZZ_TARGETS count of executions (part of make test)
fuzz-short:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; count=$${rest#*:}; \
		$(GO) test -count=1 -run '^$$' -fuzz "^$$name$$" -fuzztime $$count $$pkg || exit 1; done

## fuzz: long fuzz runs (FUZZTIME each, default 5m)
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; rest=$${t#*:}; name=$${rest%%:*}; \
		$(GO) test -count=1 -run '^$$' -fuzz "^$$name$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; done

clean:
	rm -rf bin
