import math

import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import (ALL_DTYPES, F64, SIZES, assert_close_to_truth, inputs, run, smooth_rank_grad_truth,
                     smooth_rank_truth)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("tau", [0.001, 0.01, 1.0])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q,n", SIZES)
def test_matches_reference(q, n, masked, tau, dtype, device, gen):
    scores64, relevance, valid = inputs(q, n, gen, masked)
    scores64, relevance = scores64.to(device), relevance.to(device)
    valid = None if valid is None else valid.to(device)
    scores, rel = scores64.to(dtype), relevance.to(dtype)
    kw = dict(tau=tau, valid=valid, reduction="none")
    truth, truth_grad = run(ref.smooth_ndcg_loss, scores.double(), rel.double(), **kw)
    loss, grad = run(ik.smooth_ndcg_loss, scores, rel, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == (q,)
    same_loss = same_grad = None
    if dtype != torch.float64:
        same_loss, same_grad = run(ref.smooth_ndcg_loss, scores, rel, **kw)
    # A loss is 1 - DCG/IDCG: it is resolved to about the ulp of 1 (2e-16 in float64, 6e-8 in float32).
    assert_close_to_truth(loss, truth, same_loss, dtype, atol=1e-14 if dtype == torch.float64 else 1e-6)
    assert_close_to_truth(grad, truth_grad, same_grad, dtype, rtol32=1e-4)


@pytest.mark.parametrize("k", [1, 3, 10, 40, 200])
@pytest.mark.parametrize("gain", ["exp", "linear"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("masked", [False, True])
def test_options_match_reference(k, gain, reduction, masked, device, gen):
    scores, relevance, valid = inputs(9, 40, gen, masked)
    relevance = (relevance * 4).round() / 4  # ties in relevance exercise the top-k tie rule
    scores, relevance = scores.to(device), relevance.to(device)
    valid = None if valid is None else valid.to(device)
    kw = dict(tau=0.02, k=k, gain=gain, valid=valid, reduction=reduction)
    loss, grad = run(ik.smooth_ndcg_loss, scores, relevance, **kw)
    truth, truth_grad = run(ref.smooth_ndcg_loss, scores, relevance, **kw)
    torch.testing.assert_close(loss, truth, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, truth_grad, rtol=1e-8, atol=1e-10)


def test_by_hand(device):
    """Two candidates, exp gain: ranks and NDCG written out from the docs/smooth_rank_ndcg.md formulas."""
    tau = 0.5
    scores = torch.tensor([[0.3, 0.1]], dtype=torch.float64, device=device)
    relevance = torch.tensor([[0.0, 1.0]], dtype=torch.float64, device=device)
    sig = 1 / (1 + math.exp(-(0.1 - 0.3) / tau))  # sigma((s_1 - s_0) / tau)
    rank1 = 1 + (1 - sig)  # the relevant candidate is outscored by candidate 0
    expected = 1 - (1 / math.log2(1 + rank1)) / (1 / math.log2(2))
    loss = ik.smooth_ndcg_loss(scores, relevance, tau=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_rows_without_gain(device, gen):
    scores, relevance, _ = inputs(5, 12, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    relevance[[1, 3]] = 0  # IDCG = 0: loss 0, zero gradient, not counted by "mean"
    s = scores.clone().requires_grad_()
    per_row = ik.smooth_ndcg_loss(s, relevance, reduction="none")
    mean = ik.smooth_ndcg_loss(s, relevance)
    mean.backward()
    assert torch.all(per_row[[1, 3]] == 0) and torch.all(s.grad[[1, 3]] == 0)
    torch.testing.assert_close(mean, per_row[[0, 2, 4]].mean(), **F64)
    zero = ik.smooth_ndcg_loss(scores, torch.zeros_like(relevance))
    assert zero.item() == 0


def test_nan_score_gives_nan_loss(device, gen):
    scores, relevance, _ = inputs(4, 10, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    scores[2, 5] = float("nan")
    s = scores.clone().requires_grad_()
    per_row = ik.smooth_ndcg_loss(s, relevance, reduction="none")
    per_row.sum().backward()
    assert torch.isnan(per_row[2]) and torch.isfinite(per_row[[0, 1, 3]]).all()
    assert torch.isnan(s.grad[2]).all() and torch.isfinite(s.grad[[0, 1, 3]]).all()
    assert torch.isnan(ik.smooth_ndcg_loss(scores, relevance))


def test_gradcheck(device, gen):
    scores, relevance, valid = inputs(3, 6, gen, masked=True, spread=0.05)
    scores, relevance, valid = scores.to(device).requires_grad_(), relevance.to(device), valid.to(device)
    for kw in (dict(), dict(k=2, valid=valid), dict(gain="linear", reduction="sum")):
        assert torch.autograd.gradcheck(lambda s: ik.smooth_ndcg_loss(s, relevance, tau=0.02, **kw), (scores,))


def test_non_contiguous(device, gen):
    scores, relevance, _ = inputs(20, 30, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    torch.testing.assert_close(ik.smooth_ndcg_loss(scores.T, relevance.T, reduction="none"),
                               ref.smooth_ndcg_loss(scores.T.contiguous(), relevance.T.contiguous(), reduction="none"),
                               **F64)


def test_no_grad_path_equals_grad_path(device, gen):
    scores, relevance, _ = inputs(7, 33, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    with torch.no_grad():
        a = ik.smooth_ndcg_loss(scores, relevance, reduction="none")
    b = ik.smooth_ndcg_loss(scores.clone().requires_grad_(), relevance, reduction="none")
    assert torch.equal(a, b.detach())


INF = float("inf")


def ndcg_truth(scores, relevance, tau, valid):
    """float64 per-row loss 1 - DCG / IDCG (exp gain, every valid candidate in the gain set) and its
    gradient, from the pair-by-pair smooth rank of helpers.py: d loss / d Rhat_j =
    g_j / (IDCG ln2 (1 + Rhat_j) log2(1 + Rhat_j)^2), then the smooth rank's backward."""
    rel = relevance.double()
    gains = torch.where(valid, torch.exp2(rel) - 1, 0)
    rhat = smooth_rank_truth(scores, tau, valid)
    ideal = gains.sort(dim=1, descending=True).values
    idcg = (ideal / torch.log2(torch.arange(2, ideal.shape[1] + 2, dtype=torch.float64))).sum(dim=1)
    one = torch.where(valid, rhat, 1)  # masked: any rank, gain 0
    dcg = (gains / torch.log2(1 + one)).sum(dim=1)
    coef = gains / (idcg.unsqueeze(1) * math.log(2) * (1 + one) * torch.log2(1 + one) ** 2)
    return 1 - dcg / idcg, smooth_rank_grad_truth(scores, tau, coef, valid)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_infinite_scores(dtype, device, gen):
    """Smooth-NDCG of rows with +-inf scores (next to masked candidates, or two equal infinities,
    whose pair is NaN) against the float64 truth: finite where the math is."""
    scores = torch.tensor([[0.1, INF, 0.3, 0.2], [0.1, -INF, 0.3, 0.2], [INF, -INF, 0.2, 0.5],
                           [-INF, 0.2, 0.7, -INF], [INF, 0.4, INF, -0.3]], dtype=dtype)
    valid = torch.tensor([[True, True, True, False], [True] * 4, [True] * 4, [True, True, True, False], [True] * 4])
    relevance = 0.1 + 0.9 * torch.rand(scores.shape, generator=gen, dtype=torch.float64)
    truth, truth_grad = ndcg_truth(scores, relevance.to(dtype), 0.1, valid)
    assert torch.isfinite(truth[:4]).all() and torch.isnan(truth[4])
    loss, grad = run(ik.smooth_ndcg_loss, scores.to(device), relevance.to(dtype).to(device), tau=0.1,
                     valid=valid.to(device), reduction="none")
    rtol = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(loss.double().cpu(), truth, rtol=rtol, atol=rtol, equal_nan=True)
    torch.testing.assert_close(grad.double().cpu(), truth_grad, rtol=rtol, atol=rtol, equal_nan=True)


@pytest.mark.parametrize("k", [None, 1])
@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_masked_candidates_add_exactly_nothing(dtype, k, device, gen):
    """One valid candidate among masked ones: rank 1 = ideal rank, so loss exactly 0 and gradient
    exactly 0 (masked pair terms are 0, not a clamped 2^-64 times the coefficient)."""
    q, n = 3, 40
    scores = torch.randn(q, n, generator=gen, dtype=torch.float64).to(dtype).to(device)
    relevance = torch.rand(q, n, generator=gen, dtype=torch.float64).to(device)
    valid = torch.zeros(q, n, dtype=torch.bool, device=device)
    valid[0, 7] = valid[1, 0] = valid[2, n - 1] = True
    relevance[valid] = 1.0
    for tau in (0.01, 1.0):
        loss, grad = run(ik.smooth_ndcg_loss, scores, relevance, tau=tau, k=k, valid=valid, reduction="none")
        assert torch.all(loss == 0) and torch.all(grad == 0), (loss, grad[valid])


def test_relevance_order_nan_last_and_masked_after_minus_inf(device):
    """The gain set is the first k of: valid candidates by relevance descending (NaN last, ties to
    the lower column), then masked ones. Row 0: NaN is not among the top 2 ({2, 0}); row 1: the valid
    -inf candidate 2 is among the top 3, not the masked column 0. Written out by hand."""
    def sig(x):
        return 1 / (1 + math.exp(-x))
    tau = 0.1
    s = [0.3, 0.1, 0.2, 0.4]
    scores = torch.tensor([s, s], dtype=torch.float64, device=device)
    relevance = torch.tensor([[0.5, float("nan"), 1.0, 0.25], [0.0, 1.0, -INF, 0.5]], dtype=torch.float64,
                             device=device)
    valid = torch.tensor([[True] * 4, [False, True, True, True]], device=device)

    def rank(j, cols):
        return 1 + sum(sig((s[c] - s[j]) / tau) for c in cols if c != j)
    # row 0, k = 2: gain set {2, 0}, linear gain
    idcg0 = 1.0 / math.log2(2) + 0.5 / math.log2(3)
    dcg0 = 1.0 / math.log2(1 + rank(2, range(4))) + 0.5 / math.log2(1 + rank(0, range(4)))
    # row 1, k = 3: gain set {1, 3, 2}, exp gain (2^-inf - 1 = -1 for the -inf candidate)
    g = {1: 1.0, 3: 2 ** 0.5 - 1, 2: -1.0}
    idcg1 = g[1] / math.log2(2) + g[3] / math.log2(3) + g[2] / math.log2(4)
    dcg1 = sum(g[j] / math.log2(1 + rank(j, [1, 2, 3])) for j in g)
    loss0 = ik.smooth_ndcg_loss(scores[:1], relevance[:1], tau=tau, k=2, gain="linear", reduction="none")
    loss1 = ik.smooth_ndcg_loss(scores[1:], relevance[1:], tau=tau, k=3, valid=valid[1:], reduction="none")
    assert loss0.item() == pytest.approx(1 - dcg0 / idcg0, rel=1e-12)
    assert loss1.item() == pytest.approx(1 - dcg1 / idcg1, rel=1e-12)
