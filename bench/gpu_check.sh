#!/usr/bin/env bash
# One prepared script for a lent H100/H200 (about 5-8 minutes): bf16 MFU of the 1b config's training
# step (or the largest slice that fits), flash-SDPA use, and the real pretrain path with DeepSpeed ZeRO-2
# and ZeRO-3 on CUDA. Usage: bash bench/gpu_check.sh   (PY=python3 by default; the project installed)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
export WANDB_MODE=offline PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || exit 1
"$PY" -c "import torch, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__)"
echo "== bf16 MFU, configs/model/1b.yaml"
timeout 240 "$PY" bench/gpu_check.py mfu --config configs/model/1b.yaml
for stage in 2 3; do
  echo "== DeepSpeed ZeRO-$stage, bf16-mixed, configs/model/small.yaml"
  timeout 150 "$PY" bench/gpu_check.py zero --stage "$stage"
done
