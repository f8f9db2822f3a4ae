import math

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
    scores64, relevance, valid = inputs(q, n, gen, masked)
    scores64, relevance = scores64.to(device), relevance.to(device)
    valid = None if valid is None else valid.to(device)
    scores, rel = scores64.to(dtype), relevance.to(dtype)
    kw = dict(tau=tau, valid=valid, reduction="none")
    truth, truth_grad = run(ref.smooth_ndcg_loss, scores.double(), rel.double(), **kw)
    loss, grad = run(ik.smooth_ndcg_loss, scores, rel, **kw)
    assert loss.dtype == dtype and grad.dtype == dtype and loss.shape == (q,)
    same_loss = same_grad = None
    if dtype in (torch.float16, torch.bfloat16):
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
