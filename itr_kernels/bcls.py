"""BCLS losses and the ranking losses that share their kernels (docs/bcls.md; Smooth-AP:
docs/smooth_rank_ndcg.md §3): Triplet-SN, the Kendall ranking loss (full pair form or SW-HS
sampling), RankNet, Smooth-AP, ListNet. The BCLS definitions are this project's reading of the
BCLS abstract (Li et al., arXiv:2210.11319; no code was published)."""
import torch
import torch.nn.functional as F

from . import _validate as check
from . import _ops
from .losses import REDUCTIONS, Reducer, reduce_rows, smooth_rank

PHIS = ("hinge", "logistic", "tanh")
SAMPLINGS = ("full", "swhs")
DEFAULT_GAP = {"full": 0.3, "swhs": 0.0}  # docs/bcls.md §2: ITM_CLS RCLoss for full; SW-HS windows do the filtering


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
    # sigmoid(z) as 1 - sigmoid(-z) for z > 0: the same value, but autograd's sigma * (1 - sigma) then
    # multiplies the small sigmoid(-z) by ~1 instead of rounding 1 - sigma (float32 lost ~3e-4 of the
    # gradient at z ~ 8), as the kernels' phi_grad avoids it
    z = 2 * x / temperature
    return torch.where(z > 0, 1 - torch.sigmoid(-z), torch.sigmoid(z))


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


def triplet_sn_loss(scores: torch.Tensor, relevance: torch.Tensor | None = None, margin: float = 0.2,
                    temperature: float = 0.01, rho: float = 1.0, reduction: str = "mean",
                    positives: torch.Tensor | None = None, *,
                    reducer: Reducer | None = None) -> torch.Tensor:
    """Triplet loss with soft negative mining (Triplet-SN, docs/bcls.md §1), both directions.

    Per query ``T * log(1 + sum_{j in Neg} exp((m + S[q,j] - S[q,p]) / T))`` with
    ``Neg = {j != p : R[q,j] < rho}`` (every ``j != p`` without relevance), both directions from
    one pass over a square S (the text-to-image direction uses relevance.T). Values and gradients
    keep their relative accuracy as T -> 0, the VSE++ max-violation limit.

    Args:
        scores: (B, B) in-batch scores (positives on the diagonal), or (Q, N) rows against a global
            batch with ``positives``.
        relevance: optional relevance of the shape of ``scores``; with it only candidates of
            relevance ``< rho`` are negatives.
        margin: the margin m (finite).
        temperature: T > 0 of the log-sum-exp (T -> 0 gives the VSE++ max-violation hinge).
        rho: the negative threshold (strict); ``inf`` keeps every ``j != p``; ignored without
            relevance.
        reduction: ``"mean"`` (each direction's mean, then their average), ``"sum"`` or ``"none"``.
        positives: (Q,) integer column of each row's positive, for rectangular scores; then only
            the rows are queries, in O(Q·N) memory.
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (2, B) [image-to-text, text-to-image], or (Q,) with positives. Else a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s = torch.randn(6, 6)
        >>> triplet_sn_loss(s, torch.eye(6), temperature=0.05).shape
        torch.Size([])
    """
    _triplet_sn_args(scores, relevance, margin, temperature, rho, reduction, positives)
    if positives is not None:
        return reduce_rows(_triplet_sn_rows(scores, relevance, margin, temperature, rho, positives), None, reduction,
                           reducer)
    loss, _ = _ops.ops.triplet_sn(scores, relevance, float(margin), float(temperature), float(rho))
    return reduce_rows(loss, None, reduction, reducer)


def _triplet_sn_rows(scores, relevance, margin, temperature, rho, positives):
    """Triplet-SN of the rows of (Q, N) scores, in the kernels' form (csrc/include/itr_kernels/
    bcls_math.h): exponents from score differences, (S_j - shift) / T with the shift the row's
    largest negative score (held constant: the loss does not depend on it), and the positive's own
    term's exponent (S_p - m - shift) / T in float64 with S_p - shift exact, so that neither carries
    the eps * |S| / T rounding of (m + S_j - S_p) / T. Then L = T softplus(log(neg) - x_p)."""
    if scores.shape[1] == 0:   # (0, 0): no row (amax over no column would raise)
        return scores.sum(dim=1)
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


