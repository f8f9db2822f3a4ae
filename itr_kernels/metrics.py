"""Retrieval metrics (docs/metrics.md), vectorised and chunked over queries, so that a 5K x 25K
evaluation never holds more than one chunk of rank or pair tensors; every function runs on the
device of its inputs.

Conventions: `scores` is the (n_images, n_captions) image-to-text similarity; caption `j` belongs
to image `caption_owner[j]` (for the standard format, `j // m`). Text-to-image uses `scores.T`.
"""
import math
from collections.abc import Sequence

import torch

from . import _validate as check

__all__ = ["recall_at_k", "ndcg_at_k", "map_at_r", "kendall_tau", "evaluate"]


def _chunks(n, per_row_cost, budget=1 << 25):
    """Row ranges so that a chunk's temporaries (rows x per_row_cost elements) stay near `budget`."""
    step = max(1, budget // max(1, per_row_cost))
    for start in range(0, n, step):
        yield start, min(n, start + step)


def _check_scores(scores, name="scores"):
    check.scores(scores, name)
    if scores.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(scores.shape)}")


def _t2i(scores, scores_t2i):
    """The text-to-image rows: scores.T, or a matrix of their own (re-ranked, say)."""
    if scores_t2i is None:
        return scores.T
    check.like_scores(scores_t2i, scores.T, "scores_t2i")
    return scores_t2i


def _check_owner(scores, caption_owner):
    check.tensor(caption_owner, "caption_owner")
    if caption_owner.dim() != 1 or caption_owner.numel() != scores.shape[1]:
        raise ValueError(f"caption_owner: expected shape ({scores.shape[1]},) (one image index per caption), "
                         f"got {tuple(caption_owner.shape)}")
    if caption_owner.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"caption_owner: expected an integer tensor, got {caption_owner.dtype}")
    if caption_owner.numel() and (int(caption_owner.min()) < 0 or int(caption_owner.max()) >= scores.shape[0]):
        raise ValueError(f"caption_owner: image indices must lie in [0, {scores.shape[0]})")


def _first_hit_ranks(scores, positive_of_row):
    """0-based rank of the best-ranked positive of each query. `positive_of_row(start, end)` gives
    the boolean positive mask of rows start..end. Rank = number of candidates scored strictly
    higher than the best positive (ties count in the query's favour, as in VSE++'s evaluation)."""
    ranks = []
    for s, e in _chunks(scores.shape[0], scores.shape[1]):
        block = scores[s:e]
        pos = positive_of_row(s, e)
        best = block.masked_fill(~pos, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append((block > best).sum(dim=1))
    return torch.cat(ranks)


def recall_at_k(scores: torch.Tensor, caption_owner: torch.Tensor, ks: Sequence[int] = (1, 5, 10),
                scores_t2i: torch.Tensor | None = None) -> dict[str, float]:
    """Recall@K in both directions, in percent, and rsum (docs/metrics.md).

    Image-to-text counts, per image, the best rank among its captions; text-to-image, per caption,
    the rank of its image. Ties count in the query's favour (VSE++'s evaluation).

    Args:
        scores: (n_images, n_captions) image-to-text similarities.
        caption_owner: (n_captions,) integer: the image of each caption.
        ks: the cut-offs K.
        scores_t2i: optional (n_captions, n_images) text-to-image rows (default ``scores.T``).

    Returns:
        ``{"i2t_r1", ..., "t2i_r1", ..., "rsum"}``, floats in percent (rsum: their sum).

    Example:
        >>> recall_at_k(torch.eye(3), torch.arange(3))["rsum"]
        600.0
    """
    _check_scores(scores)
    _check_owner(scores, caption_owner)
    st = _t2i(scores, scores_t2i)
    owner = caption_owner.to(scores.device)
    rows = torch.arange(scores.shape[0], device=scores.device)
    i2t = _first_hit_ranks(scores, lambda s, e: owner[None, :] == rows[s:e, None])
    t2i = _first_hit_ranks(st, lambda s, e: rows[None, :] == owner[s:e, None])
    out = {}
    for name, ranks in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * (ranks < k).double().mean().item()
    out["rsum"] = sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in ks)
    return out


