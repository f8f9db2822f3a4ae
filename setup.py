"""Builds itr_kernels._C for this machine: the C++ CPU kernels always, the CUDA kernels when a CUDA
build of torch and nvcc are present.

Build isolation must be off (`pip install --no-build-isolation -e .`): the extension is compiled
against the torch that is installed and must be loaded by that same torch; an isolated build would
download another (unpinned, several GB) torch, build against it, and fail to load at import.

Environment:
  ITR_KERNELS_BUILD     auto (default) | cpu | cuda   force a CPU-only build, or CUDA on a box without GPU
  TORCH_CUDA_ARCH_LIST  CUDA archs, e.g. "9.0"; default: the local GPUs', else "9.0+PTX" (the PTX lets
                        the driver compile the kernels for newer GPUs)
  ITR_KERNELS_CPU_ARCH  unset (default): a portable binary, x86-64-v2 baseline plus x86-64-v3 (AVX2, FMA)
                        and x86-64-v4 (AVX-512) copies of the CPU kernels, the best the CPU supports chosen
                        at import (csrc/cpu/isa.h); the copies need GCC on x86-64, elsewhere only the
                        baseline (the compiler's default target) is built. Set: the value of -march for a
                        binary for this machine only ("native"), no copies; "" for the compiler's default.
"""
import glob
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tempfile

import torch
from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))
# The one version string: itr_kernels/__init__.py
VERSION = re.search(r'^__version__ = "([^"]+)"', open(os.path.join(ROOT, "itr_kernels", "__init__.py")).read(), re.M).group(1)
MODE = os.environ.get("ITR_KERNELS_BUILD", "auto").lower()
if MODE not in ("auto", "cpu", "cuda"):
    raise SystemExit(f"ITR_KERNELS_BUILD must be auto, cpu or cuda, got {MODE!r}")
if MODE == "cuda" and torch.version.cuda is None:
    raise SystemExit("ITR_KERNELS_BUILD=cuda needs a CUDA build of torch; this one is " + torch.__version__)
if MODE == "cuda" and cpp_extension.CUDA_HOME is None:
    raise SystemExit("ITR_KERNELS_BUILD=cuda needs nvcc (set CUDA_HOME)")
WITH_CUDA = MODE == "cuda" or (MODE == "auto" and torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None)


def cuda_archs():
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        archs = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        archs = ["%d.%d" % a for a in archs]
    else:
        archs = ["9.0"]
    # PTX of the newest arch as well: forward compatible with GPUs newer than those compiled for
    return ";".join(archs[:-1] + [archs[-1] + "+PTX"])


def write_build_config(path, cxx_flags, archs):
    """What was compiled, embedded in the binary (itr_kernels.build_info())."""
    lines = [
        "#pragma once",
        f'#define ITR_TORCH_VERSION "{torch.__version__}"',
        f'#define ITR_CXX_FLAGS "{" ".join(cxx_flags)}"',
        f'#define ITR_CUDA_ARCHS "{archs}"',
        f'#define ITR_CUDA_VERSION "{torch.version.cuda}"',
    ]
    write_if_changed(path, "\n".join(lines) + "\n")


