"""Continuous-label terms on any pairwise base: a pairwise in-batch loss (VSE++ triplet, its sum of
hinges, Triplet-SN or InfoNCE) plus a ranking term against continuous relevance (S-NDCG or the
Kendall loss) over both directions. ListwiseITRLoss is ``ContinuousLabelLoss("triplet", "sndcg")``
and BCLSLoss is ``ContinuousLabelLoss("triplet_sn", "kendall")``; the other pairs are the baselines
that separate what the term adds from what the base does."""
import inspect
import sys
from typing import Any

import torch
from torch import nn

from . import _validate as check
from .losses import Reducer
from .modules import InfoNCELoss, KendallRankLoss, SmoothNDCGLoss, TripletLoss, TripletSNLoss, _BothDirections

MIXES = ("convex", "add")


class TripletSNITRLoss(_BothDirections):
    r"""Triplet-SN (`triplet_sn_loss`) with the in-batch signature of the other ITR modules, so that
    it can stand alone or be the base of a ContinuousLabelLoss, on one process or a global batch.

    Args:
        margin: the hinge margin m.
        temperature: T > 0 of the soft maximum over negatives.
        rho: negatives are the candidates j != p with ``R[q, j] < rho`` (1: the image's other own
            captions, relevance exactly 1, are not negatives; ``inf``: every j != p).

    Shape:
        forward(scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None): square
        (B, B) ``scores`` (Triplet-SN reads ``relevance_i2t`` for both directions, as BCLSLoss), or
        rectangular rows of both directions (Q, N) with ``positives`` (Q,).

    Returns:
        A scalar: the average of the two directions' means (docs/bcls.md, Triplet-SN).

    Example:
        >>> loss_fn = TripletSNITRLoss(margin=0.2, temperature=0.05)
        >>> loss = loss_fn(torch.randn(8, 8), torch.rand(8, 8))
    """

    def __init__(self, margin: float = 0.2, temperature: float = 0.01, rho: float = 1.0) -> None:
        super().__init__()
        self.triplet = TripletSNLoss(margin, temperature, rho)

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor, relevance_t2i: torch.Tensor | None = None,
                positives: torch.Tensor | None = None, scores_t2i: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        return self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i, reducer)[2]

    def _pair_loss(self, scores, relevance, positives=None, reducer=None):
        return self.triplet(scores, relevance, positives, reducer=reducer)

    _pair_reduction = "mean"


# name -> (class in `parts`, fixed constructor arguments); every other argument of the class's
# constructor except `reduction` is a keyword of ContinuousLabelLoss
BASES = {"triplet": ("TripletLoss", {"max_violation": True}),
         "triplet_sum": ("TripletLoss", {"max_violation": False}),
         "triplet_sn": ("TripletSNITRLoss", {}),
         "infonce": ("InfoNCELoss", {})}
TERMS = {"sndcg": ("SmoothNDCGLoss", {}),
         "kendall": ("KendallRankLoss", {})}
# the Kendall term's own margin and temperature, named as in BCLSLoss (the bases have theirs)
TERM_RENAMES = {"kendall": {"margin": "kendall_margin", "temperature": "kendall_temperature"}}
# the term's defaults that differ from its module's: SW-HS sampling, as BCLS
TERM_DEFAULTS = {"kendall": {"sampling": "swhs"}}
DEFAULT_MIX = {"sndcg": "convex", "kendall": "add"}


def _parameters(cls):
    return [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "reduction")]


