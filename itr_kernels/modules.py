"""nn.Module forms of the losses. The argument checks (constructors, in-batch forward) are
functions here, shared with itr_kernels.reference's own modules."""
import math

import torch
from torch import nn

from . import _validate as check
from . import bcls, losses


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
    """Smooth-NDCG loss on (Q, N) scores against (Q, N) relevance; see `smooth_ndcg_loss`."""

    def __init__(self, tau=0.01, k=None, gain="exp", reduction="mean"):
        super().__init__()
        smooth_ndcg_module_args(tau, k, gain, reduction)
        self.tau, self.k, self.gain, self.reduction = tau, k, gain, reduction

    def forward(self, scores, relevance, valid=None):
        return losses.smooth_ndcg_loss(scores, relevance, self.tau, self.k, self.gain, valid, self.reduction)

    def extra_repr(self):
        return f"tau={self.tau}, k={self.k}, gain={self.gain!r}, reduction={self.reduction!r}"


class _BothDirections(nn.Module):
    """An in-batch loss over both directions with a pairwise part, on a square matrix or on
    rectangular rows of each direction against a global batch. Subclasses give `_pair_loss(scores,
    relevance, positives=None)` (one call covers both directions of a square matrix) and
    `_pair_reduction` ("mean": the two directions are averaged, "sum": added)."""

    def _directions(self, scores, relevance_i2t, relevance_t2i, positives, scores_t2i):
        """(text-to-image rows, their relevance, the pairwise part over both directions).

        Square: the rows of scores.T and relevance_i2t.T by default. Rectangular (`positives`
        given): `scores_t2i` as given, and each direction's rows against its positives, combined as
        the square form combines them."""
        relevance_t2i = in_batch_args(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        if positives is None:
            return scores.T, relevance_t2i, self._pair_loss(scores, relevance_i2t)
        i2t = self._pair_loss(scores, relevance_i2t, positives)
        t2i = self._pair_loss(scores_t2i, relevance_t2i, positives)
        return scores_t2i, relevance_t2i, (i2t + t2i) / 2 if self._pair_reduction == "mean" else i2t + t2i


class _VSETripletPart(_BothDirections):
    """The VSE++ triplet as the pairwise part (needs margin, max_violation, triplet_reduction)."""

    def _pair_loss(self, scores, relevance, positives=None):
        return losses.triplet_loss(scores, self.margin, self.max_violation, self.triplet_reduction, positives)

    @property
    def _pair_reduction(self):
        return self.triplet_reduction


class ListwiseITRLoss(_VSETripletPart):
    """Listwise ITR loss (SPEC section 4) on a square in-batch score matrix S = img @ txt.T:

        (1 - weight) * triplet(S) + weight * (SNDCG(S, R_i2t) + SNDCG(S.T, R_t2i)) / 2

    `relevance_t2i` defaults to `relevance_i2t.T`. `triplet_reduction` "mean" averages the two
    triplet directions (the seed's code), "sum" adds every row (VSE++)."""

    def __init__(self, margin=0.2, tau=0.01, weight=0.5, k=None, gain="exp", max_violation=True,
                 triplet_reduction="mean"):
        super().__init__()
        listwise_module_args(margin, tau, weight, k, gain, triplet_reduction)
        self.margin, self.tau, self.weight, self.k, self.gain = margin, tau, weight, k, gain
        self.max_violation, self.triplet_reduction = max_violation, triplet_reduction

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        """Square in-batch `scores` (positives on the diagonal), or, with `positives` (the column of
        each row's positive), rectangular image-to-text rows `scores` and text-to-image rows
        `scores_t2i` against a global batch (itr_kernels.distributed)."""
        s_t2i, relevance_t2i, triplet = self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        i2t = losses.smooth_ndcg_loss(scores, relevance_i2t, self.tau, self.k, self.gain)
        t2i = losses.smooth_ndcg_loss(s_t2i, relevance_t2i, self.tau, self.k, self.gain)
        return (1 - self.weight) * triplet + self.weight * (i2t + t2i) / 2

    def extra_repr(self):
        return (f"margin={self.margin}, tau={self.tau}, weight={self.weight}, k={self.k}, gain={self.gain!r}, "
                f"max_violation={self.max_violation}, triplet_reduction={self.triplet_reduction!r}")


class TripletLoss(_VSETripletPart):
    """VSE++ triplet loss (`triplet_loss`) as a module with the in-batch signature of the others:
    forward(scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None);
    relevance is not used."""

    def __init__(self, margin=0.2, max_violation=True, reduction="mean"):
        super().__init__()
        triplet_module_args(margin, reduction)
        self.margin, self.max_violation, self.triplet_reduction = margin, max_violation, reduction

    def forward(self, scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None):
        if relevance_i2t is None:   # unused; _directions checks it is a tensor
            relevance_i2t = scores.detach()
        return self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)[2]


