"""Hypothesis strategies for test_properties.py: score matrices of every shape (0 and 1 rows or
columns included), dtype and value regime (ties, signed zeros, huge, tiny, NaN, +-inf), relevance on
a grid exact in every dtype, masks (fully masked rows included), and views of them (transposed,
strided, sliced, expanded with stride 0).

A case draws only small integers and choices; the tensors come from a torch.Generator seeded by
the case, so examples are cheap and the printed falsifying example replays exactly."""
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)
# "normal": N(0, 1); "ties": a coarse grid with signed zeros; "huge"/"tiny": large or small
# magnitudes that the dtype still holds (float16 overflows past 65504, its subnormals start at 6e-8).
REGIMES = ("normal", "ties", "huge", "tiny")
# Relevance on the 1/64 grid: exact in every dtype (bfloat16 has 8 significant bits), so no
# dtype conversion moves a relevance or a pair difference across a gap.
REL_LEVELS = 64


@dataclass
class Case:
    q: int
    n: int
    dtype: torch.dtype
    regime: str
    seed: int
    masked: str            # "none", "random" (fully masked rows included), "all" (a mask of True)
    rel_kind: str          # "grid" (1/64, many ties), "coarse" (1/4), "distinct" (no ties in the matrix when it fits 65 levels), "zeros"
    specials: tuple = ()   # ((kind, row, col), ...), kind in "nan", "+inf", "-inf"
    extra: dict = field(default_factory=dict)

    def __repr__(self):    # what a falsifying example prints
        return (f"Case(q={self.q}, n={self.n}, dtype={self.dtype}, regime={self.regime!r}, seed={self.seed}, "
                f"masked={self.masked!r}, rel_kind={self.rel_kind!r}, specials={self.specials!r}, "
                f"extra={self.extra!r})")

    # ---- tensors (float64 values already rounded to the case's dtype) ----

    def generator(self, salt=0):
        return torch.Generator().manual_seed(self.seed * 7919 + salt)

    def scores64(self):
        g = self.generator(1)
        q, n = self.q, self.n
        if self.regime == "ties":
            s = torch.randint(-2, 3, (q, n), generator=g).double() / 2
            flip = torch.rand(q, n, generator=g) < 0.5
            s = torch.where((s == 0) & flip, -0.0, s)   # -0.0 ties +0.0
        else:
            s = torch.randn(q, n, generator=g, dtype=torch.float64)
            low = self.dtype in LOW_PRECISION
            if self.regime == "huge":
                s = s * (1e3 if low else 1e20)
            elif self.regime == "tiny":
                s = s * (1e-3 if low else 1e-25)
        for kind, row, col in self.specials:
            s[row, col] = {"nan": float("nan"), "+inf": float("inf"), "-inf": -float("inf")}[kind]
        return s.to(self.dtype).double()

    def scores(self, device="cpu"):
        return self.scores64().to(device, self.dtype)

    def relevance64(self):
        g = self.generator(2)
        q, n = self.q, self.n
        if self.rel_kind == "zeros":
            r = torch.zeros(q, n, dtype=torch.float64)
        elif self.rel_kind == "coarse":
            r = torch.randint(0, 5, (q, n), generator=g).double() / 4
        elif self.rel_kind == "distinct":
            if q * n <= REL_LEVELS + 1:   # distinct in the whole matrix (rows and columns)
                r = torch.randperm(REL_LEVELS + 1, generator=g)[:q * n].double().reshape(q, n) / REL_LEVELS
            elif n <= REL_LEVELS + 1:
                rows = [torch.randperm(REL_LEVELS + 1, generator=g)[:n].double() / REL_LEVELS for _ in range(q)]
                r = torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.float64)
            else:
                r = torch.rand(q, n, generator=g, dtype=torch.float64)
        else:
            r = torch.randint(0, REL_LEVELS + 1, (q, n), generator=g).double() / REL_LEVELS
        return r

    def relevance(self, device="cpu"):
        return self.relevance64().to(device, self.dtype)

    def valid(self, device="cpu"):
        if self.masked == "none":
            return None
        if self.masked == "all":
            return torch.ones(self.q, self.n, dtype=torch.bool, device=device)
        g = self.generator(3)
        v = torch.rand(self.q, self.n, generator=g) < 0.6
        if self.q:
            v[torch.randint(0, self.q, (1,), generator=g)] = False   # a fully masked row
        for _, row, col in self.specials:   # specials sit on valid entries, in rows with >= 2 valid
            v[row, col] = True
            v[row, (col + 1) % self.n] = True
        return v.to(device)

    def bool_mask(self, salt, p=0.4, device="cpu"):
        return (torch.rand(self.q, self.n, generator=self.generator(salt)) < p).to(device)

    def upstream(self, shape, device="cpu"):
        return (torch.rand(shape, generator=self.generator(4), dtype=torch.float64) + 0.5).to(device)

    def positives(self, device="cpu"):
        """A column per row (rectangular losses); needs n >= 1."""
        return torch.randint(0, self.n, (self.q,), generator=self.generator(5)).to(device)


