#!/usr/bin/env bash
# Everything this package checks on a lent GPU, in one call (the workplace lends one GPU for
# ~15 minutes per session, sometimes). Writes logs and JSON to $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh            # on a CUDA machine with torch + transformers
#
# 1. the GPU tests (`pytest -m gpu`: bf16 and 4-bit loading and batched generation of the tiny
#    hub-class models, steering/representations in 4-bit);
# 2. tests/test_train.py on CUDA (the engine picks the GPU): QLoRA through bitsandbytes' CUDA
#    kernels, fp32 master weights under bf16 autocast, stage-1 model freed before stage 2;
#    (FULL=1 also: collect_throughput.py one-at-a-time vs batch 64/128 at 7b, measured before);
# 3. collect_throughput.py --speedups: prefix sharing, static cache + compiled decoding, both,
#    against the plain collector, at 7b (bf16; NF4 too when bitsandbytes is there) and 13b
#    (bf16), batch 16 (fits 24 GB at 7b bf16) and 128 (80 GB+);
# 4. (FULL=1) benchmarks/represent_steer_gpu.py: 7B 4-bit representation extraction and steered
#    generation, with peak memory (the 24 GB question).
# Budget: under 10 minutes (one device call) of GPU time in all; every step runs under its own `timeout`, and the
# speedup rows are printed as they finish, so a step cut short still leaves its figures.
# Wheels missing on the machine (bitsandbytes, pydantic) may be carried in .whl/; without
# bitsandbytes the NF4 steps are skipped (said in the log).
set -o pipefail
OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch, transformers, accelerate; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'accelerate', accelerate.__version__)" | tee -a "$OUT/device.txt"
if python3 -c "import bitsandbytes" 2>/dev/null; then PRECISIONS=bf16,4bit; else
  PRECISIONS=bf16; echo "no bitsandbytes: NF4 steps skipped" | tee -a "$OUT/device.txt"; fi

step() { echo "== $1 ($(date +%T))"; }
step "gpu tests"
timeout 55 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_models.py tests/test_collect.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
step "training engine on CUDA (QLoRA with bitsandbytes' CUDA kernels, fp32 master weights, memory released between stages)"
timeout 130 python3 -m pytest -q -x -p no:cacheprovider tests/test_train.py 2>&1 | tail -15 | tee "$OUT/train_tests.log"
step "steering checks, tiny models"
timeout 40 python3 benchmarks/steer_gpu_check.py 2>&1 | grep -v Warning | tail -60 > "$OUT/steer_check.log"
if [ -n "$FULL" ]; then  # measured on 2026-11-26 (benchmarks/results/h100-2026-11-26); FULL=1 redoes them
  step "throughput 7b"
  timeout 90 python3 benchmarks/collect_throughput.py --device cuda --sizes 7b --precisions $PRECISIONS \
    --batch-sizes 64,128 --json "$OUT/throughput_7b.json" 2>&1 | grep -v Warning | tee "$OUT/throughput_7b.log"
fi
step "speedups 7b (prefix sharing, compiled decoding), bs 128 (80 GB+) and 16 (24 GB)"
timeout 190 python3 benchmarks/collect_throughput.py --speedups --device cuda --sizes 7b \
  --precisions $PRECISIONS --batch-sizes 128,16 --images 16 --langs 8 --max-new-tokens 64 \
  --modes plain,share_prefix,share_prefix+compile,compile --json "$OUT/speedups_7b.json" 2>&1 \
  | grep -v Warning | tee "$OUT/speedups_7b.log"
step "speedups 13b bf16, bs 64"
timeout 80 python3 benchmarks/collect_throughput.py --speedups --device cuda --sizes 13b \
  --precisions bf16 --batch-sizes 64 --images 8 --langs 8 --max-new-tokens 64 \
  --modes plain,share_prefix,share_prefix+compile --json "$OUT/speedups_13b.json" 2>&1 \
  | grep -v Warning | tee "$OUT/speedups_13b.log"
if [ -n "$FULL" ] && [ -f benchmarks/represent_steer_gpu.py ] && [ "$PRECISIONS" != bf16 ]; then
  step "represent + steer 7b 4bit"
  timeout 60 python3 benchmarks/represent_steer_gpu.py --json "$OUT/represent_steer.json" 2>&1 \
    | grep -v Warning | tee "$OUT/represent_steer.log"
fi
step "done"