def kendall_loss(scores: torch.Tensor, relevance: torch.Tensor, gap: float | None = None, phi: str = "hinge",
                 margin: float = 0.0, temperature: float = 0.01, sampling: str = "full", window: int = 8,
                 stride: int | None = None, valid: torch.Tensor | None = None, reduction: str = "mean", *,
                 reducer: Reducer | None = None) -> torch.Tensor:
    """Kendall ranking loss (docs/bcls.md §2): ``phi(S[q,k] - S[q,j])`` over the pairs with
    ``R[q,j] - R[q,k] > gap``.

    The per-row sums and the reduction run in the accumulator dtype (float32 for float16 / bfloat16,
    else the scores' dtype); the result is then cast to the scores' dtype. A NaN score in a pair
    (full) or a kept window pair (swhs: a NaN is the hardest of its window) makes its row NaN.

    Args:
        scores: (Q, N) float scores, one row per query.
        relevance: (Q, N) continuous relevance.
        gap: the pair rule's strict relevance gap; ``None``: 0.3 for ``"full"``, 0 for ``"swhs"``.
        phi: the surrogate: ``"hinge"`` ``[m + x]_+``, ``"logistic"`` ``T softplus(x / T)``, or
            ``"tanh"`` ``(1 + tanh(x / T)) / 2``.
        margin: the hinge's margin (finite).
        temperature: T > 0 of the logistic and tanh surrogates.
        sampling: ``"full"`` (every pair, O(Q·N) memory) or ``"swhs"`` (sliding windows of
            ``window`` positions over each row sorted by relevance; each upper/lower window pair whose
            relevance gap exceeds ``gap`` contributes its hardest pair only).
        window: the SW-HS window size (integer >= 1).
        stride: the SW-HS stride (default ``window``).
        valid: optional (Q, N) bool mask of real candidates.
        reduction: ``"mean"`` (over the total number of terms), ``"sum"``, or ``"none"`` (per-row sums).
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (Q,); otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s, r = torch.randn(4, 10), torch.rand(4, 10)
        >>> kendall_loss(s, r, sampling="swhs", window=2).shape
        torch.Size([])
    """
    gap, stride = _kendall_args(scores, relevance, gap, phi, margin, temperature, sampling, window, stride, valid,
                                reduction)
    if sampling == "full":
        compute_grad = torch.is_grad_enabled() and scores.requires_grad
        sums, counts, _ = _ops.ops.kendall_full(scores, relevance, valid, gap, PHIS.index(phi), float(margin),
                                           float(temperature), compute_grad)
        return reduce_rows(sums, counts, reduction, reducer).to(scores.dtype)
    upper, lower, keep = _ops.ops.kendall_swhs(scores, relevance, valid, int(window), stride, gap)
    acc = _ops._acc_dtype(scores)
    # x is zeroed where a step is not kept before phi, not only the term after it: a dropped step may
    # read a NaN (or a masked column, for steps past a short row), and 0 * phi'(NaN) would be NaN.
    x = torch.where(keep, scores.gather(1, lower).to(acc) - scores.gather(1, upper).to(acc), 0)
    terms = torch.where(keep, phi_value(x, phi, margin, temperature), 0)
    return reduce_rows(terms.sum(dim=1), keep.sum(dim=1), reduction, reducer).to(scores.dtype)


def ranknet_loss(scores: torch.Tensor, relevance: torch.Tensor, gap: float = 0.0, temperature: float = 1.0,
                 valid: torch.Tensor | None = None, reduction: str = "mean", *,
                 reducer: Reducer | None = None) -> torch.Tensor:
    """RankNet (docs/bcls.md §4): the full Kendall form with the logistic surrogate
    ``T * softplus((S[q,k] - S[q,j]) / T)`` over the pairs with ``R[q,j] - R[q,k] > gap``.

    Args:
        scores: (Q, N) float scores.
        relevance: (Q, N) continuous relevance.
        gap: the pair rule's strict relevance gap (>= 0).
        temperature: T > 0 (T = 1: RankNet's cross-entropy).
        valid: optional (Q, N) bool mask of real candidates.
        reduction: ``"mean"`` (over the pairs), ``"sum"``, or ``"none"`` (per-row sums).
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (Q,); otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> ranknet_loss(torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]]))
        tensor(1.3133)
    """
    return kendall_loss(scores, relevance, gap, "logistic", 0.0, temperature, "full", valid=valid, reduction=reduction,
                        reducer=reducer)


