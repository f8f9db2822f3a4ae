"""Loads the compiled kernels and registers, for every op, its fake kernel (shapes for
torch.compile) and its autograd formula. The schemas live in csrc/op_schemas.h."""
import json
from typing import Any

import torch

_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` in the itr_kernels repository"

try:
    from . import _C
except ImportError as e:  # not built, or built against another torch (undefined symbols)
    raise ImportError(f"itr_kernels._C, the compiled kernels, could not be loaded ({e}); {_REBUILD}") from e

_COMPILED = json.loads(_C.build_info())
# The same torch release (setup.py's install_requires pins it), whatever its local +cpu/+cuXXX label.
if _COMPILED["torch_version"].split("+")[0] != torch.__version__.split("+")[0]:
    raise ImportError(
        f"itr_kernels._C was built against torch {_COMPILED['torch_version']} but torch {torch.__version__} "
        f"is installed; {_REBUILD}"
    )

# The ops the public API calls, looked up at each call (losses.py, bcls.py: `_ops.ops.<op>`), so
# that the tests can route the API to the CPU emulation of the CUDA kernels (itr_kernels_emu).
ops = torch.ops.itr_kernels


def build_info() -> dict[str, Any]:
    """What itr_kernels._C was compiled with, and which backends have kernels at run time
    (docs/README.md).

    Returns:
        A dict: the build's CPU flags, OpenMP, CUDA architectures, torch and CUDA versions,
        ``"torch_runtime"`` (the torch imported now) and ``"backends"`` (``"CPU"``, and ``"CUDA"``
        when the CUDA kernels were compiled in).

    Example:
        >>> "CPU" in build_info()["backends"]
        True
    """
    info = dict(_COMPILED)
    info["torch_runtime"] = torch.__version__
    info["backends"] = [
        key for key in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key("itr_kernels::smooth_rank", key)
        and (key == "CPU" or info["cuda"])  # not _no_cuda's error kernels
    ]
    return info


if not _COMPILED["cuda"]:
    from . import _no_cuda

    _no_cuda.register("itr_kernels", build_info)


def swhs_steps(n, window, stride):
    """Window steps of SW-HS on n candidates: while the lower window is non-empty."""
    return (n - window + stride - 1) // stride if n > window else 0


def _acc_dtype(scores):
    return torch.float64 if scores.dtype == torch.float64 else torch.float32


def register(namespace):
    """Registers the fake kernel and the autograd formula of every op of `namespace`, whose schemas
    are csrc/op_schemas.h's: itr_kernels, or the CUDA emulation's itr_kernels_emu (tests)."""
    lib = getattr(torch.ops, namespace)

    # ---- fake kernels: output metadata only ----

    @torch.library.register_fake(f"{namespace}::smooth_rank")
    def _smooth_rank_fake(scores, valid, tau):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::smooth_rank_backward")
    def _smooth_rank_backward_fake(grad, scores, valid, tau):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::smooth_ndcg")
    def _smooth_ndcg_fake(scores, relevance, valid, tau, k, linear_gain, compute_grad):
        q = scores.shape[0]
        grad = scores.new_empty(scores.shape if compute_grad else (0,))
        return scores.new_empty((q,)), scores.new_empty((q,), dtype=_acc_dtype(scores)), grad

    @torch.library.register_fake(f"{namespace}::triplet_sn")
    def _triplet_sn_fake(scores, relevance, margin, temperature, rho):
        b = scores.shape[0]
        return scores.new_empty((2, b)), scores.new_empty((2, 3, b), dtype=_acc_dtype(scores))

    @torch.library.register_fake(f"{namespace}::triplet_sn_backward")
    def _triplet_sn_backward_fake(grad, scores, relevance, stats, margin, temperature, rho):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::kendall_full")
    def _kendall_full_fake(scores, relevance, valid, gap, phi, margin, temperature, compute_grad):
        q = scores.shape[0]
        grad = scores.new_empty(scores.shape if compute_grad else (0,))
        # the sums in the accumulator dtype (they grow with N^2), as the kernels return them
        return scores.new_empty((q,), dtype=_acc_dtype(scores)), scores.new_empty((q,), dtype=torch.int64), grad

    # contrastive ops (docs/contrastive.md, docs/bcls.md §1): both directions of a square matrix, or rows with
    # the column of each one's positive
    @torch.library.register_fake(f"{namespace}::infonce")
    def _infonce_fake(scores, positives, temperature):
        d, q = _query_shape(scores, positives)
        return scores.new_empty((d, q)), scores.new_empty((d, 3, q), dtype=_acc_dtype(scores))

    @torch.library.register_fake(f"{namespace}::infonce_backward")
    def _infonce_backward_fake(grad, scores, positives, stats, temperature):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::vse_triplet")
    def _vse_triplet_fake(scores, positives, margin, max_violation):
        shape = _query_shape(scores, positives)
        return scores.new_empty(shape), scores.new_empty(shape, dtype=torch.int64)

    @torch.library.register_fake(f"{namespace}::vse_triplet_backward")
    def _vse_triplet_backward_fake(grad, scores, positives, aux, margin, max_violation):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::kendall_swhs")
    def _kendall_swhs_fake(scores, relevance, valid, window, stride, gap):
        shape = (scores.shape[0], swhs_steps(scores.shape[1], window, stride))
        return (scores.new_empty(shape, dtype=torch.int64), scores.new_empty(shape, dtype=torch.int64),
                scores.new_empty(shape, dtype=torch.bool))

    # ---- autograd ----

    def smooth_rank_setup(ctx, inputs, output):
        scores, valid, tau = inputs
        ctx.save_for_backward(scores, valid)
        ctx.tau = tau

    def smooth_rank_backward(ctx, grad):
        scores, valid = ctx.saved_tensors
        return lib.smooth_rank_backward(grad, scores, valid, ctx.tau), None, None

    torch.library.register_autograd(f"{namespace}::smooth_rank", smooth_rank_backward,
                                    setup_context=smooth_rank_setup)

    _register_loss_aux_autograd(namespace, "triplet_sn")
    _register_loss_aux_autograd(namespace, "infonce")
    _register_loss_aux_autograd(namespace, "vse_triplet")

    _register_row_grad_autograd(namespace, "smooth_ndcg", "itr_kernels.smooth_ndcg_loss")
    _register_row_grad_autograd(namespace, "kendall_full", "itr_kernels.kendall_loss")

    # Differentiating a gradient (create_graph=True, then a second backward) raises, for every op:
    # through the backward ops here, through _FirstOrderOnly for the ops whose forward gives the gradient.
    for name in ("smooth_rank", "triplet_sn", "infonce", "vse_triplet"):
        torch.library.register_autograd(f"{namespace}::{name}_backward", _no_second_derivative(f"{namespace}::{name}"))


def _second_derivative_error(op):
    return RuntimeError(f"{op}: second derivatives are not implemented (the gradients of itr_kernels are first "
                        f"order), so a gradient computed with create_graph=True cannot be differentiated again")


def _no_second_derivative(op):
    """Autograd of the backward op of `op`: differentiating it is differentiating `op` twice."""

    def backward(ctx, *grads):
        raise _second_derivative_error(op)

    return backward


class _FirstOrderOnly(torch.autograd.Function):
    """The identity on a gradient computed with create_graph=True, tied to the op's input: so that a
    second derivative through it raises, where the gradient would otherwise look constant (no
    graph) and its second derivative silently 0."""

    @staticmethod
    def forward(ctx, op, grad, scores):
        ctx.op = op
        return grad.clone()

    @staticmethod
    def backward(ctx, *grads):
        raise _second_derivative_error(ctx.op)


def _query_shape(scores, positives):
    """(directions, queries) of a contrastive op: both directions of a square matrix, or the rows."""
    return (1 if positives is not None else 2, scores.shape[0])


def _register_loss_aux_autograd(namespace, name):
    """Autograd of an op (scores, tensor or None, *scalars) -> (per-query losses, auxiliary) whose
    backward op `<name>_backward` takes (grad, scores, tensor or None, auxiliary, *scalars): the
    forward saves O(B) per-query statistics and the backward recomputes the rest from scores."""
    backward_op = getattr(getattr(torch.ops, namespace), f"{name}_backward")

    def setup(ctx, inputs, output):
        scores, other, *scalars = inputs
        _, aux = output
        ctx.mark_non_differentiable(aux)
        ctx.save_for_backward(scores, other, aux)
        ctx.scalars = scalars

    def backward(ctx, grad_loss, grad_aux):
        scores, other, aux = ctx.saved_tensors
        return (backward_op(grad_loss, scores, other, aux, *ctx.scalars), None) + (None,) * len(ctx.scalars)

    torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


def _register_row_grad_autograd(namespace, name, public):
    """Autograd of an op whose forward returns (per-row values, per-row auxiliary, row_grad) with
    row_grad = d value[q] / d scores[q, :] computed in the same pass: backward only scales rows."""

    def setup(ctx, inputs, output):
        _, aux, row_grad = output
        ctx.mark_non_differentiable(aux, row_grad)
        ctx.save_for_backward(row_grad, inputs[0])   # scores: only for a second derivative's error
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_values, grad_aux, grad_row_grad):
        row_grad, scores = ctx.saved_tensors
        if row_grad.dim() != 2:
            raise RuntimeError(f"{namespace}::{name} was called with compute_grad=False; call it with "
                               f"compute_grad=True to differentiate it ({public} does this)")
        # In the wider of the two dtypes (Kendall's float32 sums of float16 scores: an upstream 1 / count
        # is subnormal in float16), then in the scores' dtype.
        grad = (row_grad * grad_values.unsqueeze(-1)).to(row_grad.dtype)
        if torch.is_grad_enabled():   # create_graph=True
            grad = _FirstOrderOnly.apply(f"{namespace}::{name}", grad, scores)
        return (grad,) + (None,) * (ctx.n_inputs - 1)

    torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


register("itr_kernels")
