#!/usr/bin/env bash
# One device-tool call on a lent GPU: build with CUDA, report registers/spills, run the tests (CUDA
# cases included), compute-sanitizer on a small run, then the GPU benchmark. Logs and the CSV land
# in $OUT (or ./gpu_out); the table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv | tee "$OUT/gpu.txt"
ITR_KERNELS_BUILD=cuda python3 -m pip install -q --no-build-isolation -e . > "$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
python3 -c "import itr_kernels; print(itr_kernels.build_info())" | tee -a "$OUT/gpu.txt"
python3 -m pip install -q pytest 2>/dev/null
timeout 900 python3 -m pytest -q -x python_tests > "$OUT/tests.log" 2>&1; echo "tests rc=$?" | tee -a "$OUT/gpu.txt"
tail -5 "$OUT/tests.log"
if command -v compute-sanitizer >/dev/null; then
  compute-sanitizer --tool memcheck python3 -c "
import torch, itr_kernels as ik
s = torch.randn(37, 300, device='cuda', requires_grad=True); r = torch.rand(37, 300, device='cuda')
v = torch.rand(37, 300, device='cuda') > 0.2
(ik.smooth_ndcg_loss(s, r, valid=v) + ik.kendall_loss(s, r, valid=v) + ik.kendall_loss(s, r, sampling='swhs')).backward()
q = torch.randn(65, 65, device='cuda', requires_grad=True); ik.BCLSLoss()(q, torch.rand(65, 65, device='cuda')).backward()
torch.cuda.synchronize(); print('sanitizer run done')" > "$OUT/sanitizer.log" 2>&1
  tail -3 "$OUT/sanitizer.log"
fi
timeout 1200 python3 bench/compare.py --device cuda --cases listwise --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench.log" | tail -60
