#!/usr/bin/env bash
# One-GPU check of the real-model path (see bench/gpu_check.py): a Qwen3-0.6B-shaped random model, SDPG
# steps at response lengths 1k and 4k, tokens/s per phase, peak memory, update MFU, fused vs
# materialised-logits KL, and a weight-sync check. No downloads; <= 8 minutes on one H100 (a hard limit
# cuts it there, and the results written so far stay in runs/gpu_check/results.jsonl).
#   bash bench/gpu_check.sh                 # on the GPU machine (torch with CUDA, ideally vllm: requirements-gpu.txt)
#   bash bench/gpu_check.sh --dry-run       # tiny model on the CPU, seconds
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
export VLLM_ENABLE_V1_MULTIPROCESSING=0 TOKENIZERS_PARALLELISM=false
if [[ " $* " != *" --dry-run "* ]] && command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
"$python" -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, file=sys.stderr)"
exec timeout --kill-after=20 480 "$python" bench/gpu_check.py "$@"
