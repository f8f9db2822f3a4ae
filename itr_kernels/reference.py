"""Pure-PyTorch reference of every public function, with the same signatures: the SPEC written as
tensor code, materialising the (Q, N, N) pair tensors that the kernels avoid. Used by the tests
(in float64 as the truth) and by bench/compare.py (eager and torch.compile)."""
import sys

import torch

from . import _validate as check
from . import bcls, composed, modules
from ._ops import swhs_steps
from .bcls import listnet_loss  # noqa: F401  (already plain tensor code: O(Q*N), nothing to fuse)
from .bcls import phi_value
from .losses import _infonce_args, _smooth_ndcg_args, _smooth_rank_args, _triplet_args, reduce_rows


def _valid_or_all(valid, scores):
    return torch.ones_like(scores, dtype=torch.bool) if valid is None else valid


def smooth_rank(scores, tau=0.01, valid=None):
    _smooth_rank_args(scores, tau, valid)
    valid = _valid_or_all(valid, scores)
    s = torch.where(valid, scores, 0)  # masked scores (even NaN) must not reach the gradient
    diff = (s.unsqueeze(1) - s.unsqueeze(2)) / tau  # [q, j, k] = (S[q,k] - S[q,j]) / tau
    n = scores.shape[1]
    counted = valid.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=scores.device)  # k valid, k != j
    rhat = 1 + torch.where(counted, torch.sigmoid(diff), 0).sum(dim=-1)
    return torch.where(valid, rhat, 0)


def smooth_ndcg_loss(scores, relevance, tau=0.01, k=None, gain="exp", valid=None, reduction="mean"):
    _smooth_ndcg_args(scores, relevance, tau, k, gain, valid, reduction)
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


def _positive_mask(scores, positives):
    return torch.arange(scores.shape[1], device=scores.device)[None, :] == positives[:, None]


def triplet_loss(scores, margin=0.2, max_violation=True, reduction="mean", positives=None):
    _triplet_args(scores, margin, reduction, positives)
    if positives is not None:   # rows only, explicit positive columns
        is_pos = _positive_mask(scores, positives)
        pos = (scores * is_pos).sum(dim=1, keepdim=True)
        hinge = torch.where(is_pos, 0, (margin + scores - pos).clamp(min=0))
        return reduce_rows(hinge.amax(dim=1) if max_violation else hinge.sum(dim=1), None, reduction)
    negatives = ~torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
    per_direction = []
    for m in (scores, scores.T):  # image-to-text rows, then text-to-image rows
        hinge = torch.where(negatives, (margin + m - m.diagonal().unsqueeze(1)).clamp(min=0), 0)
        per_direction.append(hinge.amax(dim=1) if max_violation else hinge.sum(dim=1))
    return reduce_rows(torch.stack(per_direction), None, reduction)


def infonce_loss(scores, temperature=0.05, reduction="mean", positives=None):
    _infonce_args(scores, temperature, reduction, positives)
    if positives is not None:   # rows only: cross-entropy of each row against its positive column
        return reduce_rows(torch.nn.functional.cross_entropy(scores / temperature, positives.long(), reduction="none"),
                           None, reduction)
    target = torch.arange(scores.shape[0], device=scores.device)
    per_direction = [torch.nn.functional.cross_entropy(m / temperature, target, reduction="none")
                     for m in (scores, scores.T)]   # image-to-text rows, then text-to-image rows
    return reduce_rows(torch.stack(per_direction), None, reduction)


def triplet_sn_loss(scores, relevance=None, margin=0.2, temperature=0.01, rho=1.0, reduction="mean", positives=None):
    bcls._triplet_sn_args(scores, relevance, margin, temperature, rho, reduction, positives)
    if positives is not None:   # rows only: sum over negatives of exp, then log1p
        is_pos = _positive_mask(scores, positives)
        negatives = ~is_pos if relevance is None else ~is_pos & (relevance < rho)
        pos = (scores * is_pos).sum(dim=1, keepdim=True)
        e = torch.where(negatives, torch.exp((margin + scores - pos) / temperature), 0)
        return reduce_rows(temperature * torch.log1p(e.sum(dim=1)), None, reduction)
    b = scores.shape[0]
    others = ~torch.eye(b, dtype=torch.bool, device=scores.device)
    zero = scores.new_zeros(b, 1)
    per_direction = []
    for m, r in ((scores, relevance), (scores.T, None if relevance is None else relevance.T)):
        negatives = others if r is None else others & (r < rho)
        x = torch.where(negatives, (margin + m - m.diagonal().unsqueeze(1)) / temperature, -torch.inf)
        per_direction.append(temperature * torch.logsumexp(torch.cat([zero, x], dim=1), dim=1))  # log(1 + sum e^x)
    return reduce_rows(torch.stack(per_direction), None, reduction)


