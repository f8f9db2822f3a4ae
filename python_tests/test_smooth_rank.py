import math

import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import (ALL_DTYPES, F64, LOW_PRECISION, SIZES, assert_close_to_truth, inputs, run, smooth_rank_grad_truth,
                     smooth_rank_truth)


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
    if dtype != torch.float64:
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


INF = float("inf")
# Rows with infinite scores: alone, of both signs, tied with another of the same sign (inf - inf:
# NaN for those two candidates, as the math), and next to masked candidates (a valid -inf is not a
# masked one). (scores, valid)
INFINITE_ROWS = [
    ([0.1, INF, 0.3, 0.2], [True, True, True, False]),
    ([0.1, -INF, 0.3, 0.2], [True, True, True, True]),
    ([INF, -INF, 0.2, 0.5], [True, True, True, True]),
    ([-INF, 0.2, 0.7, -INF], [True, True, True, False]),
    ([INF, 0.4, INF, -0.3], [True, True, True, True]),
    ([-INF, -INF, 0.3, 0.1], [True, True, False, True]),
    ([INF, 0.3, -INF, 0.9], [True, False, True, False]),
]


def test_infinite_score_by_hand(device):
    """smooth_rank([[.1, inf, .3]], tau=0.1) = [2 + sigma(2), 1, 2 + sigma(-2)]: the +inf candidate
    outranks both others (sigma(+inf) = 1) and is outranked by none (sigma(-inf) = 0)."""
    def sig(x):
        return 1 / (1 + math.exp(-x))
    scores = torch.tensor([[0.1, INF, 0.3]], dtype=torch.float64, device=device)
    expected = torch.tensor([[2 + sig(2.0), 1.0, 2 + sig(-2.0)]], dtype=torch.float64)
    torch.testing.assert_close(ik.smooth_rank(scores, 0.1).cpu(), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_infinite_scores(dtype, device, gen):
    """Rank and gradient of rows with +-inf scores against the float64 truth, including the NaN of a
    pair of equal infinities; every other entry finite (no row mean or self term inf - inf)."""
    scores = torch.tensor([r for r, _ in INFINITE_ROWS], dtype=dtype, device=device)
    valid = torch.tensor([v for _, v in INFINITE_ROWS], device=device)
    upstream = torch.randn(scores.shape, generator=gen, dtype=torch.float64).to(dtype).to(device)
    tau = 0.1
    rank, grad = run(ik.smooth_rank, scores, tau, valid, upstream=upstream)
    truth = smooth_rank_truth(scores, tau, valid)
    truth_grad = smooth_rank_grad_truth(scores, tau, upstream, valid)
    assert torch.isfinite(truth[:, :2]).sum() >= 6  # the truth itself is mostly finite
    rtol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(rank.double(), truth, rtol=rtol, atol=rtol, equal_nan=True)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=rtol, atol=rtol, equal_nan=True)
    assert torch.all(rank[~valid] == 0) and torch.all(grad[~valid] == 0)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_masked_candidates_add_exactly_nothing(dtype, device, gen):
    """A masked candidate's pair terms are exactly 0, not a clamped 2^-64: a row whose only valid
    candidate stands among masked ones has rank exactly 1 and gradient exactly 0, whatever the
    masked scores and the upstream gradient."""
    q, n = 3, 40
    scores = torch.randn(q, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    valid = torch.zeros(q, n, dtype=torch.bool, device=device)
    valid[0, 7] = valid[1, 0] = valid[2, n - 1] = True
    scores[1] = 50.0  # masked candidates far above the valid one
    scores[1, 0] = -50.0
    upstream = torch.randn(q, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    for tau in (0.01, 1.0):
        rank, grad = run(ik.smooth_rank, scores, tau, valid, upstream=upstream)
        assert torch.equal(rank, valid.to(dtype)), rank[valid]
        assert torch.all(grad == 0), grad[valid]


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_gradient_of_far_apart_pairs(dtype, device):
    """sigma' of pairs 12 to 24 tau apart, in float16 / bfloat16, against the truth on the same
    inputs. sigma'(x) computed as (1 - t^2) / 4 from t = tanh(x / 2) cancels: tanh(9) rounds to
    within one float ulp of 1, so at x = 18 that form is off by about 2x and at x >= 20 it gives 0.
    (On the GPU, tanh.approx's own 2^-11 error would add to it; the emulation's tanhf is correctly
    rounded, so the rounding of t alone is what this catches.)"""
    tau = 2.0 ** -9  # x * tau is exact in both dtypes
    x = torch.tensor([12.0, 14.0, 16.0, 18.0, 20.0, 24.0])
    scores = torch.stack([torch.zeros_like(x), x * tau], dim=1).to(dtype).to(device)
    # upstream 8192 on the lower candidate: d/dS = 8192 sigma'(x) / tau stays a normal float16
    upstream = torch.tensor([[8192.0, 0.0]]).expand(len(x), 2).to(dtype).to(device)
    _, grad = run(ik.smooth_rank, scores, tau, upstream=upstream)
    truth = smooth_rank_grad_truth(scores, tau, upstream)
    assert truth[:, 1].min() > 2 * torch.finfo(torch.float16).tiny
    torch.testing.assert_close(grad.double(), truth, rtol=1e-2, atol=0)


def test_infinite_score_in_smooth_ap(device):
    """Smooth-AP takes its ranks from smooth_rank: a +inf positive is ranked first, finitely."""
    def sig(x):
        return 1 / (1 + math.exp(-x))
    scores = torch.tensor([[0.1, INF, 0.3]], dtype=torch.float64, device=device)
    positives = torch.tensor([[True, True, False]], device=device)
    rank_all = [2 + sig(2.0), 1.0]  # of the positives, among all candidates
    rank_pos = [2.0, 1.0]           # among the positives
    expected = 1 - (rank_pos[0] / rank_all[0] + rank_pos[1] / rank_all[1]) / 2
    assert ik.smooth_ap_loss(scores, positives, tau=0.1).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("gap", [1.0, 30.0, 50.0, 80.0, 1e4])
def test_far_apart_pair_gradient(gap, dtype, device):
    """sigma' of a pair far apart (|s_k - s_j| / tau = gap): e^-gap / tau, exactly 0 once it
    underflows. The CPU's clamped 2^t once left 2^-64 there, which 1 / tau = 1e30 turned into 5e10."""
    tau = 1e-30
    s64 = torch.tensor([[0.0, gap * tau]], dtype=torch.float64)
    s = s64.to(device, dtype).requires_grad_()
    ik.smooth_rank(s, tau).backward(torch.tensor([[1.0, 0.0]], device=device, dtype=dtype))
    d = float(s.detach()[0, 1].double()) / tau   # the pair's scaled gap after rounding
    e = math.exp(-abs(d))
    g = e / (1 + e) ** 2 / tau                    # d rank_0 / d s_1 = sigma'(d) / tau
    truth = torch.tensor([[-g, g]], dtype=torch.float64)
    torch.testing.assert_close(s.grad.double().cpu(), truth, rtol=1e-5, atol=0)
