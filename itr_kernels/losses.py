"""The fused losses: thin, validated wrappers over the itr_kernels ops (SPEC sections 1, 2, 4)."""
import torch

from . import _validate as check
from . import _ops

GAINS = ("exp", "linear")
REDUCTIONS = ("mean", "sum", "none")


_denominator_hook = None


def set_denominator_hook(hook):
    """Install a function applied to every "mean"'s count (itr_kernels.distributed.global_mean sums
    it over processes); returns the previous one."""
    global _denominator_hook
    previous, _denominator_hook = _denominator_hook, hook
    return previous


def reduce_rows(per_row, counted, reduction):
    """Apply `reduction` to per-row losses; `mean` averages over the `counted` rows (all if None),
    0 when none is counted."""
    if reduction == "none":
        return per_row
    if reduction == "sum":
        return per_row.sum()
    if _denominator_hook is not None:
        count = per_row.new_tensor(per_row.numel()) if counted is None else counted.sum()
        return per_row.sum() / _denominator_hook(count).clamp(min=1).to(per_row.dtype)
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


def smooth_rank(scores, tau=0.01, valid=None):
    """Smooth (sigmoid-relaxed) rank of every candidate in its row:
    ``1 + sum_{k != j, valid} sigmoid((S[q,k] - S[q,j]) / tau)``; 0 at masked entries.
    O(Q*N) memory; differentiable."""
    _smooth_rank_args(scores, tau, valid)
    return _ops.ops.smooth_rank(scores, valid, float(tau))


def smooth_ndcg_loss(scores, relevance, tau=0.01, k=None, gain="exp", valid=None, reduction="mean"):
    """Smooth-NDCG loss ``1 - SNDCG`` per query row (SPEC section 2).

    scores: (Q, N) float; relevance: (Q, N) in [0, 1]; gain "exp" (2^R - 1) or "linear" (R);
    k: only the k most relevant candidates carry gain (IDCG@k); valid: optional bool mask of real
    candidates; reduction: "mean" over rows with IDCG > 0, "sum", or "none" (per row).
    """
    _smooth_ndcg_args(scores, relevance, tau, k, gain, valid, reduction)
    compute_grad = torch.is_grad_enabled() and scores.requires_grad
    loss, idcg, _ = _ops.ops.smooth_ndcg(scores, relevance, valid, float(tau), k or 0, gain == "linear", compute_grad)
    return reduce_rows(loss, idcg > 0, reduction)


def triplet_loss(scores, margin=0.2, max_violation=True, reduction="mean", positives=None):
    """VSE++ hinge triplet loss on a square in-batch matrix (positives on the diagonal), both
    directions: rows are image-to-text queries, columns text-to-image.

    max_violation: hardest negative (VSE++) or the sum over negatives (VSE0). reduction "none" gives
    a (2, B) tensor [image-to-text, text-to-image]; "mean" averages both directions (the seed's
    code); "sum" adds every row of both (the VSE++ paper's code).

    positives: the column of each row's positive, for rectangular (Q, N) scores (local rows
    against a global batch, see itr_kernels.distributed); then only the rows are queries and
    "none" gives (Q,) losses.
    """
    _triplet_args(scores, margin, reduction, positives)
    loss, _ = _ops.ops.vse_triplet(scores, positives, float(margin), bool(max_violation))
    return reduce_rows(loss if positives is None else loss[0], None, reduction)


def infonce_loss(scores: torch.Tensor, temperature: float = 0.05, reduction: str = "mean",
                 positives: torch.Tensor | None = None) -> torch.Tensor:
    r"""InfoNCE (CLIP's contrastive loss) on in-batch scores, both directions.

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

    Shape:
        ``"none"``: (2, B) [image-to-text, text-to-image] for square scores, (Q,) with positives.
        Otherwise a scalar.

    Returns:
        The loss, in the dtype of ``scores``.

    Example:
        >>> s = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = infonce_loss(s @ s.T, temperature=0.05)
    """
    _infonce_args(scores, temperature, reduction, positives)
    loss, _ = _ops.ops.infonce(scores, positives, float(temperature))
    return reduce_rows(loss if positives is None else loss[0], None, reduction)
