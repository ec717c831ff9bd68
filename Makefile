# One command per task. Each target runs the script or tool that does the work, so that CI (.ci/run: scripts/setup,
# then scripts/test), the README and a contributor all run the same thing. `make help` lists them.
.DEFAULT_GOAL := help
.PHONY: help setup test unit lint format generate verify bench bench-events bench-scale demo cluster-up cluster-down release

VENV := .venv/bin
TOOLS := .tools/bin

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 16

setup: ## tools, Python venv and Debian packages (scripts/setup; once per machine)
	scripts/setup

test: ## the whole suite on the offline kind cluster, as CI runs it (scripts/test)
	scripts/test

unit: ## render, schema, lint, docs and agent tests; no cluster (scripts/test --unit)
	scripts/test --unit

# (not the agent's Go test runs in test_agent.py, with -race and for arm64 under qemu: tests, which make unit runs)
lint: ## the linters alone: ruff, mypy, gofmt, go vet, staticcheck, shellcheck, yamllint, helm lint, ct lint, kube schemas
	$(VENV)/pytest tests/unit/test_lint.py tests/unit/test_agent.py tests/unit/test_scripts.py -k "not go_tests"

format: ## rewrite what the formatters own: ruff format and ruff check --fix (Python), gofmt (the agent)
	$(VENV)/ruff format tests bench
	$(VENV)/ruff check --fix tests bench
	cd agent && gofmt -w .

generate: ## regenerate README.md and chart/README.md (helm-docs) and the render snapshots
	cd chart && ../$(TOOLS)/helm-docs --chart-search-root . --template-files README.md.gotmpl --output-file README.md
	cd chart && ../$(TOOLS)/helm-docs --chart-search-root . --template-files ../README.md.gotmpl --output-file ../README.md
	UPDATE_SNAPSHOTS=1 scripts/test --unit -k snapshot

verify: ## what generate writes is committed (the docs and snapshot tests)
	$(VENV)/pytest tests/unit/test_docs.py tests/unit/test_package.py tests/unit/test_snapshots.py

bench: ## the path benchmark: bench/results.json and bench/rtt.png (scripts/bench, ~19 min)
	scripts/bench

bench-events: ## what the LAN sees through cluster events: bench/events.json and bench/events.png (~20 min)
	scripts/bench --events

bench-scale: ## the relay's cost against tailnet size and relayed sessions: bench/scale.json and bench/scale.png
	scripts/bench --scale

demo: ## the write-up's setup installed on the kind cluster, DERP then peer-relay (scripts/demo)
	scripts/demo

cluster-up: ## bring up (or reuse) the offline kind cluster and the tailnet in a box
	scripts/cluster up

cluster-down: ## delete the kind cluster and the tailnet in a box
	scripts/cluster down

release: ## package and sign the chart into dist/ (scripts/release; options: make release ARGS="--oci ...")
	scripts/release $(ARGS)