def _specials(draw, q, n, kinds, min_valid_cols):
    """At most one special per row and per column (so no two equal infinities meet in a pair), on
    rows with at least `min_valid_cols` columns; NaN anywhere, infinities only if allowed."""
    if not kinds or q == 0 or n < min_valid_cols:
        return ()
    count = draw(st.integers(0, min(2, q, n)))
    rows = draw(st.permutations(range(q)))[:count]
    cols = draw(st.permutations(range(n)))[:count]
    out = []
    for r, c in zip(rows, cols):
        out.append((draw(st.sampled_from(kinds)), r, c))
    return tuple(out)


@st.composite
def cases(draw, max_q=6, max_n=8, square=False, dtypes=ALL_DTYPES, regimes=REGIMES, masks=("none", "random", "all"),
          rel_kinds=("grid", "coarse", "distinct", "zeros"), specials=("nan",), min_q=0, min_n=0, extra=None):
    """A Case. `specials`: the kinds of special score that may be injected (empty for none); they
    go on rows with >= 2 columns, on valid entries (the mask is forced True there)."""
    q = draw(st.integers(min_q, max_q))
    n = q if square else draw(st.integers(min_n, max_n))
    dtype = draw(st.sampled_from(dtypes))
    regime = draw(st.sampled_from(regimes))
    masked = draw(st.sampled_from(masks))
    rel_kind = draw(st.sampled_from(rel_kinds))
    seed = draw(st.integers(0, 2**20))
    sp = _specials(draw, q, n, tuple(specials), 2) if draw(st.booleans()) else ()
    ex = {k: draw(v) for k, v in (extra or {}).items()}
    return Case(q, n, dtype, regime, seed, masked, rel_kind, sp, ex)


# ---- views: the same values through other strides ----

VIEWS = ("contiguous", "transposed", "strided", "sliced", "expanded_row", "expanded_col")


def as_view(x, kind):
    """A tensor equal to x (2-D) but laid out as `kind`: a view into a larger or transposed base.
    "expanded_*" replace x by one of its rows (columns) broadcast with stride 0: the caller compares
    against a contiguous copy of what this returns, not against x."""
    q, n = x.shape
    if kind == "contiguous":
        return x.contiguous()
    if kind == "transposed":
        return x.T.contiguous().T
    if kind == "strided":   # every other column of a wider base
        base = torch.zeros(q, 2 * n + 1, dtype=x.dtype, device=x.device)
        base[:, 1::2] = x
        return base[:, 1::2]
    if kind == "sliced":    # rows 1, 3, 5, ... of a taller base, columns offset by 1
        base = torch.zeros(2 * q + 1, n + 2, dtype=x.dtype, device=x.device)
        base[1::2, 1:n + 1] = x
        return base[1::2, 1:n + 1]
    if kind == "expanded_row":
        return (x[:1] if q else x[:0]).expand(q, n) if q else x
    if kind == "expanded_col":
        return (x[:, :1] if n else x[:, :0]).expand(q, n) if n else x
    raise ValueError(kind)