def compiler_accepts(flags, code="int main() { return 0; }"):
    """Whether the C++ compiler that builds the extension compiles and links `code` with `flags`."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "t.cpp")
        with open(src, "w") as f:
            f.write(code)
        cmd = [os.environ.get("CXX", "c++"), *flags, src, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def is_gcc():
    try:
        out = subprocess.run([os.environ.get("CXX", "c++"), "--version"], capture_output=True, text=True).stdout
    except OSError:
        return False
    return "clang" not in out.lower() and ("g++" in out or "gcc" in out.lower() or "free software foundation" in out.lower())


def write_if_changed(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path) or open(path).read() != text:  # keep incremental builds incremental
        with open(path, "w") as f:
            f.write(text)


# The CPU kernels' instruction sets (module docstring).
X86_64 = platform.machine().lower() in ("x86_64", "amd64")
CPU_ARCH = os.environ.get("ITR_KERNELS_CPU_ARCH")
CPU_VARIANTS = CPU_ARCH is None and X86_64 and is_gcc()
march = CPU_ARCH if CPU_ARCH is not None else ("x86-64-v2" if CPU_VARIANTS else "")
cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math"] + ([f"-march={march}"] if march else [])
# OpenMP where the compiler has it: torch's at::parallel_for, inlined in the kernels, runs its loop
# on one thread without it; `#pragma omp simd` then needs -fopenmp-simd.
OPENMP = compiler_accepts(["-fopenmp"], "#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }")
if OPENMP:
    cxx.append("-fopenmp")
else:
    print("itr_kernels: the C++ compiler has no OpenMP; the CPU kernels will run on one thread")
    cxx += ["-fopenmp-simd"] if compiler_accepts(["-fopenmp-simd"]) else []
generated = os.path.join(ROOT, "build", "generated")
kernel_files = [f for f in sorted(glob.glob("csrc/cpu/*.cpp")) if os.path.basename(f) != "isa.cpp"]
# The wide copies compile the library's inline functions for the baseline too, so whichever copy the
# linker keeps runs on every CPU (csrc/cpu/isa_variant.h; python_tests/test_packaging.py checks).
sources = ["csrc/ops.cpp", "csrc/cpu/isa.cpp"] + kernel_files
if CPU_VARIANTS:
    for level, name in ((1, "x86-64-v3"), (2, "x86-64-v4")):
        for f in kernel_files:
            stem = os.path.splitext(os.path.basename(f))[0]
            wrapper = os.path.join("build", "generated", "cpu_isa", f"{stem}.{name.replace('-', '_')}.cpp")
            write_if_changed(os.path.join(ROOT, wrapper),
                             f"// Generated by setup.py: {f} compiled for {name} (csrc/cpu/isa_variant.h).\n"
                             f"#define ITR_CPU_ISA {level}\n#include \"cpu/isa_variant.h\"\n"
                             f"#include \"cpu/{os.path.basename(f)}\"\n")
            sources.append(wrapper)
archs = ""
extension = cpp_extension.CppExtension
nvcc = []
if WITH_CUDA:
    archs = cuda_archs()
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    sources += sorted(glob.glob("csrc/cuda/*.cu")) + sorted(glob.glob("csrc/cuda/*.cpp"))
    cxx.append("-DITR_WITH_CUDA")
    nvcc = ["-O3", "-DITR_WITH_CUDA", "-Xptxas=-warn-spills,-warn-lmem-usage", "-lineinfo"]
    extension = cpp_extension.CUDAExtension
write_build_config(os.path.join(generated, "itr_build_config.h"), cxx, archs)

ext = extension(
    "itr_kernels._C",
    sources,
    include_dirs=[os.path.join(ROOT, "csrc"), os.path.join(ROOT, "csrc", "include"), generated],
    extra_compile_args={"cxx": cxx, "nvcc": nvcc},
    extra_link_args=["-fopenmp"] if OPENMP else [],
)


class BuildExt(cpp_extension.BuildExtension):
    """One object directory for every kind of build (in place, editable, wheel): pip's editable
    install would otherwise compile in a fresh temporary directory each time, and a wheel built
    after it (make wheel-check) would compile everything again. ninja rebuilds what changed,
    command lines included."""

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(ROOT, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


def read_requirements(path):
    with open(os.path.join(ROOT, path)) as f:
        return [line.split("#")[0].strip() for line in f if line.split("#")[0].strip()]


setup(
    name="itr_kernels",
    version=VERSION,
    description="Fused CPU/CUDA ranking losses for image-text retrieval (Smooth-NDCG, listwise ITR, BCLS, triplet)",
    # The kernel library, its training application (itr_kernels.app, the `train` extra), and the
    # repository's configs/ packaged as itr_kernels.app.configs so an installed wheel finds them.
    packages=find_packages(include=["itr_kernels", "itr_kernels.*"]) + ["itr_kernels.app.configs"],
    package_dir={"itr_kernels.app.configs": "configs"},
    package_data={"itr_kernels.app.configs": ["*.yaml"]},
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExt},
    python_requires=">=3.10",
    # The binary is tied to the torch release it was compiled against, which itr_kernels checks at
    # import (_ops.py, the same release, whatever its local +cpu/+cuXXX label).
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    extras_require={"train": read_requirements("requirements-train.txt")},
    entry_points={"console_scripts": ["itr-train=itr_kernels.app:train_main",
                                      "itr-rerank=itr_kernels.app:rerank_main"]},
)