def ndcg_at_k(scores: torch.Tensor, relevance: torch.Tensor, k: int = 10, gain: str = "exp") -> float:
    """Mean NDCG@k over queries with graded relevance (rows of `scores` are queries; docs/metrics.md).

    Discount ``1/log2(rank + 1)``. Ties in ``scores`` are broken by the lower column index
    (sklearn averages over tied orders; the two agree on tie-free scores). A query whose ideal DCG
    is 0 scores 0.

    Args:
        scores: (Q, N) scores.
        relevance: (Q, N) graded relevance.
        k: the cut-off, an integer >= 1.
        gain: ``"exp"`` (2^R - 1, as sklearn's ndcg_score with exponential gains) or ``"linear"``
            (R, sklearn's default).

    Returns:
        The mean NDCG@k in [0, 1], a float.

    Example:
        >>> ndcg_at_k(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 0.5, 0.0]]), k=3)
        1.0
    """
    _check_scores(scores)
    check.like_scores(relevance, scores, "relevance")
    check.choice(gain, "gain", ("exp", "linear"))
    if k is None or int(k) < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    k = min(int(k), scores.shape[1])
    disc = 1.0 / torch.log2(torch.arange(2, k + 2, device=scores.device, dtype=torch.float64))
    total = []
    for s, e in _chunks(scores.shape[0], scores.shape[1]):
        rel = relevance[s:e].to(scores.device, torch.float64)
        g = torch.exp2(rel) - 1 if gain == "exp" else rel
        # stable sort on -score: among equal scores the lower column comes first
        order = torch.sort(-scores[s:e].double(), dim=1, stable=True).indices[:, :k]
        dcg = (g.gather(1, order) * disc).sum(1)
        idcg = (torch.topk(g, k, dim=1).values * disc).sum(1)
        total.append(torch.where(idcg > 0, dcg / idcg.clamp_min(1e-300), torch.zeros_like(dcg)))
    return torch.cat(total).mean().item()


def map_at_r(scores: torch.Tensor, positives: torch.Tensor) -> tuple[float, float]:
    """mAP@R and R-Precision (ECCV Caption style) against a boolean positive set per query
    (docs/metrics.md).

    With R the query's number of positives: R-P = |positives in the top R| / R and
    mAP@R = (1/R) * sum_{i <= R} P@i * [item i is positive]. Queries without positives are left out.

    Args:
        scores: (Q, N) scores.
        positives: (Q, N) bool: the positives of each query (at least one query must have one).

    Returns:
        ``(map_at_r, r_precision)``, both in percent.

    Example:
        >>> map_at_r(torch.tensor([[2.0, 1.0, 0.0]]), torch.tensor([[True, False, True]]))
        (50.0, 50.0)
    """
    _check_scores(scores)
    check.like_scores(positives, scores, "positives")
    if positives.dtype != torch.bool:
        raise TypeError(f"positives: expected a bool tensor, got {positives.dtype}")
    r_all = positives.sum(1)
    r_max = int(r_all.max()) if r_all.numel() else 0
    if r_max == 0:
        raise ValueError("positives: no query has a positive")
    maps, rps = [], []
    for s, e in _chunks(scores.shape[0], scores.shape[1]):
        pos, r = positives[s:e].to(scores.device), r_all[s:e].to(scores.device)
        order = torch.sort(-scores[s:e].double(), dim=1, stable=True).indices[:, :r_max]
        hit = pos.gather(1, order).double()
        i = torch.arange(1, r_max + 1, device=scores.device, dtype=torch.float64)
        within = i[None, :] <= r[:, None]
        prec = hit.cumsum(1) / i
        keep = r > 0
        rr = r.clamp_min(1).double()
        maps.append(((prec * hit * within).sum(1) / rr)[keep])
        rps.append(((hit * within).sum(1) / rr)[keep])
    return 100.0 * torch.cat(maps).mean().item(), 100.0 * torch.cat(rps).mean().item()


