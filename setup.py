"""Builds itr_kernels._C for this machine: the C++ CPU kernels always, the CUDA kernels when a CUDA
build of torch and nvcc are present.

Build isolation must be off (`pip install --no-build-isolation -e .`): the extension is compiled
against the torch that is installed and must be loaded by that same torch; an isolated build would
download another (unpinned, several GB) torch, build against it, and fail to load at import.

Environment:
  ITR_KERNELS_BUILD     auto (default) | cpu | cuda   force a CPU-only build, or CUDA on a box without GPU
  TORCH_CUDA_ARCH_LIST  CUDA archs, e.g. "9.0"; default: the local GPU's, or 9.0 where there is none
  ITR_KERNELS_CPU_ARCH  value of -march for the CPU kernels (default: native; "" for none)
"""
import glob
import os
import re

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
        archs = sorted({"%d.%d" % torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(archs)
    return "9.0"


def write_build_config(path, cxx_flags, archs):
    """What was compiled, embedded in the binary (itr_kernels.build_info())."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = [
        "#pragma once",
        f'#define ITR_TORCH_VERSION "{torch.__version__}"',
        f'#define ITR_CXX_FLAGS "{" ".join(cxx_flags)}"',
        f'#define ITR_CUDA_ARCHS "{archs}"',
        f'#define ITR_CUDA_VERSION "{torch.version.cuda}"',
    ]
    text = "\n".join(lines) + "\n"
    if not os.path.exists(path) or open(path).read() != text:  # keep incremental builds incremental
        with open(path, "w") as f:
            f.write(text)


march = os.environ.get("ITR_KERNELS_CPU_ARCH", "native")
cxx = ["-O3", "-fopenmp", "-fno-math-errno", "-fno-trapping-math"] + ([f"-march={march}"] if march else [])
sources = ["csrc/ops.cpp"] + sorted(glob.glob("csrc/cpu/*.cpp"))
generated = os.path.join(ROOT, "build", "generated")
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
    extra_link_args=["-fopenmp"],
)


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
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.10",
    # The binary is tied to the torch it was compiled against (itr_kernels checks it at import).
    install_requires=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    extras_require={"train": read_requirements("requirements-train.txt")},
    entry_points={"console_scripts": ["itr-train=itr_kernels.app:train_main",
                                      "itr-rerank=itr_kernels.app:rerank_main"]},
)
