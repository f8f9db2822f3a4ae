"""The fused losses: thin, validated wrappers over the itr_kernels ops. The math is in
docs/smooth_rank_ndcg.md (smooth rank, Smooth-NDCG) and docs/contrastive.md (VSE++ triplet,
InfoNCE); the shared conventions in docs/README.md."""
from collections.abc import Callable

import torch

from . import _validate as check
from . import _ops

GAINS = ("exp", "linear")
REDUCTIONS = ("mean", "sum", "none")

Reducer = Callable[[torch.Tensor, str], torch.Tensor]
"""An explicit reduction of a loss's rows, given as ``reducer=`` to every loss function and module
forward (docs/distributed.md): called as ``reducer(count, reduction)`` with the loss's own
``"mean"`` count (a float64 scalar tensor outside autograd: rows, rows with gain, pairs, ...) and
``"sum"`` or ``"mean"``, it returns the positive scalar tensor that the sum of the local rows is
divided by. ``None`` (the default): ``"sum"`` divides by 1, ``"mean"`` by ``max(1, count)``.
`itr_kernels.distributed.GlobalReduction` is the one for a global batch across processes.
``"none"`` never calls it."""


def reduce_rows(per_row: torch.Tensor, counted: torch.Tensor | None, reduction: str,
                reducer: Reducer | None = None) -> torch.Tensor:
    """Apply `reduction` to per-row losses; `mean` averages over the `counted` rows (all if None),
    0 when none is counted. With a `reducer`, the sum is divided by ``reducer(count, reduction)``."""
    if reduction == "none":
        return per_row
    if reducer is not None:
        count = per_row.new_tensor(per_row.numel(), dtype=torch.float64) if counted is None else counted.sum()
        return per_row.sum() / reducer(count.detach().to(torch.float64), reduction).to(per_row.dtype)
    if reduction == "sum":
        return per_row.sum()
    if counted is None:   # an empty batch gives 0, not the NaN of an empty mean
        return per_row.mean() if per_row.numel() > 0 else per_row.sum()
    return per_row.sum() / counted.sum().clamp(min=1)


def _smooth_rank_args(scores, tau, valid):
    check.scores(scores)
    check.positive(tau, "tau")
    check.valid(valid, scores)


def _smooth_ndcg_args(scores, relevance, tau, k, gain, valid, reduction):
    _smooth_rank_args(scores, tau, valid)
    check.relevance(relevance, scores)
    check.top_k(k)
    check.choice(gain, "gain", GAINS)
    check.choice(reduction, "reduction", REDUCTIONS)


def _triplet_args(scores, margin, reduction, positives=None):
    if positives is None:
        check.square(scores)
    else:
        check.scores(scores)
        check.positive_columns(positives, scores)
    check.finite(margin, "margin")
    check.choice(reduction, "reduction", REDUCTIONS)


def _infonce_args(scores, temperature, reduction, positives=None):
    if positives is None:
        check.square(scores)
    else:
        check.scores(scores)
        check.positive_columns(positives, scores)
    check.positive(temperature, "temperature")
    check.choice(reduction, "reduction", REDUCTIONS)


def smooth_rank(scores: torch.Tensor, tau: float = 0.01, valid: torch.Tensor | None = None) -> torch.Tensor:
    r"""Smooth (sigmoid-relaxed) rank of every candidate in its row (docs/smooth_rank_ndcg.md §1).

    :math:`\hat r[q, j] = 1 + \sum_{k \ne j, \text{valid}} \sigma((S[q, k] - S[q, j]) / \tau)`; 0 at
    masked entries. O(Q·N) memory; differentiable (first order).

    Args:
        scores: (Q, N) float scores, one row per query.
        tau: the sigmoid's temperature, a finite number > 0.
        valid: optional (Q, N) bool mask; ``False`` marks a padding candidate.

    Shape:
        ``scores``, ``valid``: (Q, N). Output: (Q, N).

    Returns:
        The smooth ranks, in the dtype of ``scores``.

    Example:
        >>> smooth_rank(torch.tensor([[3.0, 1.0, 2.0]]), tau=1e-3).round()   # the hard ranks
        tensor([[1., 3., 2.]])
    """
    _smooth_rank_args(scores, tau, valid)
    return _ops.ops.smooth_rank(scores, valid, float(tau))


