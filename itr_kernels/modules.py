"""nn.Module forms of the losses (docs/README.md lists each one's page). The argument checks
(constructors, in-batch forward) are functions here, shared with itr_kernels.reference's own modules.

The two-direction in-batch modules (`ListwiseITRLoss`, `BCLSLoss`, `TripletLoss`, `InfoNCELoss`)
share one forward signature: ``(scores, relevance_i2t=None, relevance_t2i=None, positives=None,
scores_t2i=None, *, reducer=None)``; `itr_kernels.EmbeddingLoss` calls them so."""
import math

import torch
from torch import nn

from . import _validate as check
from . import _ops, bcls, losses
from .losses import Reducer


def smooth_ndcg_module_args(tau, k, gain, reduction):
    check.positive(tau, "tau")
    check.top_k(k)
    check.choice(gain, "gain", losses.GAINS)
    check.choice(reduction, "reduction", losses.REDUCTIONS)


def listwise_module_args(margin, tau, weight, k, gain, triplet_reduction):
    check.finite(margin, "margin")
    check.positive(tau, "tau")
    check.unit_interval(weight, "weight")
    check.top_k(k)
    check.choice(gain, "gain", losses.GAINS)
    check.choice(triplet_reduction, "triplet_reduction", ("mean", "sum"))


def triplet_module_args(margin, reduction):
    check.finite(margin, "margin")
    check.choice(reduction, "reduction", ("mean", "sum"))


def triplet_sn_module_args(margin, temperature, rho, reduction):
    check.finite(margin, "margin")
    check.positive(temperature, "temperature")
    check.rho(rho)
    check.choice(reduction, "reduction", losses.REDUCTIONS)


def kendall_module_args(gap, phi, margin, temperature, sampling, window, stride, reduction):
    check.choice(phi, "phi", bcls.PHIS)
    check.choice(sampling, "sampling", bcls.SAMPLINGS)
    if gap is not None:
        check.non_negative(gap, "gap")
    check.finite(margin, "margin")
    check.positive(temperature, "temperature")
    check.positive_int(window, "window")
    if stride is not None:
        check.positive_int(stride, "stride")
    check.choice(reduction, "reduction", losses.REDUCTIONS)


def in_batch_args(scores, relevance_i2t, relevance_t2i, positives, scores_t2i):
    """Checks the in-batch forward's arguments (a square `scores`, or rectangular rows of both
    directions with `positives`); returns relevance_t2i, relevance_i2t.T by default."""
    check.tensor(relevance_i2t, "relevance_i2t")
    if relevance_t2i is None:
        relevance_t2i = relevance_i2t.T
    if positives is None:
        check.square(scores)
        if scores_t2i is not None:
            raise ValueError("scores_t2i is only for rectangular scores: pass positives too")
        return relevance_t2i
    if scores_t2i is None:
        raise ValueError("positives given: pass scores_t2i, the text-to-image rows against the global batch, too")
    check.tensor(scores_t2i, "scores_t2i")
    if scores_t2i.shape != scores.shape:
        raise ValueError(f"scores_t2i must have the shape of scores {tuple(scores.shape)}, "
                         f"got {tuple(scores_t2i.shape)}")
    return relevance_t2i