class InfoNCELoss(_BothDirections):
    r"""InfoNCE (CLIP's contrastive loss, `infonce_loss`) as a module with the in-batch signature of
    the others.

    Args:
        temperature: T > 0, or the initial T when learned.
        learn_temperature: learn CLIP's logit scale: a parameter ``logit_scale`` = log(1 / T),
            used as ``exp(logit_scale)`` clamped to at most 100 (CLIP's bound; the gradient stops
            there, as CLIP's in-place clamp stops the parameter).

    Shape:
        forward(scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None):
        square (B, B) ``scores``, or rectangular image-to-text rows ``scores`` and text-to-image
        rows ``scores_t2i`` (Q, N) with ``positives`` (Q,) against a global batch
        (itr_kernels.distributed). Relevance is not used. Returns a scalar: the average of the
        two directions' means.

    Example:
        >>> loss_fn = InfoNCELoss(learn_temperature=True)
        >>> img, txt = torch.randn(8, 4), torch.randn(8, 4)
        >>> loss = loss_fn(img @ txt.T)   # optimise loss_fn.parameters() with the model's
    """

    MAX_LOGIT_SCALE = 100.0

    def __init__(self, temperature: float = 0.05, learn_temperature: bool = False):
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

    def forward(self, scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None):
        if relevance_i2t is None:   # unused; _directions checks it is a tensor
            relevance_i2t = scores.detach()
        return self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)[2]

    def _pair_loss(self, scores, relevance, positives=None):
        if self.learn_temperature:   # the scale's gradient flows through the product
            scores = scores * self.logit_scale_value().to(scores.dtype)
            return losses.infonce_loss(scores, 1.0, "mean", positives)
        return losses.infonce_loss(scores, self.temperature, "mean", positives)

    _pair_reduction = "mean"

    def extra_repr(self):
        return f"temperature={self.temperature}, learn_temperature={self.learn_temperature}"


class TripletSNLoss(nn.Module):
    """Triplet-SN on a square in-batch matrix; see `triplet_sn_loss`."""

    def __init__(self, margin=0.2, temperature=0.01, rho=1.0, reduction="mean"):
        super().__init__()
        triplet_sn_module_args(margin, temperature, rho, reduction)
        self.margin, self.temperature, self.rho, self.reduction = margin, temperature, rho, reduction

    def forward(self, scores, relevance=None, positives=None):
        return bcls.triplet_sn_loss(scores, relevance, self.margin, self.temperature, self.rho, self.reduction,
                                    positives)


class KendallRankLoss(nn.Module):
    """Kendall ranking loss on (Q, N) scores against continuous relevance; see `kendall_loss`."""

    def __init__(self, gap=None, phi="hinge", margin=0.0, temperature=0.01, sampling="full", window=8, stride=None,
                 reduction="mean"):
        super().__init__()
        kendall_module_args(gap, phi, margin, temperature, sampling, window, stride, reduction)
        self.gap, self.phi, self.margin, self.temperature = gap, phi, margin, temperature
        self.sampling, self.window, self.stride, self.reduction = sampling, window, stride, reduction

    def forward(self, scores, relevance, valid=None):
        return bcls.kendall_loss(scores, relevance, self.gap, self.phi, self.margin, self.temperature,
                                 self.sampling, self.window, self.stride, valid, self.reduction)


class BCLSLoss(_BothDirections):
    """BCLS (SPEC section 5) on a square in-batch score matrix:

        TripletSN(S, R_i2t) + mu * (Kendall(S, R_i2t) + Kendall(S.T, R_t2i)) / 2

    with the Kendall loss sampled by SW-HS by default. `relevance_t2i` defaults to
    `relevance_i2t.T`; Triplet-SN's soft negatives (rho < 1) read `relevance_i2t` for both of its
    directions."""

    def __init__(self, mu=1.0, margin=0.2, temperature=0.01, rho=1.0, gap=None, phi="hinge", kendall_margin=0.0,
                 kendall_temperature=0.01, sampling="swhs", window=8, stride=None):
        super().__init__()
        check.finite(mu, "mu")
        self.mu = mu
        self.triplet = TripletSNLoss(margin, temperature, rho)
        self.kendall = KendallRankLoss(gap, phi, kendall_margin, kendall_temperature, sampling, window, stride)

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        """As ListwiseITRLoss.forward: square, or rectangular rows of both directions with `positives`."""
        s_t2i, relevance_t2i, triplet = self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        kendall = (self.kendall(scores, relevance_i2t) + self.kendall(s_t2i, relevance_t2i)) / 2
        return triplet + self.mu * kendall

    def _pair_loss(self, scores, relevance, positives=None):
        return self.triplet(scores, relevance, positives)

    @property
    def _pair_reduction(self):
        return self.triplet.reduction