def kendall_tau(scores: torch.Tensor, relevance: torch.Tensor) -> float:
    """Mean Kendall tau-b over queries between the model's scores and the relevance (per row;
    docs/metrics.md).

    Exact: tau_b = sum sign(dx) sign(dy) / sqrt(sum |sign dx| * sum |sign dy|) over pairs, which
    is scipy.stats.kendalltau's default variant. O(Q * N^2) work in chunks of rows.

    Args:
        scores: (Q, N) scores.
        relevance: (Q, N) relevance.

    Returns:
        The mean tau-b over the rows where it is defined (rows with a constant score or relevance
        are left out); NaN when no row has it.

    Example:
        >>> kendall_tau(torch.tensor([[3.0, 2.0, 1.0]]), torch.tensor([[1.0, 0.5, 0.0]]))
        1.0
    """
    _check_scores(scores)
    check.like_scores(relevance, scores, "relevance")
    n = scores.shape[1]
    taus = []
    for s, e in _chunks(scores.shape[0], n * n, budget=1 << 24):
        x = scores[s:e].double()
        y = relevance[s:e].to(scores.device, torch.float64)
        sx = torch.sign(x[:, :, None] - x[:, None, :])
        sy = torch.sign(y[:, :, None] - y[:, None, :])
        num = (sx * sy).sum((1, 2))
        den = torch.sqrt(sx.abs().sum((1, 2)) * sy.abs().sum((1, 2)))
        ok = den > 0
        taus.append((num[ok] / den[ok]))
    t = torch.cat(taus)
    return t.mean().item() if t.numel() else math.nan


def evaluate(scores: torch.Tensor, caption_owner: torch.Tensor, relevance_i2t: torch.Tensor | None = None,
             k: int = 10, scores_t2i: torch.Tensor | None = None, rank_metrics: bool = True) -> dict[str, float]:
    """Every metric of an (n_images, n_captions) score matrix, each both ways (docs/metrics.md).

    Args:
        scores: (n_images, n_captions) image-to-text similarities.
        caption_owner: (n_captions,) integer: the image of each caption.
        relevance_i2t: optional (n_images, n_captions) graded relevance, for NDCG@k and Kendall tau.
        k: the NDCG cut-off.
        scores_t2i: optional (n_captions, n_images) text-to-image rows (default ``scores.T``).
        rank_metrics: also mAP@R, R-Precision and, with relevance, Kendall tau (O(Q * N^2): the
            slow part).

    Returns:
        ``{"i2t_r1", ..., "rsum"}`` (`recall_at_k`); with relevance ``"i2t_ndcg@k"``,
        ``"t2i_ndcg@k"`` and their mean ``"ndcg@k"``; with ``rank_metrics`` ``"i2t_map_r"``,
        ``"i2t_r_precision"`` (and t2i), and with relevance ``"i2t_kendall_tau"``,
        ``"t2i_kendall_tau"``, ``"kendall_tau"``.

    Example:
        >>> out = evaluate(torch.eye(3), torch.arange(3), torch.eye(3), k=2)
        >>> out["rsum"], out["ndcg@2"], out["i2t_map_r"]
        (600.0, 1.0, 100.0)
    """
    out = recall_at_k(scores, caption_owner, scores_t2i=scores_t2i)
    st = _t2i(scores, scores_t2i)
    if rank_metrics:
        owner = caption_owner.to(scores.device)
        pos = owner[None, :] == torch.arange(scores.shape[0], device=scores.device)[:, None]
        for name, sc, p in (("i2t", scores, pos), ("t2i", st, pos.T)):
            out[f"{name}_map_r"], out[f"{name}_r_precision"] = map_at_r(sc, p)
    if relevance_i2t is not None:
        check.like_scores(relevance_i2t, scores, "relevance_i2t")
        for name, sc, rel in (("i2t", scores, relevance_i2t), ("t2i", st, relevance_i2t.T)):
            out[f"{name}_ndcg@{k}"] = ndcg_at_k(sc, rel, k)
            if rank_metrics:
                out[f"{name}_kendall_tau"] = kendall_tau(sc, rel)
        out[f"ndcg@{k}"] = (out[f"i2t_ndcg@{k}"] + out[f"t2i_ndcg@{k}"]) / 2
        if rank_metrics:
            out["kendall_tau"] = (out["i2t_kendall_tau"] + out["t2i_kendall_tau"]) / 2
    return out