class SmoothNDCGLoss(nn.Module):
    """Smooth-NDCG loss on (Q, N) scores against (Q, N) relevance (docs/smooth_rank_ndcg.md §2);
    the module form of `smooth_ndcg_loss`.

    Args:
        tau: the smooth rank's temperature, > 0.
        k: ``None`` or the size of the gain set (IDCG@k).
        gain: ``"exp"`` (2^R - 1) or ``"linear"`` (R).
        reduction: ``"mean"`` (over rows with IDCG > 0), ``"sum"`` or ``"none"``.

    Shape:
        forward(scores (Q, N), relevance (Q, N), valid=None (Q, N) bool, *, reducer=None).

    Returns:
        (Q,) for ``"none"``, else a scalar, in the dtype of ``scores``.

    Example:
        >>> loss_fn = SmoothNDCGLoss(tau=0.05)
        >>> loss_fn(torch.randn(4, 6), torch.rand(4, 6)).shape
        torch.Size([])
    """

    def __init__(self, tau: float = 0.01, k: int | None = None, gain: str = "exp", reduction: str = "mean") -> None:
        super().__init__()
        smooth_ndcg_module_args(tau, k, gain, reduction)
        self.tau, self.k, self.gain, self.reduction = tau, k, gain, reduction

    def forward(self, scores: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        return losses.smooth_ndcg_loss(scores, relevance, self.tau, self.k, self.gain, valid, self.reduction,
                                       reducer=reducer)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, k={self.k}, gain={self.gain!r}, reduction={self.reduction!r}"


class _BothDirections(nn.Module):
    """An in-batch loss over both directions with a pairwise part, on a square matrix or on
    rectangular rows of each direction against a global batch. Subclasses give `_pair_loss(scores,
    relevance, positives=None, reducer=None)` (one call covers both directions of a square
    matrix) and `_pair_reduction` ("mean": the two directions are averaged, "sum": added)."""

    def _directions(self, scores, relevance_i2t, relevance_t2i, positives, scores_t2i, reducer=None,
                    **pair_args):
        """(text-to-image rows, their relevance, the pairwise part over both directions).

        Square: the rows of scores.T and relevance_i2t.T by default. Rectangular (`positives`
        given): `scores_t2i` as given, and each direction's rows against its positives, combined as
        the square form combines them."""
        relevance_t2i = in_batch_args(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        if positives is None:
            return scores.T, relevance_t2i, self._pair_loss(scores, relevance_i2t, None, reducer, **pair_args)
        i2t = self._pair_loss(scores, relevance_i2t, positives, reducer, **pair_args)
        t2i = self._pair_loss(scores_t2i, relevance_t2i, positives, reducer, **pair_args)
        return scores_t2i, relevance_t2i, (i2t + t2i) / 2 if self._pair_reduction == "mean" else i2t + t2i


class _VSETripletPart(_BothDirections):
    """The VSE++ triplet as the pairwise part (needs margin, max_violation, triplet_reduction)."""

    def _pair_loss(self, scores, relevance, positives=None, reducer=None):
        return losses.triplet_loss(scores, self.margin, self.max_violation, self.triplet_reduction, positives,
                                   reducer=reducer)

    @property
    def _pair_reduction(self):
        return self.triplet_reduction


_IN_BATCH_SHAPE = """forward(scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None, *,
        reducer=None): a square (B, B) ``scores`` = img @ txt.T (positives on the
        diagonal) with (B, B) relevance, ``relevance_t2i`` defaulting to ``relevance_i2t.T``; or,
        with ``positives`` (Q,) (the global column of each row's positive), rectangular (Q, N)
        image-to-text rows ``scores`` and text-to-image rows ``scores_t2i`` against a global batch,
        with their (Q, N) relevance rows (docs/distributed.md). ``reducer`` is passed to
        every ``"sum"`` / ``"mean"`` inside (``itr_kernels.Reducer``)."""


class ListwiseITRLoss(_VSETripletPart):
    """Listwise ITR loss (Li et al., arXiv:2305.16566; docs/smooth_rank_ndcg.md §4) on in-batch scores:

        (1 - weight) * triplet(S) + weight * (SNDCG(S, R_i2t) + SNDCG(S.T, R_t2i)) / 2

    Args:
        margin: the VSE++ triplet's margin.
        tau: the smooth rank's temperature, > 0.
        weight: the listwise weight in [0, 1].
        k: ``None`` or the S-NDCG gain set size.
        gain: ``"exp"`` or ``"linear"``.
        max_violation: hardest negative (VSE++) or sum over negatives in the triplet part.
        triplet_reduction: ``"mean"`` averages the two triplet directions (the seed's code),
            ``"sum"`` adds every row (VSE++).

    Shape:
        {shape}

    Returns:
        A scalar, in the dtype of ``scores``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = ListwiseITRLoss(tau=0.05)(img @ img.T, torch.eye(8))
    """

    def __init__(self, margin: float = 0.2, tau: float = 0.01, weight: float = 0.5, k: int | None = None,
                 gain: str = "exp", max_violation: bool = True, triplet_reduction: str = "mean") -> None:
        super().__init__()
        listwise_module_args(margin, tau, weight, k, gain, triplet_reduction)
        self.margin, self.tau, self.weight, self.k, self.gain = margin, tau, weight, k, gain
        self.max_violation, self.triplet_reduction = max_violation, triplet_reduction

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor, relevance_t2i: torch.Tensor | None = None,
                positives: torch.Tensor | None = None, scores_t2i: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        s_t2i, relevance_t2i, triplet = self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i,
                                                         reducer)
        i2t = losses.smooth_ndcg_loss(scores, relevance_i2t, self.tau, self.k, self.gain,
                                      reducer=reducer)
        t2i = losses.smooth_ndcg_loss(s_t2i, relevance_t2i, self.tau, self.k, self.gain,
                                      reducer=reducer)
        return (1 - self.weight) * triplet + self.weight * (i2t + t2i) / 2

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, tau={self.tau}, weight={self.weight}, k={self.k}, gain={self.gain!r}, "
                f"max_violation={self.max_violation}, triplet_reduction={self.triplet_reduction!r}")


