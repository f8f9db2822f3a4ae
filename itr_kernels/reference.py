"""Pure-PyTorch reference of every public function, with the same signatures: the SPEC written as
tensor code, materialising the (Q, N, N) pair tensors that the kernels avoid. Used by the tests
(in float64 as the truth) and by bench/compare.py (eager and torch.compile)."""
import sys

import torch

from . import _validate as check
from . import modules
from .losses import GAINS, REDUCTIONS, reduce_rows


def _valid_or_all(valid, scores):
    return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid


def smooth_rank(scores, tau=0.01, valid=None):
    check.scores(scores)
    check.positive(tau, "tau")
    check.valid(valid, scores)
    valid = _valid_or_all(valid, scores)
    s = torch.where(valid, scores, 0)  # masked scores (even NaN) must not reach the gradient
    diff = (s.unsqueeze(1) - s.unsqueeze(2)) / tau  # [q, j, k] = (S[q,k] - S[q,j]) / tau
    n = scores.shape[1]
    counted = valid.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=scores.device)  # k valid, k != j
    rhat = 1 + torch.where(counted, torch.sigmoid(diff), 0).sum(dim=-1)
    return torch.where(valid, rhat, 0)


def smooth_ndcg_loss(scores, relevance, tau=0.01, k=None, gain="exp", valid=None, reduction="mean"):
    check.scores(scores)
    check.relevance(relevance, scores)
    check.positive(tau, "tau")
    check.top_k(k)
    check.choice(gain, "gain", GAINS)
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)
    valid = _valid_or_all(valid, scores)
    rel = relevance.to(scores.dtype)
    gains = rel if gain == "linear" else torch.exp2(rel) - 1
    n = scores.shape[1]
    # Gain set: the k most relevant valid candidates, ties to the lower column (a stable sort).
    order = torch.sort(torch.where(valid, rel, -torch.inf), dim=1, descending=True, stable=True).indices
    position = torch.arange(n, device=scores.device)
    set_size = valid.sum(dim=1, keepdim=True)
    if k is not None:
        set_size = set_size.clamp(max=k)
    in_set_sorted = position < set_size
    in_set = torch.zeros_like(valid).scatter(1, order, in_set_sorted)
    # Gains are monotone in relevance, so the sorted order is also the ideal order.
    ideal_gains = torch.where(in_set_sorted, gains.gather(1, order), 0)
    ideal_ranks = torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)
    idcg = (ideal_gains / torch.log2(1 + ideal_ranks)).sum(dim=1)
    rhat = torch.where(in_set, smooth_rank(scores, tau, valid), 1)
    dcg = torch.where(in_set, gains / torch.log2(1 + rhat), 0).sum(dim=1)
    has_gain = idcg > 0
    loss = torch.where(has_gain, 1 - dcg / torch.where(has_gain, idcg, 1), 0)
    return reduce_rows(loss, has_gain, reduction)


def triplet_loss(scores, margin=0.2, max_violation=True, reduction="mean"):
    check.square(scores)
    check.finite(margin, "margin")
    check.choice(reduction, "reduction", REDUCTIONS)
    negatives = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    per_direction = []
    for m in (scores, scores.T):  # image-to-text rows, then text-to-image rows
        hinge = torch.where(negatives, (margin + m - m.diagonal().unsqueeze(1)).clamp(min=0), 0)
        per_direction.append(hinge.amax(dim=1) if max_violation else hinge.sum(dim=1))
    return reduce_rows(torch.stack(per_direction), None, reduction)


class SmoothNDCGLoss(modules.SmoothNDCGLoss):
    impl = sys.modules[__name__]


class ListwiseITRLoss(modules.ListwiseITRLoss):
    impl = sys.modules[__name__]
