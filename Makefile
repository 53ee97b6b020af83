# soraflow: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU build of torch lies on local disk; pinning it keeps pip from fetching a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: env test test-deps demo clean

# constraints.txt pins every package's version (for Python 3.11), so every machine curates the same bytes.
# One resolver pass with the venv's own pip (constraints pin every version, so a newer pip installs the same
# set), and no byte-compiling of the ~19,500 installed modules at install time (about 35 s of CPU): Python
# compiles the few thousand that are imported, once, on first import (benchmarks/demo-wall-breakdown_*.json).
$(VENV)/.installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --no-compile -c constraints.txt $(TORCH) -e '.[test,fp8]'
	touch $@

env: $(VENV)/.installed

# System tools a few tests use (Prometheus, Chromium, checkov): installed when run as root with apt-get;
# otherwise those tests are skipped and the summary (-rs) lists them with this target's name.
test-deps:
	@bash scripts/test-deps.sh

test: env test-deps
	$(PY) -m pytest -q -rs

# The whole DAG on this machine through the KFP local runner: generated sample videos -> ingest -> filter ->
# vae_train -> DiT stages 1-3 -> distill -> eval, with the tiny CPU recipes. From a fresh clone, environment
# included: 9 min of CPU (29.5 min wall on 2 cores shared at load 15; about 9 min on 2 free cores), README.
# The curated set is then versioned as data/ (data.dvc is committed: the same inputs give the same md5 on any
# machine, so git stays clean) and pushed to the default DVC remote, where `soraflow data pull` finds it.
demo: env
	rm -rf demo-out
	$(VENV)/bin/soraflow run --out-dir demo-out
	$(VENV)/bin/soraflow data version --from demo-out/curated
	$(VENV)/bin/soraflow data push
	$(VENV)/bin/soraflow data status
	@echo "report: demo-out/report.html (and report.md); every step's artifacts: demo-out/pipeline-root/"

clean:
	rm -rf $(VENV) .venv-checkov demo-out .pytest_cache

# Local Prometheus (:9090, project rules) and Pushgateway (:9091) on loopback, scraping a trainer on :9464
# (train with --override metrics_port=9464). Needs Debian's prometheus and prometheus-pushgateway. Ctrl-C stops.
.PHONY: monitor
monitor: env
	$(VENV)/bin/soraflow monitor
