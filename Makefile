# soraflow: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# A CPU build of torch lies on local disk; pinning it keeps pip from fetching a multi-GB CUDA build.
TORCH  ?= torch==2.13.0

.PHONY: env test demo clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e '.[test,fp8]'
	touch $@

env: $(VENV)/.installed

test: env
	$(PY) -m pytest -q

# The whole DAG on this machine through the KFP local runner: generated sample videos -> ingest -> filter ->
# vae_train -> DiT stages 1-3 -> distill -> eval, with the tiny CPU recipes (about a minute on 2 cores).
demo: env
	rm -rf demo-out
	$(VENV)/bin/soraflow run --out-dir demo-out
	@echo "report: demo-out/report.html (and report.md); every step's artifacts: demo-out/pipeline-root/"

clean:
	rm -rf $(VENV) demo-out .pytest_cache

# Local Prometheus (:9090, project rules) and Pushgateway (:9091) on loopback, scraping a trainer on :9464
# (train with --override metrics_port=9464). Needs Debian's prometheus and prometheus-pushgateway. Ctrl-C stops.
.PHONY: monitor
monitor: env
	$(VENV)/bin/soraflow monitor