class TripletLoss(_VSETripletPart):
    """VSE++ triplet loss (docs/contrastive.md §1; `triplet_loss`) as a module with the in-batch
    signature of the others; relevance is accepted and not used.

    Args:
        margin: the hinge's margin.
        max_violation: hardest negative (VSE++) or the sum over negatives (VSE0).
        reduction: ``"mean"`` (the two directions' means averaged) or ``"sum"`` (every query).

    Shape:
        {shape}

    Returns:
        A scalar, in the dtype of ``scores``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = TripletLoss(margin=0.2)(img @ img.T)
    """

    def __init__(self, margin: float = 0.2, max_violation: bool = True, reduction: str = "mean") -> None:
        super().__init__()
        triplet_module_args(margin, reduction)
        self.margin, self.max_violation, self.triplet_reduction = margin, max_violation, reduction

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor | None = None,
                relevance_t2i: torch.Tensor | None = None, positives: torch.Tensor | None = None,
                scores_t2i: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        if relevance_i2t is None:   # unused; _directions checks it is a tensor
            relevance_i2t = scores.detach()
        return self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i, reducer)[2]


class InfoNCELoss(_BothDirections):
    r"""InfoNCE (CLIP's contrastive loss; docs/contrastive.md §2; `infonce_loss`) as a module with
    the in-batch signature of the others; relevance is accepted and not used.

    Args:
        temperature: T > 0, or the initial T when learned.
        learn_temperature: learn CLIP's logit scale: a parameter ``logit_scale`` = log(1 / T),
            used as ``exp(logit_scale)`` clamped to at most 100 (CLIP's bound; the gradient stops
            there, as CLIP's in-place clamp stops the parameter).

    Shape:
        {shape} ``logit_scale=`` (forward, keyword): a scale 1 / T to use instead of the module's
        own (a float, or a scalar tensor such as open_clip's ``model.logit_scale.exp()``, which
        then receives the gradient).

    Returns:
        A scalar: the average of the two directions' means.

    Example:
        >>> loss_fn = InfoNCELoss(learn_temperature=True)
        >>> img, txt = torch.randn(8, 4), torch.randn(8, 4)
        >>> loss = loss_fn(img @ txt.T)   # optimise loss_fn.parameters() with the model's
    """

    MAX_LOGIT_SCALE = 100.0

    def __init__(self, temperature: float = 0.05, learn_temperature: bool = False) -> None:
        super().__init__()
        check.positive(temperature, "temperature")
        self.temperature, self.learn_temperature = temperature, bool(learn_temperature)
        if self.learn_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def logit_scale_value(self) -> torch.Tensor | float:
        """The scale 1 / T the logits use now (a tensor that carries the gradient when learned)."""
        if self.learn_temperature:
            return self.logit_scale.clamp(max=math.log(self.MAX_LOGIT_SCALE)).exp()
        return 1 / self.temperature

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor | None = None,
                relevance_t2i: torch.Tensor | None = None, positives: torch.Tensor | None = None,
                scores_t2i: torch.Tensor | None = None, *, reducer: Reducer | None = None,
                logit_scale: torch.Tensor | float | None = None) -> torch.Tensor:
        if relevance_i2t is None:   # unused; _directions checks it is a tensor
            relevance_i2t = scores.detach()
        if logit_scale is not None:
            check_logit_scale(logit_scale)
        elif self.learn_temperature:
            logit_scale = self.logit_scale_value()
        return self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i, reducer,
                                logit_scale=logit_scale)[2]

    def _pair_loss(self, scores, relevance, positives=None, reducer=None, logit_scale=None):
        scale = logit_scale
        if scale is not None:   # a tensor scale's gradient flows through the product
            # float16 / bfloat16 scores: the product in float32 (scale * S overflows float16 at
            # scale 100 and |S| > 655), the loss returned in the scores' dtype.
            acc = _ops._acc_dtype(scores)
            scaled = scores.to(acc) * (scale.to(acc) if isinstance(scale, torch.Tensor) else float(scale))
            return losses.infonce_loss(scaled, 1.0, "mean", positives, reducer=reducer).to(scores.dtype)
        return losses.infonce_loss(scores, self.temperature, "mean", positives, reducer=reducer)

    _pair_reduction = "mean"

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, learn_temperature={self.learn_temperature}"


