"""The CPU emulation of the CUDA kernels, for the tests (csrc/cuda_emu/; README "CUDA emulation").

Builds, once and cached under build/, the test-only extension itr_kernels_emu: the real
csrc/cuda/*.cu kernels and csrc/cuda/bindings.cpp compiled by the host compiler with -DITR_CUDA_EMU
against the CUDA headers and the emulation runtime. It registers the itr_kernels ops again, in the
itr_kernels_emu namespace, for CPU tensors; `routed()` sends the public API there.

ITR_EMU_SANITIZE=1 builds it with AddressSanitizer and UBSan instead (build/cuda_emu_asan), which
needs libasan preloaded into Python: `make cuda-emu` does that.

    python3 python_tests/cuda_emu.py            # build (or check) the extension, print where it is
    python3 python_tests/cuda_emu.py --why-not  # why it cannot be built here, or nothing
"""
import contextlib
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__":  # as a script: this checkout's itr_kernels, as pytest run from ROOT imports it
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from itr_kernels import _ops  # noqa: E402

CSRC = os.path.join(ROOT, "csrc")
SANITIZE = os.environ.get("ITR_EMU_SANITIZE", "0") == "1"
HEADERS = ("cuda_runtime.h", "cuda_fp16.h", "cuda_bf16.h")
SOURCES = ["cuda_emu/runtime.cpp", "cuda_emu/module.cpp", "cuda_emu/ranking_kernels.cpp", "cuda_emu/bcls_kernels.cpp",
           "cuda_emu/contrastive_kernels.cpp", "cuda/bindings.cpp", "cuda_emu/selftest_kernels.cpp"]
# Thread orders every emulated case runs under (ITR_EMU_SEEDS="1,2,3"); their outputs must agree bit for bit.
SEEDS = tuple(int(s) for s in os.environ.get("ITR_EMU_SEEDS", "1,2,3").split(","))


def cuda_include():
    """The CUDA include directory ($CUDA_HOME, else /usr/local/cuda)."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    return os.path.join(home, "include")


def unavailable_reason():
    """Why the emulation cannot be built here (no CUDA headers), or None."""
    include = cuda_include()
    missing = [h for h in HEADERS if not os.path.isfile(os.path.join(include, h))]
    if missing:
        return (f"CUDA emulation skipped: no CUDA headers ({', '.join(missing)}) in {include}; "
                "set CUDA_HOME to a CUDA toolkit to run the CUDA kernels on the CPU emulation")
    return None


def _asan_preloaded():
    return "libasan" in os.environ.get("LD_PRELOAD", "")


_module = None


def load(verbose=False):
    """The itr_kernels_emu extension, built if needed. Raises RuntimeError where it cannot be built
    (tests call unavailable_reason() first: a build failure is an error, never a skip)."""
    global _module
    if _module is not None:
        return _module
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    if SANITIZE and not _asan_preloaded():
        raise RuntimeError("ITR_EMU_SANITIZE=1 needs libasan loaded first (and libstdc++, for ASan to intercept "
                           "C++ throws): run `make cuda-emu`, or LD_PRELOAD=\"$(gcc -print-file-name=libasan.so) "
                           "$(gcc -print-file-name=libstdc++.so)\" python3 ...")
    from torch.utils import cpp_extension

    # -march as for the CPU kernels (setup.py): hardware fmaf, and a*b+c contracted to FMAs as nvcc does
    march = os.environ.get("ITR_KERNELS_CPU_ARCH", "native")
    flags = ["-O2", "-g", "-DITR_CUDA_EMU", "-fvisibility=hidden", "-Wno-unknown-pragmas",
             # gas warns that the .noinit.* sections of template statics are not NOBITS; harmless
             "-Wa,--no-warn"] + ([f"-march={march}"] if march else [])
    ldflags = [f"-Wl,-T,{os.path.join(CSRC, 'cuda_emu', 'shared.ld')}"]
    if SANITIZE:
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
        flags += sanitize
        ldflags += sanitize
    build = os.path.join(ROOT, "build", "cuda_emu_asan" if SANITIZE else "cuda_emu")
    os.makedirs(build, exist_ok=True)
    _module = cpp_extension.load(
        name="itr_kernels_emu",
        sources=[os.path.join(CSRC, s) for s in SOURCES],
        extra_cflags=flags,
        extra_ldflags=ldflags,
        extra_include_paths=[CSRC, os.path.join(CSRC, "include"), cuda_include()],
        build_directory=build,
        with_cuda=False,
        verbose=verbose,
    )
    _ops.register("itr_kernels_emu")
    return _module


def set_seed(seed):
    """Seed of the emulated thread order (at every barrier release)."""
    load().set_seed(seed)


@contextlib.contextmanager
def routed():
    """The public API (itr_kernels.smooth_rank, the losses, the modules) runs the emulated CUDA
    kernels on CPU tensors inside the block."""
    load()
    previous, _ops.ops = _ops.ops, torch.ops.itr_kernels_emu
    try:
        yield
    finally:
        _ops.ops = previous


if __name__ == "__main__":
    if "--why-not" in sys.argv:  # for make: the reason the emulation is skipped here, or nothing
        print(unavailable_reason() or "")
        sys.exit(0)
    if unavailable_reason():
        print(unavailable_reason())
        sys.exit(0)
    module = load(verbose="-v" in sys.argv)
    print(f"CUDA emulation ({'ASan + UBSan' if SANITIZE else 'plain'}) built: {module.__file__}")