def smooth_ap_loss(scores: torch.Tensor, positives: torch.Tensor, tau: float = 0.01,
                   valid: torch.Tensor | None = None, reduction: str = "mean", *,
                   reducer: Reducer | None = None) -> torch.Tensor:
    """Smooth-AP (docs/smooth_rank_ndcg.md §3): per row ``1 - (1/|P_q|) sum_{i in P_q} Rhat_P(i) / Rhat(i)``,
    with Rhat the smooth rank among all valid candidates and Rhat_P among the positives.

    Args:
        scores: (Q, N) float scores.
        positives: (Q, N) bool tensor: binary relevance (not the column indices of the
            contrastive losses).
        tau: the smooth rank's temperature, > 0.
        valid: optional (Q, N) bool mask of real candidates.
        reduction: ``"mean"`` (over the rows with a valid positive; rows without have loss 0),
            ``"sum"``, or ``"none"``.
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (Q,); otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s, pos = torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[True, False, False]])
        >>> round(smooth_ap_loss(s, pos, tau=1e-3).item(), 4)   # the positive ranks first: AP = 1
        0.0
    """
    return _smooth_ap(smooth_rank, scores, positives, tau, valid, reduction, reducer)


def _smooth_ap_args(scores, positives, tau, valid, reduction):
    check.scores(scores)
    check.like_scores(positives, scores, "positives")
    if positives.dtype != torch.bool:
        raise TypeError(f"positives must be a bool tensor, got {positives.dtype}")
    check.positive(tau, "tau")
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)


def _smooth_ap(rank_fn, scores, positives, tau, valid, reduction, reducer=None):
    _smooth_ap_args(scores, positives, tau, valid, reduction)
    pos = positives if valid is None else positives & valid
    rank_all = rank_fn(scores, tau, valid)
    rank_pos = rank_fn(scores, tau, pos)
    n_pos = pos.sum(dim=1)
    ratio = torch.where(pos, rank_pos / torch.where(pos, rank_all, 1), 0).sum(dim=1)
    loss = torch.where(n_pos > 0, 1 - ratio / n_pos.clamp(min=1), 0)
    return reduce_rows(loss, n_pos > 0, reduction, reducer)


def _listnet_args(scores, relevance, temperature, valid, reduction):
    check.scores(scores)
    check.relevance(relevance, scores)
    check.positive(temperature, "temperature")
    check.valid(valid, scores)
    check.choice(reduction, "reduction", REDUCTIONS)


def listnet_loss(scores: torch.Tensor, relevance: torch.Tensor, temperature: float = 1.0,
                 valid: torch.Tensor | None = None, reduction: str = "mean", *,
                 reducer: Reducer | None = None) -> torch.Tensor:
    """ListNet (docs/bcls.md §5): cross-entropy ``-sum_j p_j log q_j`` between the top-one
    distributions p = softmax(R) and q = softmax(S / T) over the valid candidates (a term with
    p_j = 0 is 0). O(Q·N), plain tensor code.

    Args:
        scores: (Q, N) float scores.
        relevance: (Q, N) relevance (any finite value is a valid target).
        temperature: T > 0 of the scores' softmax.
        valid: optional (Q, N) bool mask of real candidates.
        reduction: ``"mean"`` (over the rows with a valid candidate; a row without has loss 0),
            ``"sum"``, or ``"none"``.
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (Q,); otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> listnet_loss(torch.zeros(1, 4), torch.zeros(1, 4))   # log 4
        tensor(1.3863)
    """
    _listnet_args(scores, relevance, temperature, valid, reduction)
    # In the accumulator dtype: S / T overflows float16 at small T (1e-5), and the softmaxes lose digits.
    acc = _ops._acc_dtype(scores)
    logits = scores.to(acc) / temperature
    target = relevance.to(acc)
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
        return reduce_rows(loss, None, reduction, reducer).to(scores.dtype)
    return reduce_rows(torch.where(counted.squeeze(1), loss, 0), counted.squeeze(1), reduction,
                       reducer).to(scores.dtype)
