#!/usr/bin/env bash
# The wheel as a user gets it: builds it (pip wheel, against the installed torch), installs it into a
# fresh venv holding only torch and numpy, and runs python_tests/wheel_smoke.py there from outside
# the source tree; then adds pyyaml and checks that the entry points find the packaged configs.
# `make wheel-check`; .ci/run runs it after `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/itr_wheel_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS
# the torch release the wheel is built against and pins (setup.py install_requires)
TORCH=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")

"$PY" -m pip wheel . --no-build-isolation --no-deps -q -w "$WORK/dist"
WHEEL=$(ls "$WORK"/dist/itr_kernels-*.whl)
echo "wheel: $(basename "$WHEEL") ($((SECONDS - start)) s)"

"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin/python"
# torch pinned in the same command: unpinned, pip would pull a CUDA build (several GB)
"$V" -m pip install -q "torch==$TORCH" numpy
"$V" -m pip install -q "$WHEEL"
echo "venv: torch, numpy and the wheel installed ($((SECONDS - start)) s)"

cp python_tests/wheel_smoke.py "$WORK/"
cd "$WORK"
env -u PYTHONPATH "$V" wheel_smoke.py
"$V" -m pip install -q pyyaml
env -u PYTHONPATH "$V" wheel_smoke.py --with-yaml
echo "wheel check passed in $((SECONDS - start)) s"
