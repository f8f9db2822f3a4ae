import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import ALL_DTYPES, F64, SIZES, assert_close_to_truth, inputs, run


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("tau", [0.001, 0.01, 1.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q,n", SIZES)
def test_matches_reference(q, n, masked, tau, dtype, device, gen):
    scores64, _, valid = inputs(q, n, gen, masked)
    upstream = torch.randn(q, n, generator=gen, dtype=torch.float64)
    scores64, upstream = scores64.to(device), upstream.to(device)
    valid = None if valid is None else valid.to(device)
    scores = scores64.to(dtype)
    # Truth: the float64 reference on the same (rounded) inputs.
    truth, truth_grad = run(ref.smooth_rank, scores.double(), tau, valid, upstream=upstream)
    out, grad = run(ik.smooth_rank, scores, tau, valid, upstream=upstream)
    assert out.dtype == dtype and grad.dtype == dtype and out.shape == (q, n)
    same_out = same_grad = None
    if dtype in (torch.float16, torch.bfloat16):
        same_out, same_grad = run(ref.smooth_rank, scores, tau, valid, upstream=upstream)
    assert_close_to_truth(out, truth, same_out, dtype)
    assert_close_to_truth(grad, truth_grad, same_grad, dtype, rtol32=1e-4)


def test_masked_entries(device, gen):
    scores, _, valid = inputs(6, 40, gen, masked=True)
    scores, valid = scores.to(device), valid.to(device)
    scores[~valid] = float("nan")  # a masked score must not leak anywhere
    s = scores.clone().requires_grad_()
    rank = ik.smooth_rank(s, 0.05, valid)
    rank.sum().backward()
    assert torch.all(rank[~valid] == 0) and torch.all(s.grad[~valid] == 0)
    assert torch.isfinite(rank).all() and torch.isfinite(s.grad).all()
    # Masking a candidate equals deleting it: compare row by row with the compacted row.
    for row in range(scores.shape[0]):
        kept = scores[row, valid[row]].unsqueeze(0)
        torch.testing.assert_close(rank[row, valid[row]].unsqueeze(0), ik.smooth_rank(kept, 0.05), **F64)


def test_ranks_are_ranks_at_small_tau(device, gen):
    """As tau -> 0 the smooth rank is the hard rank (1 = highest score)."""
    # Distinct scores at least 1e-3 = 1000 tau apart, so every pair term saturates to 0 or 1
    # (random normals come closer than that in about one run in twenty).
    scores = torch.stack([torch.randperm(50, generator=gen) for _ in range(5)]).double().to(device) * 1e-3
    scores = scores + torch.rand(5, 1, generator=gen, dtype=torch.float64).to(device)
    rank = ik.smooth_rank(scores, 1e-6)
    hard = scores.argsort(dim=1, descending=True).argsort(dim=1) + 1
    torch.testing.assert_close(rank, hard.double())


def test_nan_score_gives_nan_row(device, gen):
    scores = torch.randn(3, 9, generator=gen).to(device)
    scores[1, 4] = float("nan")
    s = scores.clone().requires_grad_()
    rank = ik.smooth_rank(s, 0.01)
    rank.sum().backward()
    assert torch.isnan(rank[1]).all() and torch.isnan(s.grad[1]).all()
    assert torch.isfinite(rank[[0, 2]]).all() and torch.isfinite(s.grad[[0, 2]]).all()


def test_gradcheck(device, gen):
    scores, _, valid = inputs(3, 7, gen, masked=True, spread=0.05)
    scores = scores.to(device).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: ik.smooth_rank(s, 0.02, valid.to(device)), (scores,))
    assert torch.autograd.gradcheck(lambda s: ik.smooth_rank(s, 0.02), (scores,))


def test_non_contiguous(device, gen):
    scores = torch.randn(30, 20, generator=gen, dtype=torch.float64).to(device)
    torch.testing.assert_close(ik.smooth_rank(scores.T, 0.1), ref.smooth_rank(scores.T.contiguous(), 0.1), **F64)
    torch.testing.assert_close(ik.smooth_rank(scores[:, ::2], 0.1), ref.smooth_rank(scores[:, ::2].contiguous(), 0.1),
                               **F64)


def test_empty(device):
    for shape in [(0, 5), (4, 0)]:
        s = torch.zeros(shape, device=device, requires_grad=True)
        out = ik.smooth_rank(s, 0.1)
        out.sum().backward()
        assert out.shape == shape and s.grad.shape == shape
