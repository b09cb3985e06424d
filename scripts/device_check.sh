#!/bin/bash
# The checks that need a CUDA device, as one short script for a borrowed GPU machine: the CUDA
# tests (SyncBatchNorm against norm.sync, packed steps, bf16 runs, captured steps, data on the
# device), then bench_packed with 64 seeds packed, and a setting's five modes (13 seeds each) in
# one pack against one pack per mode. Outputs go to $OUT (default ./device_out).
# The machine's own python3 must hold torch with CUDA, pandas, matplotlib and pytest; hydra-core,
# omegaconf, antlr4 and mnist1d travel as wheels in .whl/ when that machine has no registry:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       hydra-core==1.3.8 omegaconf==2.3.1 mnist1d==0.0.2.post1   (+ an antlr4 4.9.3 wheel)
# The committed results/ (65 MB) pushes the working tree over the device machine's 64 MiB: take it
# out of the index for the call (git rm -r -q --cached results; /results/ in .git/info/exclude),
# then git reset. BENCH_STEPS and BENCH_REPEATS size bench_packed (about 5 minutes at 50 and 1).
set -o pipefail
OUT=${OUT:-device_out}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} NORMLAB_KERNELS=off WANDB_MODE=offline \
  PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" \
  | tee -a "$OUT/device.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider -k "cuda or captured" \
  tests/test_distributed.py tests/test_packing.py tests/test_train.py tests/test_data.py \
  tests/test_norm.py tests/test_bench_gpu.py 2>&1 | tee "$OUT/cuda_tests.txt"
timeout 300 python3 scripts/bench_packed.py --device cuda --seeds 64 --threads 1 \
  --steps ${BENCH_STEPS:-50} --warmup 5 --repeats ${BENCH_REPEATS:-1} 2>&1 | tee "$OUT/bench_packed_cuda.txt"
timeout 240 python3 scripts/bench_packed.py --device cuda --seeds 13 --threads 1 --steps 30 \
  --warmup 5 --repeats 1 --modes batch,moving_average,renorm,online,group 2>&1 \
  | tee "$OUT/bench_modes_cuda.txt"