class ContinuousLabelLoss(_BothDirections):
    r"""A pairwise base loss plus a continuous-label ranking term over both directions:

    .. math::
        L = c \cdot \text{base}(S) + \text{weight} \cdot
            \frac{\text{term}(S, R_{i2t}) + \text{term}(S_{t2i}, R_{t2i})}{2}

    with :math:`c = 1 - \text{weight}` (``mix="convex"``, ListwiseITRLoss's form) or :math:`c = 1`
    (``mix="add"``, BCLS's :math:`\mu` form). ``ContinuousLabelLoss("triplet", "sndcg")`` is
    ListwiseITRLoss and ``ContinuousLabelLoss("triplet_sn", "kendall")`` is BCLSLoss, value and
    gradient.

    Args:
        base: the pairwise loss: ``"triplet"`` (VSE++ max violation), ``"triplet_sum"`` (sum of
            hinges), ``"triplet_sn"`` (Triplet-SN, TripletSNITRLoss) or ``"infonce"`` (InfoNCELoss);
            or such a module (a TripletLoss, TripletSNITRLoss or InfoNCELoss instance).
        term: ``"sndcg"`` (SmoothNDCGLoss: ``smooth_ndcg_loss``) or ``"kendall"`` (KendallRankLoss:
            ``kendall_loss``, SW-HS sampling by default); or such a module, reduction "mean" or "sum".
        weight: the term's weight; in [0, 1] with ``mix="convex"``. Default 0.5 (convex) or 1.0 (add).
        mix: ``"convex"`` or ``"add"``; default ``"convex"`` for S-NDCG, ``"add"`` for Kendall.
        **kwargs: with a base or term given by name, its module's arguments: the base's (triplet:
            ``margin``; triplet_sn: ``margin``, ``temperature``, ``rho``; infonce: ``temperature``,
            ``learn_temperature``) and the term's (sndcg: ``tau``, ``k``, ``gain``; kendall: ``gap``,
            ``phi``, ``kendall_margin``, ``kendall_temperature``, ``sampling``, ``window``,
            ``stride``). Reductions are "mean": the base averages its two directions, the term
            averages over each direction's counted rows (or pairs), then the two directions.

    Shape:
        forward(scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None): square
        in-batch (B, B) ``scores`` (positives on the diagonal; ``relevance_t2i`` defaults to
        ``relevance_i2t.T``), or, with ``positives`` (Q,) (the column of each row's positive),
        rectangular image-to-text rows ``scores`` and text-to-image rows ``scores_t2i`` (Q, N)
        against a global batch (itr_kernels.distributed). Relevance (Q, N) in [0, 1].

    Returns:
        A scalar (the terms: docs/smooth_rank_ndcg.md for S-NDCG, docs/bcls.md for Kendall and
        Triplet-SN).

    Example:
        >>> loss_fn = ContinuousLabelLoss("infonce", "kendall", weight=0.5, temperature=0.05)
        >>> img = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> txt = torch.nn.functional.normalize(torch.randn(8, 4), dim=1)
        >>> loss = loss_fn(img @ txt.T, torch.rand(8, 8))
    """

    parts = sys.modules[__name__]   # where base and term names find their classes

    def __init__(self, base: str | nn.Module = "triplet", term: str | nn.Module = "sndcg",
                 weight: float | None = None, mix: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(self.accepted_arguments(base, term)))
        if unknown:
            raise ValueError(f"ContinuousLabelLoss: unknown argument(s) {unknown} for base {_label(base)} and term "
                             f"{_label(term)}; it takes {self.accepted_arguments(base, term)}")
        if isinstance(term, str):
            name, fixed = TERMS[term]
            own = {param: kwargs[public] for public, param in self._term_arguments(term).items() if public in kwargs}
            term_module = getattr(self.parts, name)(**{**TERM_DEFAULTS.get(term, {}), **fixed, **own})
        elif isinstance(term, (SmoothNDCGLoss, KendallRankLoss)):
            if term.reduction == "none":
                raise ValueError("term must reduce to a scalar: reduction 'mean' or 'sum', got 'none'")
            term_module = term
        else:
            raise TypeError(f"term must be 'sndcg', 'kendall', a SmoothNDCGLoss or a KendallRankLoss, "
                            f"got {type(term).__name__}")
        if isinstance(base, str):
            name, fixed = BASES[base]
            base_module = getattr(self.parts, name)(**fixed, **{a: kwargs[a] for a in self._base_arguments(base)
                                                                  if a in kwargs})
        elif isinstance(base, (TripletLoss, TripletSNITRLoss, InfoNCELoss)):
            base_module = base
        else:
            raise TypeError(f"base must be one of {list(BASES)} or a TripletLoss, TripletSNITRLoss or InfoNCELoss, "
                            f"got {type(base).__name__}")
        term_name = "sndcg" if isinstance(term_module, SmoothNDCGLoss) else "kendall"
        mix = DEFAULT_MIX[term_name] if mix is None else mix
        check.choice(mix, "mix", MIXES)
        if weight is None:
            weight = 0.5 if mix == "convex" else 1.0
        if mix == "convex":
            check.unit_interval(weight, "weight")
        else:
            check.finite(weight, "weight")
        self.base, self.term, self.weight, self.mix = base_module, term_module, weight, mix

    @classmethod
    def accepted_arguments(cls, base: str | nn.Module, term: str | nn.Module) -> list[str]:
        """The keyword arguments that the constructor takes with this base and term (those given by name)."""
        return cls._base_arguments(base) + list(cls._term_arguments(term))

    @classmethod
    def _base_arguments(cls, base):
        if not isinstance(base, str):
            return []
        check.choice(base, "base", tuple(BASES))
        name, fixed = BASES[base]
        return [p for p in _parameters(getattr(cls.parts, name)) if p not in fixed]

    @classmethod
    def _term_arguments(cls, term):
        """{keyword: the term module's parameter}"""
        if not isinstance(term, str):
            return {}
        check.choice(term, "term", tuple(TERMS))
        name, fixed = TERMS[term]
        renames = TERM_RENAMES.get(term, {})
        return {renames.get(p, p): p for p in _parameters(getattr(cls.parts, name)) if p not in fixed}

    def forward(self, scores: torch.Tensor, relevance_i2t: torch.Tensor, relevance_t2i: torch.Tensor | None = None,
                positives: torch.Tensor | None = None, scores_t2i: torch.Tensor | None = None, *,
                reducer: Reducer | None = None) -> torch.Tensor:
        check.scores(scores)   # every argument is checked before any work (the base runs first)
        check.relevance(relevance_i2t, scores, "relevance_i2t")
        if relevance_t2i is not None:
            check.relevance(relevance_t2i, scores.T if positives is None else scores, "relevance_t2i")
        s_t2i, relevance_t2i, base = self._directions(scores, relevance_i2t, relevance_t2i, positives, scores_t2i,
                                                      reducer)
        term = (self.term(scores, relevance_i2t, reducer=reducer) + self.term(s_t2i, relevance_t2i, reducer=reducer)) / 2
        return ((1 - self.weight) if self.mix == "convex" else 1) * base + self.weight * term

    def _pair_loss(self, scores, relevance, positives=None, reducer=None):
        if isinstance(self.base, InfoNCELoss) and self.base.learn_temperature:   # its learned scale
            return self.base._pair_loss(scores, relevance, positives, reducer, self.base.logit_scale_value())
        return self.base._pair_loss(scores, relevance, positives, reducer)

    @property
    def _pair_reduction(self):
        return self.base._pair_reduction

    def extra_repr(self):
        return f"weight={self.weight}, mix={self.mix!r}"


def _label(x):
    return repr(x) if isinstance(x, str) else type(x).__name__
