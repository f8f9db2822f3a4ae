import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import F64, cosine_scores


def brute_force_triplet(scores, margin, max_violation):
    """VSE++ written as loops: per image row and per caption column."""
    b = scores.shape[0]
    rows = []
    for direction in range(2):
        per_query = []
        for i in range(b):
            hinges = [max(0.0, margin + (scores[i, j] if direction == 0 else scores[j, i]) - scores[i, i])
                      for j in range(b) if j != i]
            per_query.append((max(hinges) if max_violation else sum(hinges)) if hinges else 0.0)
        rows.append(per_query)
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("b", [1, 2, 7])
@pytest.mark.parametrize("max_violation", [True, False])
def test_triplet_brute_force(b, max_violation, device, gen):
    scores = cosine_scores(b, b, gen).to(device)
    expected = brute_force_triplet(scores.cpu(), 0.2, max_violation)
    for impl in (ik, ref):
        per_row = impl.triplet_loss(scores, 0.2, max_violation, reduction="none")
        torch.testing.assert_close(per_row.cpu(), expected, **F64)
        torch.testing.assert_close(impl.triplet_loss(scores, 0.2, max_violation), expected.mean().to(device), **F64)
        torch.testing.assert_close(impl.triplet_loss(scores, 0.2, max_violation, "sum"), expected.sum().to(device), **F64)


def test_triplet_gradients_match(device, gen):
    scores = cosine_scores(33, 33, gen).to(device)
    grads = []
    for impl in (ik, ref):
        s = scores.clone().requires_grad_()
        impl.triplet_loss(s).backward()
        grads.append(s.grad)
    torch.testing.assert_close(*grads, **F64)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kw", [dict(), dict(k=5, gain="linear"), dict(weight=1.0, triplet_reduction="sum"),
                                dict(weight=0.0, max_violation=False)])
def test_listwise_matches_reference(kw, dtype, device, gen):
    b = 48
    scores = cosine_scores(b, b, gen).to(device, dtype)
    r_i2t = torch.rand(b, b, generator=gen, dtype=torch.float64).to(device, dtype)
    r_t2i = torch.rand(b, b, generator=gen, dtype=torch.float64).to(device, dtype)
    outs, grads = [], []
    for module in (ik.ListwiseITRLoss(**kw), ref.ListwiseITRLoss(**kw)):
        s = scores.clone().requires_grad_()
        loss = module(s, r_i2t, r_t2i)
        loss.backward()
        outs.append(loss.detach())
        grads.append(s.grad)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[0], outs[1], **tol)
    torch.testing.assert_close(grads[0], grads[1], **({"rtol": 1e-8, "atol": 1e-10} if dtype == torch.float64
                                                      else {"rtol": 1e-4, "atol": 1e-5}))


def test_listwise_composition(device, gen):
    """The module is (1 - w) * triplet + w * mean of the two directions, t2i relevance = i2t.T."""
    b = 20
    scores = cosine_scores(b, b, gen).to(device)
    rel = torch.rand(b, b, generator=gen, dtype=torch.float64).to(device)
    loss = ik.ListwiseITRLoss(margin=0.1, tau=0.05, weight=0.3)(scores, rel)
    expected = (0.7 * ik.triplet_loss(scores, 0.1)
                + 0.3 * (ik.smooth_ndcg_loss(scores, rel, 0.05) + ik.smooth_ndcg_loss(scores.T, rel.T, 0.05)) / 2)
    torch.testing.assert_close(loss, expected, **F64)


def test_smooth_ndcg_module(device, gen):
    scores = cosine_scores(10, 30, gen).to(device)
    rel = torch.rand(10, 30, generator=gen, dtype=torch.float64).to(device)
    module = ik.SmoothNDCGLoss(tau=0.05, k=7, reduction="none")
    torch.testing.assert_close(module(scores, rel), ref.SmoothNDCGLoss(tau=0.05, k=7, reduction="none")(scores, rel),
                               **F64)
    assert "k=7" in repr(module)