def check_logit_scale(logit_scale):
    """A positive finite number, or a scalar floating tensor (its value is not checked: no host sync)."""
    if isinstance(logit_scale, torch.Tensor):
        if logit_scale.numel() != 1 or not logit_scale.is_floating_point():
            raise ValueError(f"logit_scale must be a number or a one-element floating tensor, got a "
                             f"{logit_scale.dtype} tensor of shape {tuple(logit_scale.shape)}")
    else:
        check.positive(logit_scale, "logit_scale")


class TripletSNLoss(nn.Module):
    """Triplet-SN (docs/bcls.md §1; `triplet_sn_loss`) on a square in-batch matrix, or rectangular
    rows with ``positives``.

    Args:
        margin: the margin m.
        temperature: T > 0 of the soft negative mining.
        rho: negatives need relevance strictly below ``rho`` (``inf``: every ``j != p``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Shape:
        forward(scores (B, B) or (Q, N), relevance=None (same shape), positives=None (Q,), *,
        reducer=None).

    Returns:
        (2, B) or (Q,) for ``"none"``, else a scalar, in the dtype of ``scores``.

    Example:
        >>> TripletSNLoss(temperature=0.05)(torch.randn(6, 6), torch.eye(6)).shape
        torch.Size([])
    """

    def __init__(self, margin: float = 0.2, temperature: float = 0.01, rho: float = 1.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        triplet_sn_module_args(margin, temperature, rho, reduction)
        self.margin, self.temperature, self.rho, self.reduction = margin, temperature, rho, reduction

    def forward(self, scores: torch.Tensor, relevance: torch.Tensor | None = None,
                positives: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        return bcls.triplet_sn_loss(scores, relevance, self.margin, self.temperature, self.rho, self.reduction,
                                    positives, reducer=reducer)


class KendallRankLoss(nn.Module):
    """Kendall ranking loss on (Q, N) scores against continuous relevance (docs/bcls.md §2); the
    module form of `kendall_loss`.

    Args:
        gap: the pair rule's relevance gap (``None``: 0.3 full, 0 SW-HS).
        phi: ``"hinge"``, ``"logistic"`` or ``"tanh"``.
        margin: the hinge's margin.
        temperature: T > 0 of the logistic and tanh surrogates.
        sampling: ``"full"`` or ``"swhs"``.
        window: the SW-HS window.
        stride: the SW-HS stride (default ``window``).
        reduction: ``"mean"`` (over the terms), ``"sum"`` or ``"none"`` (per-row sums).

    Shape:
        forward(scores (Q, N), relevance (Q, N), valid=None (Q, N) bool, *, reducer=None).

    Returns:
        (Q,) for ``"none"``, else a scalar, in the dtype of ``scores``.

    Example:
        >>> KendallRankLoss(sampling="swhs", window=2)(torch.randn(4, 10), torch.rand(4, 10)).shape
        torch.Size([])
    """

    def __init__(self, gap: float | None = None, phi: str = "hinge", margin: float = 0.0, temperature: float = 0.01,
                 sampling: str = "full", window: int = 8, stride: int | None = None, reduction: str = "mean") -> None:
        super().__init__()
        kendall_module_args(gap, phi, margin, temperature, sampling, window, stride, reduction)
        self.gap, self.phi, self.margin, self.temperature = gap, phi, margin, temperature
        self.sampling, self.window, self.stride, self.reduction = sampling, window, stride, reduction

    def forward(self, scores: torch.Tensor, relevance: torch.Tensor, valid: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        return bcls.kendall_loss(scores, relevance, self.gap, self.phi, self.margin, self.temperature,
                                 self.sampling, self.window, self.stride, valid, self.reduction,
                                 reducer=reducer)


class BCLSLoss(_BothDirections):
    """BCLS (Li et al., arXiv:2210.11319; docs/bcls.md §6) on in-batch scores:

        TripletSN(S, R_i2t) + mu * (Kendall(S, R_i2t) + Kendall(S.T, R_t2i)) / 2

    with the Kendall loss sampled by SW-HS by default. Triplet-SN's soft negatives (rho < 1) read
    `relevance_i2t` for both of its directions on a square matrix.

    Args:
        mu: the Kendall weight (finite).
        margin, temperature, rho: Triplet-SN's (`TripletSNLoss`).
        gap, phi, sampling, window, stride: the Kendall loss's (`KendallRankLoss`).
        kendall_margin, kendall_temperature: the Kendall surrogate's margin and temperature.

    Shape:
        {shape}

    Returns:
        A scalar, in the dtype of ``scores``.

    Example:
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = BCLSLoss(temperature=0.05, window=2)(img @ img.T, torch.eye(8))
    """

    def __init__(self, mu: float = 1.0, margin: float = 0.2, temperature: float = 0.01, rho: float = 1.0,
                 gap: float | None = None, phi: str = "hinge", kendall_margin: float = 0.0,
                 kendall_temperature: float = 0.01, sampling: str = "swhs", window: int = 8,
                 stride: int | None = None) -> None:
        super().__init__()
        check.finite(mu, "mu")
        self.mu = mu
        self.triplet = TripletSNLoss(margin, temperature, rho)
        self.kendall = KendallRankLoss(gap, phi, kendall_margin, kendall_temperature, sampling, window, stride)

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor, relevance_t2i: torch.Tensor | None = None,
                positives: torch.Tensor | None = None, scores_t2i: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        s_t2i, relevance_t2i, triplet = self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i,
                                                         reducer)
        kendall = (self.kendall(scores, relevance_i2t, reducer=reducer)
                   + self.kendall(s_t2i, relevance_t2i, reducer=reducer)) / 2
        return triplet + self.mu * kendall

    def _pair_loss(self, scores, relevance, positives=None, reducer=None):
        return self.triplet(scores, relevance, positives, reducer=reducer)

    @property
    def _pair_reduction(self):
        return self.triplet.reduction


for _cls in (ListwiseITRLoss, TripletLoss, InfoNCELoss, BCLSLoss):
    _cls.__doc__ = _cls.__doc__.replace("{shape}", _IN_BATCH_SHAPE)
del _cls
