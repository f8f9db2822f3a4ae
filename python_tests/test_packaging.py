"""How the library is built and installed: the run-time choice of the CPU kernels' instruction set
(csrc/cpu/isa.h), a portable binary, and the error a CUDA tensor gets from a build without CUDA
kernels. The wheel itself is tested by .ci/wheel_check.sh (python_tests/wheel_smoke.py)."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import itr_kernels as ik
from itr_kernels import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = ik.build_info()
PORTABLE = len(INFO["cpu_isa_compiled"]) > 1  # built with the instruction-set copies (setup.py)
OPS = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("itr_kernels::"))


# ---- a CUDA tensor and a build without CUDA kernels ----

needs_cpu_only_build = pytest.mark.skipif(INFO["cuda"], reason="this build has CUDA kernels")


@needs_cpu_only_build
def test_build_info_names_only_the_cpu_backend():
    assert INFO["backends"] == ["CPU"]


@needs_cpu_only_build
@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_cuda_kernel_that_explains(op):
    """Each op's CUDA-key kernel, called through the dispatcher (redispatch to the CUDA key)."""
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"itr_kernels::{op}", "CUDA")
    overload = getattr(torch.ops.itr_kernels, op).default
    args = [torch.zeros(2, 2) if a.type.kind() in ("TensorType", "OptionalType") else 0
            for a in overload._schema.arguments]
    with pytest.raises(NotImplementedError) as e:
        overload.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA), *args)
    assert f"itr_kernels::{op} got a CUDA tensor, but this build of itr_kernels has no CUDA kernels" in str(e.value)


@needs_cpu_only_build
@pytest.mark.parametrize("call", [
    lambda s, r: ik.smooth_ndcg_loss(s, r).backward(),
    lambda s, r: ik.kendall_loss(s, r, gap=0.1).backward(),
    lambda s, r: ik.infonce_loss(s).backward(),
], ids=["smooth_ndcg_loss", "kendall_loss", "infonce_loss"])
def test_public_api_on_a_cuda_tensor_says_how_to_rebuild(call):
    """The user's path: the public API, autograd and the dispatcher, with the CUDA key in the
    tensors' key set (a CPU-only torch has no CUDA tensors: the key is added for the call)."""
    s = torch.randn(4, 4, requires_grad=True)
    r = torch.rand(4, 4)
    with torch._C._IncludeDispatchKeyGuard(torch._C.DispatchKey.CUDA), pytest.raises(NotImplementedError) as e:
        call(s, r)
    msg = str(e.value)
    assert "no CUDA kernels" in msg and "ITR_KERNELS_BUILD=cuda" in msg and "nvcc" in msg
    shown = json.loads(re.search(r"build_info\(\): (\{.*?\})\);", msg).group(1))
    assert shown["cuda"] is False and shown["backends"] == ["CPU"] and shown["cxx_flags"] == INFO["cxx_flags"]


# ---- the CPU kernels' instruction-set copies ----

def _levels_supported():
    return INFO["cpu_isa_supported"]


def test_build_info_names_the_level_that_runs():
    compiled, supported = INFO["cpu_isa_compiled"], INFO["cpu_isa_supported"]
    best = [lvl for lvl in compiled if lvl in supported][-1]
    assert INFO["cpu_isa"] == best


# Run in a subprocess per level: the level is chosen once, at import. Float64 truth: the plain
# PyTorch reference, in float64, of every kernel's forward and backward, against each level's
# float32 and float64 kernels.
_LEVEL_SCRIPT = r"""
import json, sys, torch
import itr_kernels as ik
from itr_kernels import reference as ref
g = torch.Generator().manual_seed(0)
b = 67  # not a multiple of any vector width: the loops' tails too
s64 = torch.randn(b, b, generator=g, dtype=torch.float64) * 0.3
r64 = torch.rand(b, b, generator=g, dtype=torch.float64)
cases = {
    "smooth_rank": lambda m, s, r: m.smooth_rank(s, tau=0.05).pow(2).mean(),
    "smooth_ndcg": lambda m, s, r: m.smooth_ndcg_loss(s, r, tau=0.05),
    "kendall": lambda m, s, r: m.kendall_loss(s, r, gap=0.1, phi="logistic", temperature=0.1),
    "triplet_sn": lambda m, s, r: m.triplet_sn_loss(s, r, temperature=0.1),
    "infonce": lambda m, s, r: m.infonce_loss(s, temperature=0.1),
    "triplet": lambda m, s, r: m.triplet_loss(s, max_violation=False),
}
worst = {}
for name, fn in cases.items():
    s = s64.clone().requires_grad_(); fn(ref, s, r64).backward(); truth, gtruth = fn(ref, s64, r64), s.grad
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        s = s64.to(dtype).clone().requires_grad_(); v = fn(ik, s, r64.to(dtype)); v.backward()
        err = max(abs(v.double().item() - truth.item()) / max(abs(truth.item()), 1e-3),
                  ((s.grad.double() - gtruth).abs().max() / gtruth.abs().max().clamp(min=1e-12)).item())
        worst[f"{name} {dtype}"] = (err, tol)
print(json.dumps({"isa": ik.build_info()["cpu_isa"], "worst": worst}))
"""


def _run_level(level):
    env = dict(os.environ, ITR_KERNELS_CPU_ISA=level)
    return subprocess.run([sys.executable, "-c", _LEVEL_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("level", ["baseline", "x86-64-v3", "x86-64-v4"])
def test_each_level_runs_and_matches_the_float64_truth(level):
    if level not in INFO["cpu_isa_compiled"] or level not in INFO["cpu_isa_supported"]:
        pytest.skip(f"{level} is not compiled in this build or not supported by this CPU")
    r = _run_level(level)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["isa"] == level
    bad = {k: v for k, v in out["worst"].items() if not v[0] <= v[1]}
    assert not bad, f"{level}: relative errors above tolerance: {bad}"


def test_an_unknown_level_is_refused_at_import():
    r = _run_level("avx9000")
    assert r.returncode != 0
    assert "ITR_KERNELS_CPU_ISA must be baseline, x86-64-v3 or x86-64-v4, got avx9000" in r.stderr


@pytest.mark.skipif(not PORTABLE, reason="built for one machine (ITR_KERNELS_CPU_ARCH set): no copies")
@pytest.mark.skipif(shutil.which("objdump") is None, reason="needs objdump (binutils)")
def test_only_the_wide_copies_use_avx():
    """The portability of the binary: no function outside the x86-64-v3/v4 copies' namespaces (the
    baseline kernels, the registry, and every library inline function the linker kept) contains an
    AVX instruction, so a CPU without AVX never meets one; and the copies do use them."""
    dis = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", _C.__file__], capture_output=True, text=True,
                         check=True).stdout
    avx = re.compile(r"^\s*[0-9a-f]+:\s+v[a-z0-9]+\s", re.M)
    outside, inside = [], {"itr_x86_64_v3": 0, "itr_x86_64_v4": 0}
    for block in re.split(r"\n(?=[0-9a-f]+ <)", dis):
        m = re.match(r"[0-9a-f]+ <(.*)>:", block)
        if not m:
            continue
        n = len(avx.findall(block))
        marker = next((k for k in inside if k in m.group(1)), None)
        if marker:
            inside[marker] += n
        elif n:
            outside.append(m.group(1))
    assert not outside, f"AVX instructions outside the wide copies: {outside[:10]}"
    assert all(inside.values()), inside
