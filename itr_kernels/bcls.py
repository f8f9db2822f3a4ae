"""BCLS losses (SPEC section 5) and the ranking losses that share their kernels (section 6):
Triplet-SN, the Kendall ranking loss (full pair form or SW-HS sampling), RankNet, Smooth-AP, ListNet.
The definitions are this project's reading of the BCLS abstract (no code was published)."""
import torch

from . import _validate as check
from . import _ops
from .losses import REDUCTIONS, reduce_rows, smooth_rank

PHIS = ("hinge", "logistic", "tanh")
SAMPLINGS = ("full", "swhs")
DEFAULT_GAP = {"full": 0.3, "swhs": 0.0}  # SPEC: ITM_CLS RCLoss for full; SW-HS windows do the filtering


def phi_value(x, phi, margin, temperature):
    """The Kendall surrogate phi(x) on x = S[k] - S[j] (j the more relevant), as the kernels'
    phi_value (csrc/include/itr_kernels/bcls_math.h) computes it: no gradient at the hinge's kink
    (NaN stays NaN), softplus exact at any x / T (F.softplus is linear past x / T = 20, 2e-9 off),
    and (1 + tanh(u)) / 2 as sigmoid(2u), without cancellation near -1."""
    if phi == "hinge":
        y = margin + x
        return torch.where(y <= 0, 0, y)
    if phi == "logistic":
        return temperature * torch.logaddexp(torch.zeros_like(x), x / temperature)
    return torch.sigmoid(2 * x / temperature)


def _kendall_args(scores, relevance, gap, phi, margin, temperature, sampling, window, stride, valid, reduction):
    check.scores(scores)
    check.relevance(relevance, scores)
    check.choice(phi, "phi", PHIS)
    check.choice(sampling, "sampling", SAMPLINGS)
    gap = DEFAULT_GAP[sampling] if gap is None else gap
    check.non_negative(gap, "gap")
    check.finite(margin, "margin")
    check.positive(temperature, "temperature")
    check.positive_int(window, "window")
    stride = window if stride is None else stride
    check.positive_int(stride, "stride")
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)
    return float(gap), int(stride)


def _triplet_sn_args(scores, relevance, margin, temperature, rho, reduction, positives=None):
    if positives is None:
        check.square(scores)
    else:
        check.scores(scores)
        check.positive_columns(positives, scores)
    if relevance is not None:
        check.relevance(relevance, scores)
    check.finite(margin, "margin")
    check.positive(temperature, "temperature")
    check.rho(rho)
    check.choice(reduction, "reduction", REDUCTIONS)


def triplet_sn_loss(scores, relevance=None, margin=0.2, temperature=0.01, rho=1.0, reduction="mean", positives=None):
    """Triplet loss with soft negative mining on a square in-batch matrix (diagonal = positives):
    per query ``T * log(1 + sum_{j in Neg} exp((m + S[q,j] - S[q,p]) / T))`` with
    ``Neg = {j != p : R[q,j] < rho}`` (every j != p without relevance, whatever rho; rho = +inf
    keeps them all), both directions from one pass over S (the text-to-image direction uses
    relevance.T). "none" gives (2, B) [image-to-text, text-to-image]; "mean" averages each
    direction, then the two. Values and gradients keep their relative accuracy as T -> 0, the
    VSE++ max-violation limit.

    positives: the column of each row's positive, for rectangular (Q, N) scores (local rows against
    a global batch); then only the rows are queries ("none" gives (Q,)), in O(Q·N) memory."""
    _triplet_sn_args(scores, relevance, margin, temperature, rho, reduction, positives)
    if positives is not None:
        return reduce_rows(_triplet_sn_rows(scores, relevance, margin, temperature, rho, positives), None, reduction)
    loss, _ = _ops.ops.triplet_sn(scores, relevance, float(margin), float(temperature), float(rho))
    return reduce_rows(loss, None, reduction)


