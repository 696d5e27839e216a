# Two commands on a fresh machine: `make quickstart` and `make test`. Both create the virtual
# environment and install what they need; `make tools` adds the system tools some tests drive
# (helm, prometheus, pushgateway, promtool, chromium): CI runs it, and with CI=true a missing
# tool fails its tests instead of skipping them.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sftrl-installed
# CPU torch (a CUDA build is several GB); GPU images pin their own (images/versions.env).
TORCH ?= torch==2.13.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: quickstart test venv tools lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[train,s3,metrics,kubernetes,report,dev]"
	$(PY) -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(PY) -m pip install -q --no-build-isolation "deepspeed==0.19.8"
	touch $(STAMP)

venv: $(STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/sftrl run examples/quickstart.yaml

tools: $(STAMP)
	bash scripts/install-tools.sh $(VENV)

lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest --doctest-modules controller job_runtime tests $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/quickstart_time.py
	$(PY) bench/score_throughput.py
	$(PY) bench/score_agreement.py
	$(PY) bench/k8s_scale.py

clean:
	rm -rf runs .pytest_cache
