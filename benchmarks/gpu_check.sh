#!/usr/bin/env bash
# The checks that need a CUDA GPU, as one script: the CUDA tests, then the engine and precision benchmarks on
# the GPU. Run from the repository root on a machine with a GPU and ../shared/data beside the checkout:
#   bash benchmarks/gpu_check.sh [OUTDIR]
# Each step's output goes to OUTDIR (default: gpu-check/) and to the terminal.
set -uo pipefail
out="${1:-gpu-check}"
mkdir -p "$out"
py="${PYTHON:-python3}"
if [ -x .venv/bin/python ]; then py=.venv/bin/python; fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')" | tee "$out/env.txt"
"$py" -m pytest tests/test_cuda.py -q -p no:cacheprovider 2>&1 | tee "$out/test_cuda.txt"
"$py" benchmarks/bench_engine.py --device cuda --jobs sr_ca,dncnn96,dncnn256 2>&1 | tee "$out/bench_engine_cuda.txt"
"$py" benchmarks/bench_precision.py --device cuda --size 96 2>&1 | tee "$out/bench_precision_cuda.txt"
