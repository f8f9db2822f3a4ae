#!/usr/bin/env bash
# Compiles every CUDA kernel file with nvcc alone (no torch) for sm_90 and fails on compile errors,
# register spills, local memory (stack frames), or static shared memory over the 48 KiB a block
# may have without opting in, reading ptxas's resource report (the CPU emulation of CUDA cannot
# measure shared memory per kernel, so this is where that launch limit is checked).
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH=${ITR_CHECK_ARCH:-sm_90}
SMEM_LIMIT=49152
status=0
for f in csrc/cuda/*.cu; do
  report=$(nvcc -std=c++17 -arch="$ARCH" -O3 -Icsrc -Icsrc/include -Xptxas -v -c "$f" -o /dev/null 2>&1) || {
    echo "$report"; echo "cuda-check: $f does not compile"; exit 1; }
  kernels=$(grep -c "bytes stack frame" <<<"$report" || true)
  bad=$(grep -E "bytes stack frame" <<<"$report" | grep -vE "^\s*0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" || true)
  smem=$(grep -oE "[0-9]+ bytes smem" <<<"$report" | awk '{print $1}' | sort -n | tail -1)
  smem=${smem:-0}
  if [ -n "$bad" ]; then
    echo "$report"; echo "cuda-check: $f spills or uses local memory:"; echo "$bad"; status=1
  elif [ "$smem" -gt "$SMEM_LIMIT" ]; then
    echo "$report"; echo "cuda-check: $f: a kernel uses $smem bytes of static shared memory (limit $SMEM_LIMIT)"; status=1
  else
    echo "cuda-check: $f ok ($kernels kernels for $ARCH, no spills, no local memory, at most $smem bytes of shared memory)"
  fi
done
exit $status