def smooth_ndcg_loss(scores: torch.Tensor, relevance: torch.Tensor, tau: float = 0.01, k: int | None = None,
                     gain: str = "exp", valid: torch.Tensor | None = None, reduction: str = "mean", *,
                     reducer: Reducer | None = None) -> torch.Tensor:
    r"""Smooth-NDCG loss ``1 - SNDCG`` per query row (docs/smooth_rank_ndcg.md §2).

    NDCG with the hard rank replaced by :func:`smooth_rank`; IDCG is computed exactly from a sort
    of each row's relevance.

    Args:
        scores: (Q, N) float scores, one row per query.
        relevance: (Q, N) graded relevance, documented in [0, 1] (not checked).
        tau: the smooth rank's temperature, > 0.
        k: ``None`` (every valid candidate carries gain) or the size of the gain set (IDCG@k).
        gain: ``"exp"`` (2^R - 1) or ``"linear"`` (R).
        valid: optional (Q, N) bool mask of real candidates.
        reduction: ``"mean"`` over the rows with IDCG > 0, ``"sum"``, or ``"none"`` (per row).
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``;
            itr_kernels.GlobalReduction for a global batch). ``None``: over the local rows.

    Shape:
        ``scores``, ``relevance``, ``valid``: (Q, N). Output: (Q,) for ``"none"``, else a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s, r = torch.randn(4, 6), torch.rand(4, 6)
        >>> smooth_ndcg_loss(s, r, tau=0.05, k=3).shape
        torch.Size([])
    """
    _smooth_ndcg_args(scores, relevance, tau, k, gain, valid, reduction)
    compute_grad = torch.is_grad_enabled() and scores.requires_grad
    loss, idcg, _ = _ops.ops.smooth_ndcg(scores, relevance, valid, float(tau), k or 0, gain == "linear", compute_grad)
    return reduce_rows(loss, idcg > 0, reduction, reducer)


def triplet_loss(scores: torch.Tensor, margin: float = 0.2, max_violation: bool = True, reduction: str = "mean",
                 positives: torch.Tensor | None = None, *,
                 reducer: Reducer | None = None) -> torch.Tensor:
    r"""VSE++ hinge triplet loss, both directions (docs/contrastive.md §1).

    On a square in-batch matrix (positives on the diagonal) rows are image-to-text queries and
    columns text-to-image queries; per query :math:`[m + S[q, n] - S[q, p]]_+` for the hardest
    negative ``n`` (``max_violation``, VSE++), or summed over the negatives (VSE0).

    Args:
        scores: (B, B) in-batch scores, or (Q, N) rows against a global batch with ``positives``.
        margin: the hinge's margin m (finite).
        max_violation: hardest negative only (VSE++) or the sum over every negative.
        reduction: ``"mean"``: the average of both directions' means (the Listwise ITR code);
            ``"sum"``: every query of both (VSE++'s code); ``"none"``: per query.
        positives: (Q,) integer column of each row's positive, for rectangular scores (local
            rows against a global batch, docs/distributed.md); then only the rows are queries.
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (2, B) [image-to-text, text-to-image] for square scores, (Q,) with positives.
        Otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> triplet_loss(img @ img.T, margin=0.2, reduction="none").shape
        torch.Size([2, 8])
    """
    _triplet_args(scores, margin, reduction, positives)
    loss, _ = _ops.ops.vse_triplet(scores, positives, float(margin), bool(max_violation))
    return reduce_rows(loss if positives is None else loss[0], None, reduction, reducer)


def infonce_loss(scores: torch.Tensor, temperature: float = 0.05, reduction: str = "mean",
                 positives: torch.Tensor | None = None, *,
                 reducer: Reducer | None = None) -> torch.Tensor:
    r"""InfoNCE (CLIP's contrastive loss) on in-batch scores, both directions (docs/contrastive.md §2).

    For a query row :math:`q` with positive column :math:`p`:
    :math:`L[q] = \log \sum_j \exp(S[q, j] / T) - S[q, p] / T` (every candidate in the sum, the
    positive included), i.e. ``F.cross_entropy(S / T, p)`` per query. On a square in-batch matrix
    the positives are on the diagonal; rows are image-to-text queries and columns text-to-image
    queries.

    Args:
        scores: (B, B) in-batch scores, or (Q, N) rows against a global batch with ``positives``.
        temperature: T > 0; the logits are ``scores / T`` (CLIP's logit scale is 1 / T).
        reduction: ``"mean"``: the average of the two directions' means (as CLIP does);
            ``"sum"``: the sum over every query of both directions; ``"none"``: per query.
        positives: (Q,) integer column of each row's positive, for rectangular scores; then only
            the rows are queries.
        reducer: the explicit reduction of ``"sum"`` / ``"mean"`` (``itr_kernels.Reducer``).

    Shape:
        ``"none"``: (2, B) [image-to-text, text-to-image] for square scores, (Q,) with positives.
        Otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = infonce_loss(s @ s.T, temperature=0.05)
        >>> torch.allclose(loss, torch.nn.functional.cross_entropy(s @ s.T / 0.05, torch.arange(8)))
        True
    """
    _infonce_args(scores, temperature, reduction, positives)
    loss, _ = _ops.ops.infonce(scores, positives, float(temperature))
    return reduce_rows(loss if positives is None else loss[0], None, reduction, reducer)
