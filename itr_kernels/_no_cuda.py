"""In a build without CUDA kernels (no nvcc or no CUDA torch at build time, or ITR_KERNELS_BUILD=cpu),
a CUDA tensor reaches these kernels instead of the dispatcher's generic "Could not run ... with
arguments from the 'CUDA' backend": an error that says why, shows build_info() and how to rebuild."""
import json

import torch

REBUILD = (
    "rebuild it on a machine with nvcc (the CUDA toolkit; CUDA_HOME if it is not on the PATH) and a CUDA "
    "build of torch: `ITR_KERNELS_BUILD=cuda pip install --no-build-isolation -e .` in the itr_kernels "
    "repository, or `ITR_KERNELS_BUILD=cuda pip wheel . --no-build-isolation --no-deps -w dist` for a wheel "
    "(TORCH_CUDA_ARCH_LIST picks the GPU archs); or move the tensors to the CPU"
)


def message(op: str, info: dict) -> str:
    return (f"itr_kernels::{op} got a CUDA tensor, but this build of itr_kernels has no CUDA kernels "
            f"(itr_kernels.build_info(): {json.dumps(info)}); {REBUILD}")


_lib = None


def register(namespace: str, build_info) -> None:
    """Registers, for the CUDA key, a kernel that raises `message` for every op of `namespace`."""
    global _lib
    _lib = torch.library.Library(namespace, "IMPL")
    prefix = namespace + "::"
    for name in torch._C._dispatch_get_all_op_names():
        if name.startswith(prefix):
            op = name[len(prefix):]

            def no_cuda(*args, _op=op, **kwargs):
                raise NotImplementedError(message(_op, build_info()))

            _lib.impl(op, no_cuda, "CUDA")
