"""nn.Module forms of the losses. Each takes its functions from `impl`, so that the reference
(itr_kernels.reference) reuses the same composition over its pure-PyTorch functions."""
from torch import nn

from . import _validate as check
from . import losses


class SmoothNDCGLoss(nn.Module):
    """Smooth-NDCG loss on (Q, N) scores against (Q, N) relevance; see `smooth_ndcg_loss`."""

    impl = losses

    def __init__(self, tau=0.01, k=None, gain="exp", reduction="mean"):
        super().__init__()
        check.positive(tau, "tau")
        check.top_k(k)
        check.choice(gain, "gain", losses.GAINS)
        check.choice(reduction, "reduction", losses.REDUCTIONS)
        self.tau, self.k, self.gain, self.reduction = tau, k, gain, reduction

    def forward(self, scores, relevance, valid=None):
        return self.impl.smooth_ndcg_loss(scores, relevance, self.tau, self.k, self.gain, valid, self.reduction)

    def extra_repr(self):
        return f"tau={self.tau}, k={self.k}, gain={self.gain!r}, reduction={self.reduction!r}"


class ListwiseITRLoss(nn.Module):
    """Listwise ITR loss (SPEC section 4) on a square in-batch score matrix S = img @ txt.T:

        (1 - weight) * triplet(S) + weight * (SNDCG(S, R_i2t) + SNDCG(S.T, R_t2i)) / 2

    `relevance_t2i` defaults to `relevance_i2t.T`. `triplet_reduction` "mean" averages the two
    triplet directions (the seed's code), "sum" adds every row (VSE++)."""

    impl = losses

    def __init__(self, margin=0.2, tau=0.01, weight=0.5, k=None, gain="exp", max_violation=True,
                 triplet_reduction="mean"):
        super().__init__()
        check.finite(margin, "margin")
        check.positive(tau, "tau")
        check.unit_interval(weight, "weight")
        check.top_k(k)
        check.choice(gain, "gain", losses.GAINS)
        check.choice(triplet_reduction, "triplet_reduction", ("mean", "sum"))
        self.margin, self.tau, self.weight, self.k, self.gain = margin, tau, weight, k, gain
        self.max_violation, self.triplet_reduction = max_violation, triplet_reduction

    def forward(self, scores, relevance_i2t, relevance_t2i=None):
        check.square(scores)
        if relevance_t2i is None:
            check.tensor(relevance_i2t, "relevance_i2t")
            relevance_t2i = relevance_i2t.T
        triplet = self.impl.triplet_loss(scores, self.margin, self.max_violation, self.triplet_reduction)
        i2t = self.impl.smooth_ndcg_loss(scores, relevance_i2t, self.tau, self.k, self.gain)
        t2i = self.impl.smooth_ndcg_loss(scores.T, relevance_t2i, self.tau, self.k, self.gain)
        return (1 - self.weight) * triplet + self.weight * (i2t + t2i) / 2

    def extra_repr(self):
        return (f"margin={self.margin}, tau={self.tau}, weight={self.weight}, k={self.k}, gain={self.gain!r}, "
                f"max_violation={self.max_violation}, triplet_reduction={self.triplet_reduction!r}")
