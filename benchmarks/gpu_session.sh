#!/usr/bin/env bash
# Everything this package checks on a lent GPU, in one call (the workplace lends one GPU for
# ~15 minutes per session, sometimes). Writes logs and JSON to $OUT (default ./gpu_out).
#
#   bash benchmarks/gpu_session.sh            # on a CUDA machine with torch + transformers
#
# 1. the GPU tests (`pytest -m gpu`: bf16 and 4-bit loading and batched generation of the tiny
#    hub-class models, steering/representations in 4-bit);
# 2. benchmarks/collect_throughput.py at LLaVA-1.5-7b shape, bf16 and NF4 4-bit, one query at a
#    time against the collector at batch 32/64/128, and 13b in 4-bit;
# 3. benchmarks/represent_steer_gpu.py: 7B 4-bit representation extraction and steered
#    generation, with peak memory (the 24 GB question).
# Wheels missing on the machine (bitsandbytes, pydantic) may be carried in .whl/.
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
python3 -c "import torch, transformers, bitsandbytes, peft; print('torch', torch.__version__, \
'transformers', transformers.__version__, 'bitsandbytes', bitsandbytes.__version__, 'peft', \
peft.__version__)" | tee -a "$OUT/device.txt"

step() { echo "== $1 ($(date +%T))"; }
step "gpu tests"
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_models.py tests/test_collect.py 2>&1 | tail -25 | tee "$OUT/gpu_tests.log"
step "steering checks, tiny models"
timeout 50 python3 benchmarks/steer_gpu_check.py 2>&1 | grep -v Warning | tail -60 > "$OUT/steer_check.log"
step "throughput 7b"
timeout 240 python3 benchmarks/collect_throughput.py --device cuda --sizes 7b --precisions 4bit,bf16 \
  --batch-sizes 32,64,128 --json "$OUT/throughput_7b.json" 2>&1 | grep -v Warning | tee "$OUT/throughput_7b.log"
step "throughput 13b"
timeout 100 python3 benchmarks/collect_throughput.py --device cuda --sizes 13b --precisions 4bit \
  --batch-sizes 64 --n-single 1 --json "$OUT/throughput_13b.json" 2>&1 | grep -v Warning | tee "$OUT/throughput_13b.log"
if [ -f benchmarks/represent_steer_gpu.py ]; then
  step "represent + steer 7b 4bit"
  timeout 100 python3 benchmarks/represent_steer_gpu.py --json "$OUT/represent_steer.json" 2>&1 \
    | grep -v Warning | tee "$OUT/represent_steer.log"
fi
step "done"
