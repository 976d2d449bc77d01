#!/usr/bin/env bash
# make gpu-check: the GPU-only checks, for a machine with one NVIDIA GPU that has torch and
# triton but no vLLM and nothing to install (the lent H100/H200). At most 8 minutes:
#   1. the op tests natively on the GPU (tests/test_ops.py, tests/test_sled_ops.py: Triton
#      against the reference and the float64 oracle) and tests/test_gpu.py (whole ops on CUDA,
#      a processor step captured in a CUDA graph);
#   2. the op table on the GPU (benchmarks/bench_ops.py: ours against the reference and the
#      memory floor measured by a device copy; vLLM's own paths only where vLLM imports).
# Output goes to $OUT (the device tool's folder) or benchmarks/results/gpu_check/.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-benchmarks/results/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi -L || { echo "make gpu-check needs an NVIDIA GPU (nvidia-smi finds none)"; exit 2; }
py=${PYTHON:-python3}
# No install there: setup.py maps kernels/ to real_vllm.kernels, so a link does the same.
$py -c "import real_vllm.kernels" 2>/dev/null || ln -sfn ../kernels real_vllm/kernels
$py -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$out/env.txt"
status=0
timeout 300 $py -m pytest -q -p no:cacheprovider -o addopts="" tests/test_ops.py tests/test_sled_ops.py tests/test_gpu.py \
  2>&1 | tee "$out/tests.txt" || status=1
timeout 150 $py -m benchmarks.bench_ops --out "$out/ops_gpu.csv" 2>&1 | tail -80 | tee "$out/ops.txt" || status=1
exit $status
