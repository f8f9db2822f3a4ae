#!/usr/bin/env bash
# Compiles every CUDA kernel file with nvcc alone (no torch) for sm_90 and fails on compile errors,
# register spills or local memory (stack frames), reading ptxas's resource report.
set -euo pipefail
cd "$(dirname "$0")/../.."
ARCH=${ITR_CHECK_ARCH:-sm_90}
status=0
for f in csrc/cuda/*.cu; do
  report=$(nvcc -std=c++17 -arch="$ARCH" -O3 -Icsrc -Icsrc/include -Xptxas -v -c "$f" -o /dev/null 2>&1) || {
    echo "$report"; echo "cuda-check: $f does not compile"; exit 1; }
  kernels=$(grep -c "bytes stack frame" <<<"$report" || true)
  bad=$(grep -E "bytes stack frame" <<<"$report" | grep -vE "^\s*0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" || true)
  if [ -n "$bad" ]; then
    echo "$report"; echo "cuda-check: $f spills or uses local memory:"; echo "$bad"; status=1
  else
    echo "cuda-check: $f ok ($kernels kernels for $ARCH, no spills, no local memory)"
  fi
done
exit $status
