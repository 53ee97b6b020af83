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
	$(PIP) install -q -e '.[test]'
	touch $@

env: $(VENV)/.installed

test: env
	$(PY) -m pytest -q

# Until the KFP pipeline exists: a curation run on generated sample videos, then a tiny generation.
demo: env
	rm -rf demo-out
	$(VENV)/bin/soraflow sample-data --out-dir demo-out/raw
	$(VENV)/bin/soraflow ingest demo-out/raw/manifest.csv --out-dir demo-out/ingested --no-progress
	$(VENV)/bin/soraflow filter --table demo-out/ingested/clips.parquet --out-dir demo-out/curated --no-progress
	$(VENV)/bin/soraflow generate --config tiny --random-init --prompt "a red kite over a beach" \
		--num-frames 9 --height 64 --width 64 --steps 4 --out demo-out/tiny.mp4
	@echo "curated dataset: demo-out/curated   video: demo-out/tiny.mp4"

clean:
	rm -rf $(VENV) demo-out .pytest_cache
