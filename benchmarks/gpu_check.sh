#!/bin/sh
# The GPU checks of gradhealth in one command, for a short loan of a GPU machine that has
# python3 with a CUDA build of torch, pytest, numpy, rich and matplotlib (nothing is
# installed): the CUDA tests (no host sync on any watched step, guard on CUDA, probe on
# CUDA in fp32/bf16), every site that still synchronises, then issue 3's acceptance
# benchmark (GPT-2 small in bf16), a per-step profile of it with a profile of one sampled
# step, and the small MLP's ratios.
# Logs go to $OUT when set (the device tool's output folder), else ./gpu-check.
#
# Run from the repository root: sh benchmarks/gpu_check.sh [ROUNDS]   (default 6; ~4 min)
set -u
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >"$out/gpu.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
    >>"$out/gpu.txt" 2>&1
cat "$out/gpu.txt"
# the device's torch may deprecate other things than the pinned CPU build: report, not fail
python3 -m pytest -q -p no:cacheprovider -W default::DeprecationWarning \
    -W default::FutureWarning tests/test_cuda.py "tests/test_probe.py::test_cuda" \
    2>&1 | tee "$out/cuda_tests.txt"
python3 benchmarks/sync_sites.py 2>&1 | tee "$out/sync_sites.txt"
python3 benchmarks/overhead.py --device cuda --dtype bf16 --gpt-config gpt2 --models gpt \
    --rounds "${1:-6}" 2>&1 | tee "$out/overhead_gpt2.txt"
python3 benchmarks/step_profile.py --device cuda --dtype bf16 --gpt-config gpt2 \
    --steps 100 --why 2>&1 | grep -v '^USDT' | tee "$out/step_profile.txt"
python3 benchmarks/overhead.py --device cuda --dtype bf16 --models mlp --rounds 6 \
    --mlp-width 4096 --mlp-batch 1024 2>&1 | tee "$out/overhead_mlp.txt"