def _triplet_sn_rows(scores, relevance, margin, temperature, rho, positives):
    """Triplet-SN of the rows of (Q, N) scores, in the kernels' form (csrc/include/itr_kernels/
    bcls_math.h): exponents from score differences, (S_j - shift) / T with the shift the row's
    largest negative score (held constant: the loss does not depend on it), and the positive's own
    term's exponent (S_p - m - shift) / T in float64 with S_p - shift exact, so that neither carries
    the eps * |S| / T rounding of (m + S_j - S_p) / T. Then L = T softplus(log(neg) - x_p)."""
    acc = torch.float64 if scores.dtype == torch.float64 else torch.float32
    s = scores.to(acc)
    col = positives.long()[:, None]
    pos = s.gather(1, col)
    negative = torch.ones_like(s, dtype=torch.bool).scatter(1, col, False)
    if relevance is not None:
        negative &= relevance < rho
    shift = torch.where(negative, s, -torch.inf).amax(dim=1, keepdim=True).detach()
    shift = torch.where(pos.isnan() & negative.any(dim=1, keepdim=True), torch.nan, shift)  # NaN enters every term
    finite = shift.isfinite()
    c = torch.where(finite, shift, 0)
    neg = torch.exp(torch.where(negative, (s - c) / temperature, -torch.inf)).sum(dim=1, keepdim=True).double()
    # (S_p - c) - m with S_p - c exact (TwoSum: d + err); err is a constant correction
    p64, c64 = pos.double(), c.double()
    d = p64 - c64
    bv = (d - p64).detach()
    err = torch.where(d.isfinite(), (p64.detach() - (d.detach() - bv)) + (-c64 - bv), 0)
    x = ((d - margin) + err) / temperature
    has = neg > 0
    # softplus is z itself above its threshold: 50 keeps the dropped log1p(e^-z) below 1e-21 of z
    loss = torch.where(has, temperature * F.softplus(torch.log(torch.where(has, neg, 1)) - x, threshold=50), 0)
    # a negative at +inf: +inf (NaN if the positive is +inf too); a NaN shift: NaN
    special = torch.where((shift == torch.inf) & (pos < torch.inf), torch.inf, torch.nan).to(loss.dtype)
    loss = torch.where(finite | (shift == -torch.inf), loss, special)
    return loss.squeeze(1).to(scores.dtype)


def kendall_loss(scores, relevance, gap=None, phi="hinge", margin=0.0, temperature=0.01, sampling="full", window=8,
                 stride=None, valid=None, reduction="mean"):
    """Kendall ranking loss: ``phi(S[q,k] - S[q,j])`` over pairs with ``R[q,j] - R[q,k] > gap``.

    sampling "full": every such pair, O(Q*N) memory (gap default 0.3). "swhs": sliding windows of
    `window` positions (stride `stride`, default `window`) over each row sorted by relevance; each
    upper/lower window pair whose relevance gap exceeds `gap` (default 0) contributes its hardest
    pair only. "mean" divides by the total pair (term) count; "none" gives per-row sums.

    The per-row sums and the reduction run in the accumulator dtype (float32 for float16 / bfloat16,
    else the scores' dtype); the result is then cast to the scores' dtype. A NaN score in a pair
    (full) or a kept window pair (swhs: a NaN is the hardest of its window) makes its row NaN."""
    gap, stride = _kendall_args(scores, relevance, gap, phi, margin, temperature, sampling, window, stride, valid,
                                reduction)
    if sampling == "full":
        compute_grad = torch.is_grad_enabled() and scores.requires_grad
        sums, counts, _ = _ops.ops.kendall_full(scores, relevance, valid, gap, PHIS.index(phi), float(margin),
                                           float(temperature), compute_grad)
        return reduce_rows(sums, counts, reduction).to(scores.dtype)
    upper, lower, keep = _ops.ops.kendall_swhs(scores, relevance, valid, int(window), stride, gap)
    acc = _ops._acc_dtype(scores)
    # x is zeroed where a step is not kept before phi, not only the term after it: a dropped step may
    # read a NaN (or a masked column, for steps past a short row), and 0 * phi'(NaN) would be NaN.
    x = torch.where(keep, scores.gather(1, lower).to(acc) - scores.gather(1, upper).to(acc), 0)
    terms = torch.where(keep, phi_value(x, phi, margin, temperature), 0)
    return reduce_rows(terms.sum(dim=1), keep.sum(dim=1), reduction).to(scores.dtype)


