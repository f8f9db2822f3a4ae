"""The embedding-level front end (docs/embedding.md): losses from ``(image_features,
text_features)``, as open_clip's ``ClipLoss`` takes them, with optional relevance, a logit scale
for InfoNCE, L2 normalisation, and the global batch under torch.distributed."""
from collections.abc import Callable

import torch
from torch import nn

from . import _validate as check
from .distributed import GlobalReduction, gather_with_grad, world_and_rank
from .modules import (BCLSLoss, InfoNCELoss, KendallRankLoss, ListwiseITRLoss, SmoothNDCGLoss, TripletLoss,
                      TripletSNLoss, check_logit_scale)

__all__ = ["EmbeddingLoss", "GlobalBatchLoss", "RelevanceFn"]

RelevanceFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Computes the (B, B) image-to-text relevance of the global batch from its (detached, normalised
when the module normalises) image and text features, each (B, D)."""

_NEEDS_RELEVANCE = (ListwiseITRLoss, BCLSLoss)
_ROW_WISE = (SmoothNDCGLoss, KendallRankLoss)


def _check_features(image_features, text_features):
    for x, name in ((image_features, "image_features"), (text_features, "text_features")):
        check.tensor(x, name)
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D (batch, dim), got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating tensor, got {x.dtype}")
    if image_features.shape != text_features.shape:
        raise ValueError(f"image_features and text_features must have the same shape (B, D) (caption i matches "
                         f"image i), got {tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if image_features.device != text_features.device:
        raise ValueError(f"text_features must be on the device of image_features ({image_features.device}), "
                         f"got {text_features.device}")


def _check_square_relevance(r, n, device, what):
    check.tensor(r, "relevance")
    if tuple(r.shape) != (n, n):
        raise ValueError(f"relevance: {what} must have shape ({n}, {n}) (global batch images x captions), "
                         f"got {tuple(r.shape)}")
    if r.device != device:
        raise ValueError(f"relevance: {what} must be on the device of the features ({device}), got {r.device}")


class EmbeddingLoss(nn.Module):
    """An in-batch ITR loss on ``(image_features, text_features)`` (docs/embedding.md).

    Forms the score matrix ``S = img @ txt.T`` (after L2 normalisation when ``normalize``), with
    image ``i`` matching caption ``i``, and applies ``loss`` to it. When torch.distributed is
    initialised with several processes (and ``global_batch``), each process gathers every
    process's features (`itr_kernels.distributed.gather_with_grad`) and scores its local
    queries against the global batch, in both directions; every ``"mean"`` then divides by the
    global count over the world size, every ``"sum"`` is multiplied by the world size
    (`itr_kernels.distributed.GlobalReduction`), so the returned value
    is this process's **local estimate of the global-batch loss** (their mean over processes is the
    single-process loss on the concatenated batch), and under DistributedDataParallel, which
    averages gradients, the gradients are exactly the single-process ones: no ``* world_size``.

    Args:
        loss: an in-batch module: `ListwiseITRLoss`, `BCLSLoss`, `TripletLoss`, `InfoNCELoss`,
            `TripletSNLoss`, or any module with their forward signature ``(scores, relevance_i2t,
            relevance_t2i=None, positives=None, scores_t2i=None, *, reducer=None)``.
        normalize: L2-normalise both features (rows) before scoring.
        relevance: the default relevance source, a `RelevanceFn` called with the global batch's
            (detached) features when ``forward`` gets none.
        global_batch: under an initialised process group, score against the global batch
            (``False``: every process scores its local batch alone).
        ddp_average: under a process group, scale for DistributedDataParallel's gradient averaging
            (``True``, the default); ``False`` returns parts that add up to the global loss instead.

    Shape:
        forward(image_features (b, D), text_features (b, D), relevance=None, *, logit_scale=None),
        b the local batch, B = world_size * b the global one. ``relevance``: a (B, B) tensor
        (images x captions of the global batch; each process uses its rows), a pair of row blocks
        ``(relevance_i2t, relevance_t2i)`` each (b, B) (this process's images x global captions,
        its captions x global images), a `RelevanceFn` returning (B, B), or ``None`` (the
        constructor's ``relevance``; losses that need relevance then raise). ``logit_scale``: for
        `InfoNCELoss` only, a number or a scalar tensor 1 / T (e.g. open_clip's
        ``model.logit_scale.exp()``) used instead of the module's own temperature.

    Returns:
        A scalar (or what ``loss`` returns for its ``"none"`` reduction, with the two directions
        stacked for `TripletSNLoss` on a global batch).

    Example:
        >>> loss_fn = EmbeddingLoss(ListwiseITRLoss(tau=0.05))
        >>> img, txt = torch.randn(8, 16), torch.randn(8, 16)
        >>> relevance = lambda i, t: (t @ t.T).clamp(0, 1)   # caption-caption similarity, as RSC
        >>> loss = loss_fn(img, txt, relevance)
        >>> clip = EmbeddingLoss(InfoNCELoss())
        >>> loss = clip(img, txt, logit_scale=torch.tensor(100.0))
    """

    def __init__(self, loss: nn.Module, normalize: bool = True, relevance: RelevanceFn | None = None,
                 global_batch: bool = True, ddp_average: bool = True) -> None:
        super().__init__()
        if not isinstance(loss, nn.Module):
            raise TypeError(f"loss must be an nn.Module (an in-batch loss such as ik.ListwiseITRLoss()), "
                            f"got {type(loss).__name__}")
        if isinstance(loss, _ROW_WISE):
            raise TypeError(f"loss: {type(loss).__name__} is a row-wise (Q, N) loss, not an in-batch one; use "
                            f"ListwiseITRLoss (S-NDCG) or BCLSLoss (Kendall), which apply it in both directions")
        if relevance is not None and not callable(relevance):
            raise TypeError(f"relevance must be a callable (image_features, text_features) -> (B, B) tensor, "
                            f"got {type(relevance).__name__}; pass relevance tensors to forward")
        self.loss, self.normalize, self.relevance_fn = loss, bool(normalize), relevance
        self.global_batch, self.ddp_average = bool(global_batch), bool(ddp_average)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                relevance: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | RelevanceFn | None = None, *,
                logit_scale: torch.Tensor | float | None = None) -> torch.Tensor:
        _check_features(image_features, text_features)
        extra = {}
        if logit_scale is not None:
            if not isinstance(self.loss, InfoNCELoss):
                raise TypeError(f"logit_scale applies to InfoNCELoss only, not {type(self.loss).__name__}")
            check_logit_scale(logit_scale)
            extra["logit_scale"] = logit_scale
        img, txt = image_features, text_features
        if self.normalize:
            img, txt = nn.functional.normalize(img, dim=1), nn.functional.normalize(txt, dim=1)
        world, rank = world_and_rank() if self.global_batch else (1, 0)
        img_all, txt_all = (gather_with_grad(img), gather_with_grad(txt)) if world > 1 else (img, txt)
        rel_i2t, rel_t2i = self._relevance(relevance, img_all, txt_all, img.shape[0], rank)
        if rel_i2t is None and isinstance(self.loss, _NEEDS_RELEVANCE):
            raise ValueError(f"relevance: {type(self.loss).__name__} needs relevance; pass a (B, B) tensor or a "
                             f"callable to forward, or relevance= to the constructor")
        if world == 1:   # the square in-batch form, exactly as on img @ txt.T
            scores = img @ txt.T
            if isinstance(self.loss, TripletSNLoss):
                return self.loss(scores, rel_i2t)
            return self.loss(scores, rel_i2t, rel_t2i, **extra)
        b = img.shape[0]
        positives = torch.arange(rank * b, (rank + 1) * b, device=img.device)
        scores_i2t, scores_t2i = img @ txt_all.T, txt @ img_all.T
        reducer = GlobalReduction(self.ddp_average)
        if isinstance(self.loss, TripletSNLoss):   # its rectangular form is one direction: run both
            i2t = self.loss(scores_i2t, rel_i2t, positives, reducer=reducer)
            t2i = self.loss(scores_t2i, rel_t2i, positives, reducer=reducer)
            reduction = self.loss.reduction
            return (i2t + t2i) / 2 if reduction == "mean" else i2t + t2i if reduction == "sum" else torch.stack([i2t, t2i])
        return self.loss(scores_i2t, rel_i2t, rel_t2i, positives=positives, scores_t2i=scores_t2i,
                         reducer=reducer, **extra)

    def _relevance(self, relevance, img_all, txt_all, b, rank):
        """(image-to-text rows, text-to-image rows) of this process's queries against the global
        batch; the square form's (R, None) on one process (relevance_t2i then defaults to R.T)."""
        n, device = img_all.shape[0], img_all.device
        if relevance is None:
            relevance = self.relevance_fn
        if relevance is None:
            return None, None
        if isinstance(relevance, tuple):
            if len(relevance) != 2:
                raise ValueError(f"relevance: a tuple must be (relevance_i2t, relevance_t2i), got {len(relevance)} items")
            for r, name in zip(relevance, ("relevance[0] (relevance_i2t)", "relevance[1] (relevance_t2i)")):
                check.tensor(r, name)
                if tuple(r.shape) != (b, n):
                    raise ValueError(f"{name} must have shape ({b}, {n}) (this process's queries x the global "
                                     f"batch), got {tuple(r.shape)}")
            return relevance
        if isinstance(relevance, torch.Tensor):
            _check_square_relevance(relevance, n, device, "the tensor")
        elif callable(relevance):
            relevance = relevance(img_all.detach(), txt_all.detach())
            if not isinstance(relevance, torch.Tensor):
                raise TypeError(f"relevance: the callable must return a tensor, got {type(relevance).__name__}")
            _check_square_relevance(relevance, n, device, "the callable's result")
        else:
            raise TypeError(f"relevance must be a tensor, a (relevance_i2t, relevance_t2i) pair or a callable, "
                            f"got {type(relevance).__name__}")
        if n == b:
            return relevance, None
        rows = slice(rank * b, (rank + 1) * b)
        return relevance[rows], relevance.T[rows].contiguous()

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, global_batch={self.global_batch}, ddp_average={self.ddp_average}"


class GlobalBatchLoss(EmbeddingLoss):
    """`EmbeddingLoss` without normalisation, taking this process's relevance rows (the interface
    of earlier releases; docs/distributed.md).

    It returns this process's local estimate of the global-batch loss: under
    DistributedDataParallel call ``loss.backward()`` as is (earlier releases returned a part to be
    multiplied by the world size; pass ``ddp_average=False`` for parts that add up to the loss).

    Args:
        loss: a two-direction in-batch module (`ListwiseITRLoss`, `BCLSLoss`, `TripletLoss`,
            `InfoNCELoss`, `TripletSNLoss`).
        ddp_average: see `EmbeddingLoss`.

    Shape:
        forward(img (b, D), txt (b, D), relevance_i2t=None (b, B), relevance_t2i=None (b, B)):
        this process's embeddings and the relevance rows of its images x the global captions and
        of its captions x the global images. On one process ``relevance_t2i`` defaults to
        ``relevance_i2t.T``.

    Returns:
        A scalar: this process's local estimate of the global-batch loss.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = GlobalBatchLoss(TripletLoss())(img, img)   # one process: the in-batch loss
    """

    def __init__(self, loss: nn.Module, ddp_average: bool = True) -> None:
        super().__init__(loss, normalize=False, ddp_average=ddp_average)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, relevance_i2t: torch.Tensor | None = None,
                relevance_t2i: torch.Tensor | None = None) -> torch.Tensor:
        if relevance_i2t is None:
            relevance = None
        elif relevance_t2i is None:
            relevance = relevance_i2t
        else:
            relevance = (relevance_i2t, relevance_t2i)
        return super().forward(img, txt, relevance)