def kendall_loss(scores, relevance, gap=None, phi="hinge", margin=0.0, temperature=0.01, sampling="full", window=8,
                 stride=None, valid=None, reduction="mean"):
    gap, stride = bcls._kendall_args(scores, relevance, gap, phi, margin, temperature, sampling, window, stride,
                                     valid, reduction)
    valid = _valid_or_all(valid, scores)
    rel = relevance.to(scores.dtype)
    s = torch.where(valid, scores, 0)
    if sampling == "full":
        in_pairs = (rel.unsqueeze(2) - rel.unsqueeze(1) > gap) & valid.unsqueeze(2) & valid.unsqueeze(1)  # [q, j, k]
        terms = torch.where(in_pairs, phi_value(s.unsqueeze(1) - s.unsqueeze(2), phi, margin, temperature), 0)
        return reduce_rows(terms.sum(dim=(1, 2)), in_pairs.sum(dim=(1, 2)), reduction)
    n = scores.shape[1]
    order = torch.sort(torch.where(valid, rel, -torch.inf), dim=1, descending=True, stable=True).indices
    n_valid = valid.sum(dim=1, keepdim=True)
    s_sorted, r_sorted = s.gather(1, order), rel.gather(1, order)
    position = torch.arange(n, device=scores.device)
    sums, counts = scores.new_zeros(scores.shape[0]), torch.zeros_like(n_valid.squeeze(1))
    for t in range(swhs_steps(n, window, stride)):
        u0, l0 = t * stride, t * stride + window
        in_u = (position >= u0) & (position < u0 + window) & (position < n_valid)
        in_l = (position >= l0) & (position < l0 + window) & (position < n_valid)
        # Hardest pair: lowest score in the upper window, highest in the lower; ties to the lower column.
        low = torch.where(in_u, s_sorted, torch.inf).amin(dim=1, keepdim=True)
        high = torch.where(in_l, s_sorted, -torch.inf).amax(dim=1, keepdim=True)
        a = torch.where(in_u & (s_sorted == low), order, n).amin(dim=1, keepdim=True).clamp(max=n - 1)
        b = torch.where(in_l & (s_sorted == high), order, n).amin(dim=1, keepdim=True).clamp(max=n - 1)
        last_upper = (torch.minimum(n_valid, torch.tensor(u0 + window)) - 1).clamp(min=0)
        first_lower = torch.full_like(last_upper, min(l0, n - 1))
        keep = (l0 < n_valid) & (r_sorted.gather(1, last_upper) - r_sorted.gather(1, first_lower) > gap)
        term = phi_value(scores.gather(1, b) - scores.gather(1, a), phi, margin, temperature)
        sums = sums + torch.where(keep, term, 0).squeeze(1)
        counts = counts + keep.squeeze(1)
    return reduce_rows(sums, counts, reduction)


def ranknet_loss(scores, relevance, gap=0.0, temperature=1.0, valid=None, reduction="mean"):
    return kendall_loss(scores, relevance, gap, "logistic", 0.0, temperature, "full", valid=valid, reduction=reduction)


def smooth_ap_loss(scores, positives, tau=0.01, valid=None, reduction="mean"):
    return bcls._smooth_ap(smooth_rank, scores, positives, tau, valid, reduction)


class SmoothNDCGLoss(modules.SmoothNDCGLoss):
    impl = sys.modules[__name__]


class ListwiseITRLoss(modules.ListwiseITRLoss):
    impl = sys.modules[__name__]


class TripletLoss(modules.TripletLoss):
    impl = sys.modules[__name__]


class InfoNCELoss(modules.InfoNCELoss):
    impl = sys.modules[__name__]


class TripletSNLoss(modules.TripletSNLoss):
    impl = sys.modules[__name__]


class KendallRankLoss(modules.KendallRankLoss):
    impl = sys.modules[__name__]


class BCLSLoss(modules.BCLSLoss):
    impl = sys.modules[__name__]


class TripletSNITRLoss(composed.TripletSNITRLoss):
    impl = sys.modules[__name__]


class ContinuousLabelLoss(composed.ContinuousLabelLoss):
    parts = sys.modules[__name__]