def ranknet_loss(scores, relevance, gap=0.0, temperature=1.0, valid=None, reduction="mean"):
    """RankNet: the full Kendall form with the logistic surrogate ``T * softplus(x / T)``."""
    return kendall_loss(scores, relevance, gap, "logistic", 0.0, temperature, "full", valid=valid, reduction=reduction)


def smooth_ap_loss(scores, positives, tau=0.01, valid=None, reduction="mean"):
    """Smooth-AP: ``1 - mean_q (1/|P_q|) sum_{i in P_q} Rhat_P(i) / Rhat(i)``, with Rhat the smooth
    rank among all valid candidates and Rhat_P among the positives. Rows without positives: loss 0,
    not counted by "mean"."""
    return _smooth_ap(smooth_rank, scores, positives, tau, valid, reduction)


def _smooth_ap_args(scores, positives, tau, valid, reduction):
    check.scores(scores)
    check.like_scores(positives, scores, "positives")
    if positives.dtype != torch.bool:
        raise TypeError(f"positives must be a bool tensor, got {positives.dtype}")
    check.positive(tau, "tau")
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)


def _smooth_ap(rank_fn, scores, positives, tau, valid, reduction):
    _smooth_ap_args(scores, positives, tau, valid, reduction)
    pos = positives if valid is None else positives & valid
    rank_all = rank_fn(scores, tau, valid)
    rank_pos = rank_fn(scores, tau, pos)
    n_pos = pos.sum(dim=1)
    ratio = torch.where(pos, rank_pos / torch.where(pos, rank_all, 1), 0).sum(dim=1)
    loss = torch.where(n_pos > 0, 1 - ratio / n_pos.clamp(min=1), 0)
    return reduce_rows(loss, n_pos > 0, reduction)


def _listnet_args(scores, relevance, temperature, valid, reduction):
    check.scores(scores)
    check.relevance(relevance, scores)
    check.positive(temperature, "temperature")
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)


def listnet_loss(scores, relevance, temperature=1.0, valid=None, reduction="mean"):
    """ListNet: cross-entropy ``-sum_j p_j log q_j`` between the top-one distributions
    p = softmax(R) and q = softmax(S / T) over the valid candidates (a term with p_j = 0 is 0);
    a row without valid candidates has loss 0 and is not counted by "mean". O(Q*N), plain tensor
    code."""
    _listnet_args(scores, relevance, temperature, valid, reduction)
    logits = scores / temperature
    target = relevance.to(scores.dtype)
    counted = None
    if valid is not None:
        # A row without valid candidates softmaxes a finite stand-in (0s): no NaN in its value or gradient.
        counted = valid.any(dim=1, keepdim=True)
        logits = torch.where(valid, logits, -torch.inf).where(counted, 0)
        target = torch.where(valid, target, -torch.inf).where(counted, 0)
    log_q = torch.log_softmax(logits, dim=1)
    p = torch.softmax(target, dim=1)
    keep = p != 0 if valid is None else (p != 0) & valid   # masked (and p = 0) terms are 0, even at log q = -inf
    loss = -torch.where(keep, p * torch.where(keep, log_q, 0), 0).sum(dim=1)
    if counted is None:
        return reduce_rows(loss, None, reduction)
    return reduce_rows(torch.where(counted.squeeze(1), loss, 0), counted.squeeze(1), reduction)
