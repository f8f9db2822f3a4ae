"""torch.library contract: opcheck (schema, fake kernels, autograd registration), torch.compile and
the build information."""
import pytest
import torch

import itr_kernels as ik

from helpers import assert_compiles_to_same, cosine_scores


def _op_samples(device, gen):
    scores = cosine_scores(6, 9, gen).to(device)
    rel = torch.rand(6, 9, generator=gen, dtype=torch.float64).to(device)
    valid = (torch.rand(6, 9, generator=gen) > 0.3).to(device)
    grad = torch.randn(6, 9, generator=gen, dtype=torch.float64).to(device)
    ops = ik._ops.ops  # the routed ops: the CUDA emulation's under the cuda-emu device
    req = scores.clone().requires_grad_()
    return [
        (ops.smooth_rank.default, (scores, None, 0.05)),
        (ops.smooth_rank.default, (req, valid, 0.05)),
        (ops.smooth_rank.default, (scores.float().T, None, 0.5)),
        (ops.smooth_rank_backward.default, (grad, scores, valid, 0.05)),
        (ops.smooth_ndcg.default, (req, rel, None, 0.05, 0, False, True)),
        (ops.smooth_ndcg.default, (req, rel, valid, 0.05, 3, True, True)),
        (ops.smooth_ndcg.default, (scores.float(), rel.float(), None, 0.05, 0, False, False)),
    ]


def test_opcheck(device, gen):
    for op, args in _op_samples(device, gen):
        torch.library.opcheck(op, args)


def test_compile_fullgraph(device, gen):
    """Fused ops inside a compiled training-step function: one graph, same values and gradients."""
    b = 32
    scores = cosine_scores(b, b, gen).to(device, torch.float32)
    rel = torch.rand(b, b, generator=gen).to(device)
    loss_fn = ik.ListwiseITRLoss(tau=0.05)

    def step(s, r):
        return loss_fn(s, r) + ik.smooth_rank(s, 0.1).mean() * 1e-3

    assert_compiles_to_same(step, scores, rel)


def test_build_info():
    info = ik.build_info()
    assert info["torch_version"] == torch.__version__ == info["torch_runtime"]
    assert "CPU" in info["backends"]
    assert info["cuda"] == ("CUDA" in info["backends"])
    assert "-O3" in info["cxx_flags"]
