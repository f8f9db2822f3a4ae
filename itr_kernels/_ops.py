"""Loads the compiled kernels and registers, for every op, its fake kernel (shapes for
torch.compile) and its autograd formula. The schemas live in csrc/op_schemas.h."""
import json

import torch

_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` in the itr_kernels repository"

try:
    from . import _C
except ImportError as e:  # not built, or built against another torch (undefined symbols)
    raise ImportError(f"itr_kernels._C, the compiled kernels, could not be loaded ({e}); {_REBUILD}") from e

_COMPILED = json.loads(_C.build_info())
if _COMPILED["torch_version"] != torch.__version__:
    raise ImportError(
        f"itr_kernels._C was built against torch {_COMPILED['torch_version']} but torch {torch.__version__} "
        f"is installed; {_REBUILD}"
    )

# The ops the public API calls, looked up at each call (losses.py, bcls.py: `_ops.ops.<op>`), so
# that the tests can route the API to the CPU emulation of the CUDA kernels (itr_kernels_emu).
ops = torch.ops.itr_kernels


def build_info():
    """What itr_kernels._C was compiled with (CPU flags, CUDA archs, torch and CUDA versions) and
    which backends have kernels at run time."""
    info = dict(_COMPILED)
    info["torch_runtime"] = torch.__version__
    info["backends"] = [
        key for key in ("CPU", "CUDA") if torch._C._dispatch_has_kernel_for_dispatch_key("itr_kernels::smooth_rank", key)
    ]
    return info


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
        return scores.new_empty((2, b)), scores.new_empty((2, b), dtype=_acc_dtype(scores))

    @torch.library.register_fake(f"{namespace}::triplet_sn_backward")
    def _triplet_sn_backward_fake(grad, scores, relevance, lse, margin, temperature, rho):
        return scores.new_empty(scores.shape)

    @torch.library.register_fake(f"{namespace}::kendall_full")
    def _kendall_full_fake(scores, relevance, valid, gap, phi, margin, temperature, compute_grad):
        q = scores.shape[0]
        grad = scores.new_empty(scores.shape if compute_grad else (0,))
        return scores.new_empty((q,)), scores.new_empty((q,), dtype=torch.int64), grad

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

    def triplet_sn_setup(ctx, inputs, output):
        scores, relevance, margin, temperature, rho = inputs
        _, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(scores, relevance, lse)
        ctx.args = (margin, temperature, rho)

    def triplet_sn_backward(ctx, grad_loss, grad_lse):
        scores, relevance, lse = ctx.saved_tensors
        grad = lib.triplet_sn_backward(grad_loss, scores, relevance, lse, *ctx.args)
        return grad, None, None, None, None

    torch.library.register_autograd(f"{namespace}::triplet_sn", triplet_sn_backward, setup_context=triplet_sn_setup)

    _register_row_grad_autograd(namespace, "smooth_ndcg", "itr_kernels.smooth_ndcg_loss")
    _register_row_grad_autograd(namespace, "kendall_full", "itr_kernels.kendall_loss")


def _register_row_grad_autograd(namespace, name, public):
    """Autograd of an op whose forward returns (per-row values, per-row auxiliary, row_grad) with
    row_grad = d value[q] / d scores[q, :] computed in the same pass: backward only scales rows."""

    def setup(ctx, inputs, output):
        _, aux, row_grad = output
        ctx.mark_non_differentiable(aux, row_grad)
        ctx.save_for_backward(row_grad)
        ctx.n_inputs = len(inputs)

    def backward(ctx, grad_values, grad_aux, grad_row_grad):
        (row_grad,) = ctx.saved_tensors
        if row_grad.dim() != 2:
            raise RuntimeError(f"{namespace}::{name} was called with compute_grad=False; call it with "
                               f"compute_grad=True to differentiate it ({public} does this)")
        return (row_grad * grad_values.unsqueeze(-1).to(row_grad.dtype),) + (None,) * (ctx.n_inputs - 1)

    torch.library.register_autograd(f"{namespace}::{name}", backward, setup_context=setup)


register("itr_kernels")
