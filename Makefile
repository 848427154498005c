# The two commands of the README: `make demo` and `make test`. Both build .venv when it is
# missing or when pyproject.toml changed, so a fresh clone needs nothing done by hand.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TMPDIR := $(CURDIR)/.tmp
export RAY_AUTH_MODE := disabled
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PYTHONUNBUFFERED := 1

.PHONY: venv test demo lint clean bench postgres

$(STAMP): pyproject.toml
	@mkdir -p $(TMPDIR)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	# torch first and exactly pinned: this takes the CPU wheel; any looser spec pulls CUDA.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip check
	@! $(PY) -m pip show -q torchvision 2>/dev/null || { echo "torchvision must not be installed (no CPU build)"; exit 1; }
	touch $(STAMP)

venv: $(STAMP)

# checkov (manifest policy scan) lives in its own venv: its pins (packaging, boto3, ...) clash
# with kfp's. tests/test_manifests.py uses it (and creates it the same way when missing).
CHECKOV := .tmp/tools/checkov/bin/checkov
$(CHECKOV):
	@mkdir -p .tmp/tools
	$(PYTHON) -m venv .tmp/tools/checkov
	.tmp/tools/checkov/bin/pip install -q checkov==3.3.30

# PostgreSQL for tests/test_mlflow_stack.py (the MLflow manifest's command against a real
# database): Debian's package, installed once when the machine has none.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } || \
	  echo "PostgreSQL could not be installed: tests/test_mlflow_stack.py will say so"

test: $(STAMP) $(CHECKOV) postgres
	@mkdir -p $(TMPDIR)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	@mkdir -p $(TMPDIR)
	$(VENV)/bin/longrl pipeline run-local --out demo-out

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .tmp demo-out
