"""Property-based tests (Hypothesis) of every public function and module of itr_kernels.

Truths: small brute-force float64 functions written here from the formulas of the contract
(README "API", docs and the decisions of issue 12), not from itr_kernels or itr_kernels.reference:
(Q, N, N) pair tensors and Python loops, gradients by autograd through them (a sigmoid with an
exact derivative, hinges with no gradient at the kink, hardest negatives and SW-HS selections by
explicit loops). The same truth functions run in float16 / bfloat16 give the "same computation in
plain PyTorch" that bounds the low-precision error.

Properties, over shapes with 0 and 1 rows or columns, every dtype, tied / signed-zero / huge / tiny
scores, NaN and +-inf scores, tiny and huge tau and T, masks with fully masked rows and tied
relevance:
  * values and gradients agree with the float64 truth (float64: 1e-10 relative; float32: 1e-5
    values, 1e-4 gradients, the suite's documented bound for the pair-term polynomial; float16 /
    bfloat16: at most twice the error of the same computation in that dtype, plus 2 ulp, or, where
    that computation itself breaks down, 8 ulp of the output (float32 accumulation));
  * the non-finite pattern of the output is the truth's (rounded to the output dtype): a NaN score
    makes NaN exactly the queries it enters; finite inputs give finite gradients;
  * permuting columns permutes (or leaves) the result where the math says so;
  * strided / transposed / sliced / expanded (stride 0) views give bit-identical results to
    contiguous copies; repeated runs and 1 vs 2 threads give bit-identical results;
  * masked candidates contribute exactly 0; double backward raises the documented error or is exact.

Examples are bounded (max_examples per test below) and drawn from the run's seed (conftest.SEED,
printed in the header and summary: ITR_TEST_SEED=<seed> replays a run). The cuda-emu device runs a
few tiny examples through the emulated CUDA kernels."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import conftest
import itr_kernels as ik

from prop_strategies import ALL_DTYPES, LOW_PRECISION, VIEWS, as_view, cases

TAUS = (1e-2, 0.1, 1.0)
INFONCE_TS = (0.01, 0.05, 1.0)
TS = (1e-2, 0.1, 1.0)
# the "extreme" inputs: huge and tiny tau / T (with huge and tiny scores)
EXTREME_TAUS = (1e-30, 1e-6, 1e6, 1e30)
EXTREME_TS = (1e-9, 1e-6, 1e-4, 1e6)
REDUCTIONS = ("none", "mean", "sum")
PHIS = ("hinge", "logistic", "tanh")


# ==== running a property ====

@pytest.fixture
def target(device, request):
    """(tensor device, emulated?) of a device-parametrised property."""
    return device, request.node.callspec.params["device"] == "cuda-emu"


def check(strategy, body, examples, device="cpu", emulated=False, emulated_examples=4):
    """Run body(case, device, emulated) on `examples` cases (`emulated_examples` under cuda-emu),
    drawn from the run's seed."""
    @settings(max_examples=emulated_examples if emulated else examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @seed(conftest.SEED)
    @given(case=strategy)
    def prop(case):
        body(case, device, emulated)

    prop()


def limits(emulated, max_q=6, max_n=8):
    """Emulated cases stay tiny: the emulation runs a block's threads one at a time."""
    return dict(max_q=3, max_n=4) if emulated else dict(max_q=max_q, max_n=max_n)


# ==== float64 truths (any dtype: run in float16 they are the same-precision baseline) ====

class _Sigmoid(torch.autograd.Function):
    """sigmoid with the derivative e^-|x| / (1 + e^-|x|)^2: exact where sigmoid(1 - sigmoid) rounds to 0."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.sigmoid(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        e = torch.exp(-x.abs())
        return g * e / (1 + e) ** 2


class _Softplus(torch.autograd.Function):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|), derivative sigmoid(x) (finite at x = +-inf)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(min=0) + torch.log1p(torch.exp(-x.abs()))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * _Sigmoid.apply(x)


sig = _Sigmoid.apply
softplus = _Softplus.apply


def hinge(y):
    """[y]_+ with NaN kept and no gradient at y = 0."""
    return torch.where(y > 0, y, torch.where(torch.isnan(y), y, torch.zeros_like(y)))


def _mask(valid, s):
    return torch.ones_like(s, dtype=torch.bool) if valid is None else valid.to(s.device)


def reduce_truth(per, counted, reduction):
    """none: per query; sum; mean over the counted queries (all if None), 0 when there are none."""
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    n = per.numel() if counted is None else int(counted.sum())
    return per.sum() / max(n, 1)


def rank_truth(s, tau, valid=None):
    """R[q, j] = 1 + sum_{k != j, k valid} sigmoid((S[q,k] - S[q,j]) / tau); 0 where masked."""
    n = s.shape[1]
    v = _mask(valid, s)
    sm = torch.where(v, s, torch.zeros_like(s))        # masked scores (even NaN) reach nothing
    pair = v[:, None, :] & v[:, :, None] & ~torch.eye(n, dtype=torch.bool, device=s.device)
    d = torch.where(pair, (sm[:, None, :] - sm[:, :, None]) / tau, torch.zeros((), dtype=s.dtype))  # [q, j, k]
    r = 1 + torch.where(pair, sig(d), torch.zeros((), dtype=s.dtype)).sum(-1)
    return torch.where(v, r, torch.zeros_like(r))


def relevance_order(r, v):
    """Valid columns of one row by relevance, highest first; ties to the lower column; NaN last
    among the valid; masked columns are not listed (they come after every valid one)."""
    cols = [j for j in range(len(r)) if v[j]]
    return sorted(cols, key=lambda j: (math.isnan(r[j]), -r[j] if not math.isnan(r[j]) else 0.0, j))


def ndcg_truth(s, rel, tau, k=None, gain="exp", valid=None):
    """1 - DCG / IDCG per row over the gain set (the k most relevant valid candidates); 0 where
    IDCG = 0 (not counted). Returns (loss, counted)."""
    q, n = s.shape
    v = _mask(valid, s)
    rel = rel.to(s.dtype)
    gains = rel if gain == "linear" else torch.exp2(rel) - 1
    ranks = rank_truth(s, tau, v)
    in_set = torch.zeros(q, n, dtype=torch.bool)
    idcg = torch.zeros(q, dtype=s.dtype)
    for row in range(q):
        order = relevance_order(rel[row].double().tolist(), v[row].tolist())
        chosen = order[:len(order) if k is None else k]
        in_set[row, chosen] = True
        for i, j in enumerate(chosen):
            idcg[row] += gains[row, j].detach() / math.log2(i + 2)
    safe_rank = torch.where(in_set, ranks, torch.ones((), dtype=s.dtype))
    dcg = torch.where(in_set, gains / torch.log2(1 + safe_rank), torch.zeros((), dtype=s.dtype)).sum(1)
    has_gain = idcg > 0
    loss = torch.where(has_gain, 1 - dcg / torch.where(has_gain, idcg, torch.ones((), dtype=s.dtype)),
                       torch.zeros((), dtype=s.dtype))
    # a NaN score enters every rank of its row: the row is NaN even without gain (contract decision;
    # the kernels and itr_kernels.reference agree)
    nan_row = (torch.isnan(s.detach()) & v).any(1)
    return torch.where(nan_row, torch.full_like(loss, math.nan), loss), has_gain


def _hardest(row, p):
    """The hardest negative of a query: the largest score among j != p, NaN first, ties to the lower index."""
    negs = [j for j in range(len(row)) if j != p]
    return min(negs, key=lambda j: (not math.isnan(row[j]), -row[j] if not math.isnan(row[j]) else 0.0, j))


def triplet_truth(s, margin, max_violation, positives=None):
    """VSE++ per query: [m + S[q,j] - S[q,p]]_+ at the hardest negative (or summed over negatives).
    Square: (2, B) [rows, columns]; with positives: (Q,)."""
    def direction(m, pos):
        qd, nd = m.shape
        if qd == 0:
            return m.sum(1)
        h = margin + m - m.gather(1, pos[:, None])
        if max_violation:
            if nd == 1:
                return (m * 0).sum(1)
            hard = torch.tensor([_hardest(m[i].tolist(), int(pos[i])) for i in range(qd)], dtype=torch.long)
            return hinge(h.gather(1, hard[:, None])[:, 0])
        is_pos = torch.nn.functional.one_hot(pos, nd).bool()
        return torch.where(is_pos, torch.zeros((), dtype=m.dtype), hinge(h)).sum(1)

    if positives is not None:
        return direction(s, positives.cpu().long())
    diag = torch.arange(s.shape[0])
    return torch.stack([direction(s, diag), direction(s.T, diag)])


def _log1p_sum_exp(x):
    """log(1 + sum_j e^{x_j}) per row (x may hold -inf), keeping the digits of a small sum."""
    xmax = x.max(1).values if x.shape[1] else x.new_full((x.shape[0],), -math.inf)
    small = torch.log1p(torch.exp(x.clamp(max=0)).sum(1))
    # shifted by the (detached, finite) max: the gradient is then exp(z - zmax) / sum, exact, where
    # torch.logsumexp's backward exp(z - result) loses the digits of a large result (x ~ 2e8 at T = 1e-9)
    z = torch.cat([torch.zeros_like(x[:, :1]), x], 1)
    zmax = z.max(1, keepdim=True).values.detach()
    zmax = torch.where(torch.isfinite(zmax), zmax, torch.zeros_like(zmax))
    general = zmax[:, 0] + torch.log(torch.exp(z - zmax).sum(1))
    return torch.where(xmax <= 0, small, general)


def infonce_truth(s, t, positives=None):
    """log sum_j exp(S[q,j] / T) - S[q,p] / T = log(1 + sum_{j != p} exp((S[q,j] - S[q,p]) / T))."""
    def direction(m, pos):
        if m.shape[0] == 0:
            return m.sum(1)
        is_pos = torch.nn.functional.one_hot(pos, m.shape[1]).bool()
        x = (m - m.gather(1, pos[:, None])) / t
        # the positive's own term is the "1": NaN there (a NaN positive) still reaches the loss
        nan_pos = torch.isnan(x.gather(1, pos[:, None]))[:, 0]
        out = _log1p_sum_exp(torch.where(is_pos, -math.inf, x))
        return torch.where(nan_pos, math.nan, out)

    if positives is not None:
        return direction(s, positives.cpu().long())
    diag = torch.arange(s.shape[0])
    return torch.stack([direction(s, diag), direction(s.T, diag)])


def triplet_sn_truth(s, rel, margin, t, rho, positives=None):
    """T log(1 + sum_{j in Neg} exp((m + S[q,j] - S[q,p]) / T)), Neg = {j != p : R[q,j] < rho}
    (every j != p without relevance)."""
    def direction(m, r, pos):
        if m.shape[0] == 0:
            return m.sum(1)
        is_pos = torch.nn.functional.one_hot(pos, m.shape[1]).bool()
        neg = ~is_pos if r is None else ~is_pos & (r.to(torch.float64) < rho)
        sp = m.gather(1, pos[:, None])
        x = (margin + m - sp) / t
        out = t * _log1p_sum_exp(torch.where(neg, x, -math.inf))
        return torch.where(torch.isnan(sp[:, 0]) & neg.any(1), math.nan, out)   # a NaN positive enters every term

    if positives is not None:
        return direction(s, rel, positives.cpu().long())
    diag = torch.arange(s.shape[0])
    return torch.stack([direction(s, rel, diag), direction(s.T, None if rel is None else rel.T, diag)])


def phi_truth(x, phi, margin, t):
    if phi == "hinge":
        return hinge(margin + x)
    if phi == "logistic":
        return t * softplus(x / t)
    return sig(2 * x / t)        # (1 + tanh(x / T)) / 2


def kendall_full_truth(s, rel, gap, phi, margin, t, valid=None):
    """Per row: sum of phi(S[q,k] - S[q,j]) over valid pairs with R[q,j] - R[q,k] > gap; and the count."""
    v = _mask(valid, s)
    r = rel.double()
    pair = (r[:, :, None] - r[:, None, :] > gap) & v[:, :, None] & v[:, None, :]   # [q, j, k]
    sm = torch.where(v, s, torch.zeros_like(s))
    x = torch.where(pair, sm[:, None, :] - sm[:, :, None], torch.zeros((), dtype=s.dtype))
    terms = torch.where(pair, phi_truth(x, phi, margin, t), torch.zeros((), dtype=s.dtype))
    return terms.sum((1, 2)), pair.sum((1, 2))


def swhs_select(s, rel, valid, window, stride, gap):
    """SW-HS per row: [(upper, lower, kept)] per window step (README; contract for NaN)."""
    out = []
    for row in range(s.shape[0]):
        sr, r, v = s[row].tolist(), rel[row].double().tolist(), valid[row].tolist()
        order = relevance_order(r, v)
        steps, t = [], 0
        while t * stride + window < len(order):
            upper = order[t * stride: t * stride + window]
            lower = order[t * stride + window: t * stride + 2 * window]
            # hardest pair: the lowest score of the upper window, NaN lowest; the highest of the
            # lower, NaN highest; ties to the lower column
            a = min(upper, key=lambda j: (not math.isnan(sr[j]), sr[j] if not math.isnan(sr[j]) else 0.0, j))
            b = min(lower, key=lambda j: (not math.isnan(sr[j]), -sr[j] if not math.isnan(sr[j]) else 0.0, j))
            steps.append((a, b, r[upper[-1]] - r[lower[0]] > gap))   # min(upper) - max(lower); NaN: no pair
            t += 1
        out.append(steps)
    return out


def kendall_swhs_truth(s, rel, gap, phi, margin, t, window, stride, valid=None):
    v = _mask(valid, s)
    sel = swhs_select(s.detach(), rel, v, window, stride, gap)
    rows = [(q, a, b) for q, steps in enumerate(sel) for a, b, kept in steps if kept]
    sums = torch.zeros(s.shape[0], dtype=s.dtype)
    counts = torch.zeros(s.shape[0], dtype=torch.long)
    if rows:
        qi, ai, bi = (torch.tensor(c, dtype=torch.long) for c in zip(*rows))
        sums = sums.index_add(0, qi, phi_truth(s[qi, bi] - s[qi, ai], phi, margin, t))
        counts = counts.index_add(0, qi, torch.ones_like(qi))
    return sums, counts


def smooth_ap_truth(s, positives, tau, valid=None):
    v = _mask(valid, s)
    pos = positives & v
    r_all, r_pos = rank_truth(s, tau, v), rank_truth(s, tau, pos)
    n_pos = pos.sum(1)
    ratio = torch.where(pos, r_pos / torch.where(pos, r_all, torch.ones((), dtype=s.dtype)),
                        torch.zeros((), dtype=s.dtype)).sum(1)
    loss = torch.where(n_pos > 0, 1 - ratio / n_pos.clamp(min=1), torch.zeros((), dtype=s.dtype))
    return loss, n_pos > 0


def listnet_truth(s, rel, t, valid=None):
    """-sum_j softmax(R)_j log softmax(S / T)_j over the valid candidates; rows without one: 0,
    not counted."""
    v = _mask(valid, s)
    losses = []
    for row in range(s.shape[0]):
        idx = v[row].nonzero()[:, 0]
        if len(idx) == 0:
            losses.append(s[row].sum() * 0)
            continue
        p = torch.softmax(rel[row, idx].to(s.dtype), 0)
        losses.append(-(p * torch.log_softmax(s[row, idx] / t, 0)).sum())
    loss = torch.stack(losses) if losses else s.sum(1)
    return loss, v.any(1)


# ==== the public functions, each as (kernel call, truth) over a case ====
# call(ns, s, t, x): ns is itr_kernels (kernel) or None (truth); s the scores; t the case's other
# tensors (relevance, valid, positives, ...); x the drawn parameters.

def _tensors(c, device):
    t = dict(rel=c.relevance(device), valid=c.valid(device), posmask=c.bool_mask(6, device=device))
    t["pos"] = c.positives(device) if c.n else torch.zeros(c.q, dtype=torch.long, device=device)
    return t


def f_smooth_rank(ns, s, t, x):
    if ns:
        return ik.smooth_rank(s, x["tau"], t["valid"])
    return rank_truth(s, x["tau"], t["valid"])


def f_smooth_ndcg(ns, s, t, x):
    if ns:
        return ik.smooth_ndcg_loss(s, t["rel"], x["tau"], x["k"], x["gain"], t["valid"], x["reduction"])
    return reduce_truth(*ndcg_truth(s, t["rel"], x["tau"], x["k"], x["gain"], t["valid"]), x["reduction"])


def f_triplet(ns, s, t, x):
    pos = t["pos"] if x["rect"] else None
    if ns:
        return ik.triplet_loss(s, x["margin"], x["max_violation"], x["reduction"], pos)
    return reduce_truth(triplet_truth(s, x["margin"], x["max_violation"], pos), None, x["reduction"])


def f_infonce(ns, s, t, x):
    pos = t["pos"] if x["rect"] else None
    if ns:
        return ik.infonce_loss(s, x["T"], x["reduction"], pos)
    return reduce_truth(infonce_truth(s, x["T"], pos), None, x["reduction"])


def f_triplet_sn(ns, s, t, x):
    pos = t["pos"] if x["rect"] else None
    rel = t["rel"] if x["use_rel"] else None
    if ns:
        return ik.triplet_sn_loss(s, rel, x["margin"], x["T"], x["rho"], x["reduction"], pos)
    return reduce_truth(triplet_sn_truth(s, rel, x["margin"], x["T"], x["rho"], pos), None, x["reduction"])


def f_kendall(ns, s, t, x):
    gap = x["gap"]
    if ns:
        return ik.kendall_loss(s, t["rel"], gap, x["phi"], x["margin"], x["T"], x["sampling"], x["window"],
                               x["stride"], t["valid"], x["reduction"])
    if x["sampling"] == "full":
        sums, counts = kendall_full_truth(s, t["rel"], 0.3 if gap is None else gap, x["phi"], x["margin"], x["T"],
                                          t["valid"])
    else:
        stride = x["window"] if x["stride"] is None else x["stride"]
        sums, counts = kendall_swhs_truth(s, t["rel"], 0.0 if gap is None else gap, x["phi"], x["margin"], x["T"],
                                          x["window"], stride, t["valid"])
    if x["reduction"] == "mean":
        return sums.sum() / max(int(counts.sum()), 1)     # "mean": over every pair (term)
    return reduce_truth(sums, None, x["reduction"])


def f_ranknet(ns, s, t, x):
    if ns:
        return ik.ranknet_loss(s, t["rel"], x["gap"], x["T"], t["valid"], x["reduction"])
    sums, counts = kendall_full_truth(s, t["rel"], x["gap"], "logistic", 0.0, x["T"], t["valid"])
    if x["reduction"] == "mean":
        return sums.sum() / max(int(counts.sum()), 1)
    return reduce_truth(sums, None, x["reduction"])


def f_smooth_ap(ns, s, t, x):
    if ns:
        return ik.smooth_ap_loss(s, t["posmask"], x["tau"], t["valid"], x["reduction"])
    return reduce_truth(*smooth_ap_truth(s, t["posmask"], x["tau"], t["valid"]), x["reduction"])


def f_listnet(ns, s, t, x):
    if ns:
        return ik.listnet_loss(s, t["rel"], x["T"], t["valid"], x["reduction"])
    return reduce_truth(*listnet_truth(s, t["rel"], x["T"], t["valid"]), x["reduction"])


# the modules (square in-batch forms; their rectangular forms in test_module_rectangular_matches_truth)

def _triplet_part(s, x, pos=None):
    per = triplet_truth(s, x["margin"], x["max_violation"], pos)
    return per.sum() if x["triplet_reduction"] == "sum" else reduce_truth(per, None, "mean")


def f_SmoothNDCGLoss(ns, s, t, x):
    if ns:
        return ik.SmoothNDCGLoss(x["tau"], x["k"], x["gain"], x["reduction"])(s, t["rel"], t["valid"])
    return f_smooth_ndcg(None, s, t, x)


def f_ListwiseITRLoss(ns, s, t, x):
    if ns:
        return ik.ListwiseITRLoss(x["margin"], x["tau"], x["weight"], x["k"], x["gain"], x["max_violation"],
                                  x["triplet_reduction"])(s, t["rel"])
    i2t = reduce_truth(*ndcg_truth(s, t["rel"], x["tau"], x["k"], x["gain"]), "mean")
    t2i = reduce_truth(*ndcg_truth(s.T, t["rel"].T, x["tau"], x["k"], x["gain"]), "mean")
    return (1 - x["weight"]) * _triplet_part(s, x) + x["weight"] * (i2t + t2i) / 2


def f_TripletLoss(ns, s, t, x):
    if ns:
        return ik.TripletLoss(x["margin"], x["max_violation"], x["triplet_reduction"])(s)
    return _triplet_part(s, x)


def f_InfoNCELoss(ns, s, t, x):
    if ns:
        module = ik.InfoNCELoss(x["T"], x["learn"])
        return module(s)
    t_eff = x["T"]
    if x["learn"]:   # CLIP's logit scale: exp of the float32 parameter log(1/T), clamped to 100
        t_eff = 1 / float(torch.tensor(math.log(1 / x["T"])).clamp(max=math.log(100.0)).exp())
    return reduce_truth(infonce_truth(s, t_eff), None, "mean")


def f_TripletSNLoss(ns, s, t, x):
    rel = t["rel"] if x["use_rel"] else None
    if ns:
        return ik.TripletSNLoss(x["margin"], x["T"], x["rho"], x["reduction"])(s, rel)
    return reduce_truth(triplet_sn_truth(s, rel, x["margin"], x["T"], x["rho"]), None, x["reduction"])


def f_KendallRankLoss(ns, s, t, x):
    if ns:
        return ik.KendallRankLoss(x["gap"], x["phi"], x["margin"], x["T"], x["sampling"], x["window"], x["stride"],
                                  x["reduction"])(s, t["rel"], t["valid"])
    return f_kendall(None, s, t, x)


def f_BCLSLoss(ns, s, t, x):
    if ns:
        return ik.BCLSLoss(x["mu"], x["margin"], x["T"], x["rho"], None, x["phi"], 0.0, x["kT"], x["sampling"],
                           x["window"])(s, t["rel"])
    sn = reduce_truth(triplet_sn_truth(s, t["rel"], x["margin"], x["T"], x["rho"]), None, "mean")
    kx = dict(gap=None, phi=x["phi"], margin=0.0, T=x["kT"], sampling=x["sampling"], window=x["window"], stride=None,
              reduction="mean")
    k_i2t = f_kendall(None, s, dict(rel=t["rel"], valid=None), kx)
    k_t2i = f_kendall(None, s.T, dict(rel=t["rel"].T, valid=None), kx)
    return sn + x["mu"] * (k_i2t + k_t2i) / 2


S = st.sampled_from
PARAMS = {
    "smooth_rank": dict(tau=S(TAUS)),
    "smooth_ndcg_loss": dict(tau=S(TAUS), k=S([None, 1, 2, 3, 100]), gain=S(["exp", "linear"]),
                             reduction=S(REDUCTIONS)),
    "triplet_loss": dict(margin=S([0.2, 0.0, -0.1, 0.5, 5.0]), max_violation=st.booleans(), reduction=S(REDUCTIONS),
                         rect=st.booleans()),
    "infonce_loss": dict(T=S(INFONCE_TS), reduction=S(REDUCTIONS), rect=st.booleans()),
    "triplet_sn_loss": dict(margin=S([0.2, 0.0, 2.0]), T=S(TS), rho=S([0.5, 1.0]), use_rel=st.booleans(),
                            reduction=S(REDUCTIONS), rect=st.booleans()),
    "kendall_loss": dict(gap=S([None, 0.0, 0.3]), phi=S(PHIS), margin=S([0.0, 0.1, 2.0]), T=S(TS),
                         sampling=S(["full", "swhs"]), window=S([1, 2, 3, 8]), stride=S([None, 1, 2, 5]),
                         reduction=S(REDUCTIONS)),
    "ranknet_loss": dict(gap=S([0.0, 0.2]), T=S(TS), reduction=S(REDUCTIONS)),
    "smooth_ap_loss": dict(tau=S(TAUS), reduction=S(REDUCTIONS)),
    "listnet_loss": dict(T=S(TS), reduction=S(REDUCTIONS)),
    "SmoothNDCGLoss": dict(tau=S(TAUS), k=S([None, 2]), gain=S(["exp", "linear"]), reduction=S(REDUCTIONS)),
    "ListwiseITRLoss": dict(margin=S([0.2, 0.0]), tau=S([1e-2, 1.0]), weight=S([0.0, 0.5, 1.0]), k=S([None, 2]),
                            gain=S(["exp", "linear"]), max_violation=st.booleans(),
                            triplet_reduction=S(["mean", "sum"])),
    "TripletLoss": dict(margin=S([0.2, 0.0]), max_violation=st.booleans(), triplet_reduction=S(["mean", "sum"])),
    "InfoNCELoss": dict(T=S([1e-3, 0.05, 1.0]), learn=st.booleans()),
    "TripletSNLoss": dict(margin=S([0.2]), T=S([0.01, 1.0]), rho=S([0.5, 1.0]), use_rel=st.booleans(),
                          reduction=S(REDUCTIONS)),
    "KendallRankLoss": dict(gap=S([None, 0.0, 0.3]), phi=S(PHIS), margin=S([0.0, 0.1]), T=S([0.01, 1.0]),
                            sampling=S(["full", "swhs"]), window=S([1, 3]), stride=S([None, 2]),
                            reduction=S(REDUCTIONS)),
    "BCLSLoss": dict(mu=S([0.0, 1.0]), margin=S([0.2]), T=S([0.01, 1.0]), rho=S([0.5, 1.0]), phi=S(PHIS),
                     kT=S([0.01, 1.0]), sampling=S(["full", "swhs"]), window=S([1, 2])),
}
FUNCTIONS = {
    "smooth_rank": f_smooth_rank, "smooth_ndcg_loss": f_smooth_ndcg, "triplet_loss": f_triplet,
    "infonce_loss": f_infonce, "triplet_sn_loss": f_triplet_sn, "kendall_loss": f_kendall,
    "ranknet_loss": f_ranknet, "smooth_ap_loss": f_smooth_ap, "listnet_loss": f_listnet,
    "SmoothNDCGLoss": f_SmoothNDCGLoss, "ListwiseITRLoss": f_ListwiseITRLoss, "TripletLoss": f_TripletLoss,
    "InfoNCELoss": f_InfoNCELoss, "TripletSNLoss": f_TripletSNLoss, "KendallRankLoss": f_KendallRankLoss,
    "BCLSLoss": f_BCLSLoss,
}
SQUARE = {"ListwiseITRLoss", "TripletLoss", "InfoNCELoss", "TripletSNLoss", "BCLSLoss"}
# Special scores each truth defines without ambiguity: +-inf where no two equal infinities meet
# (the strategies put at most one special per row and column) and the limit is the formula's.
SPECIALS = {name: ("nan",) for name in FUNCTIONS}
SPECIALS.update({name: ("nan", "+inf", "-inf") for name in
                 ("smooth_rank", "smooth_ndcg_loss", "triplet_loss", "kendall_loss", "ranknet_loss", "smooth_ap_loss")})
SPECIALS.update({name: () for name in SQUARE})


def is_square(name, x):
    return name in SQUARE or (name in ("triplet_loss", "infonce_loss", "triplet_sn_loss") and not x["rect"])


def params(name, extreme=False):
    out = dict(PARAMS[name])
    if extreme:
        for key, values in (("tau", EXTREME_TAUS), ("T", EXTREME_TS)):
            if key in out:
                out[key] = S(values)
    return out


def in_domain(case, name=None):
    """docs/input_contract.md: the staged values (S - row mean) / tau and S / T must fit the
    accumulator dtype (float32 for float16 / bfloat16 / float32); e.g. |S| ~ 1e20 with tau = 1e-30
    overflows float32 and is out of the documented domain. 4 covers |S - mean| <= 2 max|S| and
    the kernels' log2(e) scale."""
    acc_max = torch.finfo(torch.float64 if case.dtype == torch.float64 else torch.float32).max
    s = case.scores64()
    top = s[torch.isfinite(s)].abs().max().item() if torch.isfinite(s).any() else 0.0
    if not all(4 * top / case.extra[key] < acc_max for key in ("tau", "T") if key in case.extra):
        return False
    # A per-query InfoNCE loss, up to 2 max|S| / T + log N, is returned in the scores' dtype before
    # "mean" / "sum" reduce it: one past float16's 65504 is inf there, as in PyTorch's own float16
    # cross_entropy (docs/input_contract.md). ITR_TEST_SEED=424242: T = 1e-9, a mean of 38058 from a
    # per-query loss of ~76000.
    if name in ("infonce_loss", "InfoNCELoss") and case.dtype in LOW_PRECISION:
        return 2 * top / case.extra["T"] + math.log(max(case.n, 1)) + 1 < torch.finfo(case.dtype).max
    return True


def case_strategy(name, emulated=False, specials=None, extreme=False, **kw):
    lim = limits(emulated, **{k: kw.pop(k) for k in ("max_q", "max_n") if k in kw})
    square = name in SQUARE
    if name in ("triplet_loss", "infonce_loss", "triplet_sn_loss"):
        # square or rectangular: drawn first, so that the shape follows it
        def make(rect):
            args = dict(lim, **kw)
            if rect:
                args["min_n"] = max(1, args.get("min_n", 0))
            return cases(square=not rect, specials=SPECIALS[name] if specials is None else specials,
                         extra=dict(params(name, extreme), rect=st.just(rect)), **args)
        strategy = st.booleans().flatmap(make)
    else:
        strategy = cases(square=square, specials=SPECIALS[name] if specials is None else specials,
                         extra=params(name, extreme), **lim, **kw)
    return strategy.filter(lambda c: in_domain(c, name)) if extreme else strategy


def evaluate(name, case, device, s=None, t=None, upstream=None):
    """The kernel's output and gradient w.r.t. the scores (None where the output has no gradient)."""
    fn = FUNCTIONS[name]
    t = _tensors(case, device) if t is None else t
    s = case.scores(device) if s is None else s
    leaf = s.detach().clone().requires_grad_()
    out = fn(ik, leaf, t, case.extra)
    if not out.requires_grad:
        return out.detach(), None
    u = torch.ones_like(out) if upstream is None else upstream.to(out.device, out.dtype).reshape(out.shape)
    (grad,) = torch.autograd.grad(out, leaf, u, allow_unused=True)
    return out.detach(), grad


def evaluate_truth(name, case, dtype=torch.float64, upstream=None):
    """The truth run in `dtype` (float64: the truth; float16 / bfloat16: the same-precision baseline)."""
    fn = FUNCTIONS[name]
    t = _tensors(case, "cpu")
    t["rel"] = t["rel"].to(dtype)
    leaf = case.scores64().to(dtype).requires_grad_()
    out = fn(None, leaf, t, case.extra)
    if out.requires_grad:
        u = torch.ones_like(out) if upstream is None else upstream.to(out.dtype).reshape(out.shape)
        (grad,) = torch.autograd.grad(out, leaf, u, allow_unused=True)
        grad = torch.zeros_like(leaf) if grad is None else grad
    else:
        grad = torch.zeros_like(leaf)
    return out.detach(), grad.detach()


# ==== comparing with the truth ====

EPS = {dtype: torch.finfo(dtype).eps for dtype in ALL_DTYPES}


def assert_matches_truth(got, truth, baseline, dtype, what, rtol32=1e-5, atol=None):
    """got (the kernel's, in `dtype` or the accumulator dtype) against the float64 truth: the same
    non-finite pattern as the truth rounded to got's dtype, and on the finite entries a normwise
    error within the dtype's bound (module docstring)."""
    g = got.detach().double().cpu()
    truth = truth.double()
    assert g.shape == truth.shape, f"{what}: shape {tuple(g.shape)}, truth {tuple(truth.shape)}"
    expect = truth.to(got.dtype).double()
    bad = (torch.isnan(g) != torch.isnan(expect)) | (torch.isinf(expect) & (g != expect)) | \
          (torch.isfinite(expect) & ~torch.isfinite(g))
    assert not bad.any(), (f"{what}: non-finite pattern differs from the truth at {bad.nonzero().tolist()[:6]}: "
                           f"got {g[bad].tolist()[:6]}, truth {truth[bad].tolist()[:6]}")
    fin = torch.isfinite(expect)
    n = max(1, int(fin.sum()))
    err = (g[fin] - truth[fin]).norm().item()
    scale = truth[fin].norm().item()
    if dtype == torch.float64:
        bound = 1e-10 * scale + (1e-13 if atol is None else atol) * n ** 0.5
    elif dtype == torch.float32:
        bound = rtol32 * scale + (1e-6 if atol is None else atol) * n ** 0.5
    else:
        atol = (1e-6 if atol is None else atol) * n ** 0.5
        b = baseline.detach().double().cpu()
        ref_err = (b[fin] - truth[fin]).norm().item() if baseline is not None else math.inf
        if math.isfinite(ref_err):
            bound = 2 * ref_err + 2 * EPS[dtype] * scale + atol
        else:   # the plain same-precision computation breaks down: float32 accumulation, 8 ulp
            bound = 8 * EPS[dtype] * scale + atol
    assert err <= bound, f"{what}: error {err:.3g} > bound {bound:.3g} (truth norm {scale:.3g})"


def truth_property(name, case, device):
    shape = evaluate_truth(name, case)[0].shape
    upstream = case.upstream(shape) if len(shape) else None
    if upstream is not None:   # the upstream the op receives, in its output dtype, for the truth too: a
        # gradient like (c_k - c_j) / tau amplifies the rounding of c by 1 / tau
        upstream = upstream.to(case.dtype).double()
    out, grad = evaluate(name, case, device, upstream=upstream)
    truth, truth_grad = evaluate_truth(name, case, upstream=upstream)
    base = base_grad = None
    if case.dtype in LOW_PRECISION:
        base, base_grad = evaluate_truth(name, case, case.dtype, upstream=upstream)
    assert_matches_truth(out, truth, base, case.dtype, f"{name} value")
    grad = torch.zeros_like(case.scores(device)) if grad is None else grad
    assert grad.dtype == case.dtype and grad.shape == (case.q, case.n)
    scores = case.scores64()
    grad_atol = 1e-10
    if name == "listnet_loss":   # (q - p) / T: q and p each round to the accumulator's eps before / T
        grad_atol = max(grad_atol, 4 * EPS[torch.float64 if case.dtype == torch.float64 else torch.float32]
                        / case.extra["T"])
    if not torch.isnan(scores).any():   # gradients where a NaN score sits: unspecified beyond its query
        assert_matches_truth(grad, truth_grad, base_grad, case.dtype, f"{name} gradient", rtol32=1e-4,
                             atol=grad_atol)
    if torch.isfinite(scores).all():
        finite = torch.isfinite(truth_grad.to(case.dtype))   # a true gradient past float16's range is inf
        assert torch.isfinite(grad.cpu()[finite]).all(), f"{name}: non-finite gradient for finite scores"


# ---- 1. every public function and module against its float64 truth ----

# Input classes, separate so that one failure does not hide another: "finite" (normal and tied
# scores, moderate tau / T), "special" (NaN and +-inf scores where the function defines them),
# "extreme" (huge and tiny scores, huge and tiny tau / T).
INPUTS = {"finite": dict(regimes=("normal", "ties"), specials=()),
          "special": dict(regimes=("normal", "ties")),
          "extreme": dict(regimes=("huge", "tiny"), specials=(), extreme=True)}
PRECISIONS = {"f64-f32": (torch.float64, torch.float32), "f16-bf16": LOW_PRECISION}
TRUTH_EXAMPLES = 12


@pytest.mark.parametrize("inputs", list(INPUTS))
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_matches_truth(name, precision, inputs, target):
    device, emulated = target
    strategy = case_strategy(name, emulated, dtypes=PRECISIONS[precision], **INPUTS[inputs])
    check(strategy, lambda c, d, e: truth_property(name, c, d), TRUTH_EXAMPLES, device, emulated,
          emulated_examples=2)


def test_module_rectangular_matches_truth():
    """ListwiseITRLoss, TripletLoss, InfoNCELoss and BCLSLoss with positives and scores_t2i (rows of
    each direction against a global batch): the square composition, direction by direction."""
    def body(c, device, emulated):
        s_t2i = torch.randn(c.q, c.n, generator=c.generator(9), dtype=torch.float64).to(c.dtype)
        s = c.scores(device)
        rel, rel_t2i, pos = c.relevance(), torch.rand(c.q, c.n, generator=c.generator(10)).to(c.dtype), c.positives()
        name, x = c.extra["module"], c.extra
        if name == "ListwiseITRLoss":
            mod = ik.ListwiseITRLoss(0.2, x["tau"], 0.5, None, "exp", x["mv"], x["tr"])

            def truth(a, b):
                tri = [triplet_truth(m, 0.2, x["mv"], pos) for m in (a, b)]
                tri = sum(v.sum() for v in tri) if x["tr"] == "sum" else sum(reduce_truth(v, None, "mean")
                                                                              for v in tri) / 2
                nd = [reduce_truth(*ndcg_truth(m, r, x["tau"]), "mean") for m, r in ((a, rel), (b, rel_t2i))]
                return 0.5 * tri + 0.5 * (nd[0] + nd[1]) / 2
        elif name == "TripletLoss":
            mod = ik.TripletLoss(0.2, x["mv"], x["tr"])

            def truth(a, b):
                tri = [triplet_truth(m, 0.2, x["mv"], pos) for m in (a, b)]
                return sum(v.sum() for v in tri) if x["tr"] == "sum" else sum(reduce_truth(v, None, "mean")
                                                                               for v in tri) / 2
        elif name == "InfoNCELoss":
            mod = ik.InfoNCELoss(x["T"])

            def truth(a, b):
                return sum(reduce_truth(infonce_truth(m, x["T"], pos), None, "mean") for m in (a, b)) / 2
        else:
            mod = ik.BCLSLoss(1.0, 0.2, x["T"], 0.5, window=2)

            def truth(a, b):
                sn = sum(reduce_truth(triplet_sn_truth(m, r, 0.2, x["T"], 0.5, pos), None, "mean")
                         for m, r in ((a, rel), (b, rel_t2i))) / 2
                k = [kendall_swhs_truth(m, r, 0.0, "hinge", 0.0, 0.01, 2, 2) for m, r in ((a, rel), (b, rel_t2i))]
                k = [sums.sum() / max(int(counts.sum()), 1) for sums, counts in k]
                return sn + (k[0] + k[1]) / 2
        a = s.detach().clone().requires_grad_()
        b = s_t2i.detach().clone().requires_grad_()
        out = mod(a, rel, rel_t2i, pos, b)
        ga, gb = torch.autograd.grad(out, (a, b), allow_unused=True)
        a64 = c.scores64().requires_grad_()
        b64 = s_t2i.double().requires_grad_()
        want = truth(a64, b64)
        wa, wb = torch.autograd.grad(want, (a64, b64), allow_unused=True)
        base = None
        if c.dtype in LOW_PRECISION:   # the same-precision baseline is the truth composition in dtype
            rel, rel_t2i = rel.to(c.dtype), rel_t2i.to(c.dtype)
            base = truth(s.detach(), s_t2i)
        assert_matches_truth(out, want.detach(), base, c.dtype, f"{name} value")
        for g, w in ((ga, wa), (gb, wb)):
            g = torch.zeros_like(s) if g is None else g
            w = torch.zeros_like(a64) if w is None else w
            if c.dtype not in LOW_PRECISION:
                assert_matches_truth(g, w, None, c.dtype, f"{name} gradient", rtol32=1e-4, atol=1e-10)
            else:
                assert torch.isfinite(g).all()

    strategy = cases(max_q=5, max_n=7, min_q=1, min_n=1, specials=(), regimes=("normal", "ties"),
                     extra=dict(module=S(["ListwiseITRLoss", "TripletLoss", "InfoNCELoss", "BCLSLoss"]),
                                tau=S([0.01, 1.0]), mv=st.booleans(), tr=S(["mean", "sum"]), T=S([0.01, 0.1, 1.0])))
    check(strategy, body, 30)


# ---- 2. NaN propagation ----

def nan_queries(name, case, s64, t):
    """The queries a NaN score enters (README / contract), by structure, not by evaluating a formula:
    a bool tensor shaped as the kernel's "none" output."""
    x = case.extra
    v = _mask(t["valid"], s64).cpu()
    nan = torch.isnan(s64) & v
    row_nan = nan.any(1)
    if name == "smooth_rank":
        return row_nan[:, None] & v
    if name == "smooth_ndcg_loss":
        return row_nan   # even without gain (contract decision)
    if name == "listnet_loss":
        return row_nan
    if name == "smooth_ap_loss":
        return row_nan & (t["posmask"].cpu() & v).any(1)
    if name in ("kendall_loss", "ranknet_loss"):
        if name == "kendall_loss" and x["sampling"] == "swhs":
            stride = x["window"] if x["stride"] is None else x["stride"]
            gap = 0.0 if x["gap"] is None else x["gap"]
            sel = swhs_select(s64, t["rel"].cpu(), v, x["window"], stride, gap)
            return torch.tensor([any(kept and (math.isnan(s64[q, a]) or math.isnan(s64[q, b])) for a, b, kept in steps)
                                 for q, steps in enumerate(sel)], dtype=torch.bool)
        gap = x["gap"] if name == "ranknet_loss" or x["gap"] is not None else 0.3
        r = t["rel"].cpu().double()
        pair = ((r[:, :, None] - r[:, None, :]).abs() > gap) & v[:, :, None] & v[:, None, :]   # j in a pair with k
        return (pair & nan[:, :, None]).any((1, 2))
    q = s64.shape[0]
    rect = x.get("rect", False)
    if name == "triplet_loss" or name == "infonce_loss" or name == "triplet_sn_loss":
        pos = t["pos"].cpu() if rect else torch.arange(q)
        if name == "triplet_sn_loss" and x["use_rel"]:
            neg = t["rel"].cpu().double() < x["rho"]
        else:
            neg = torch.ones_like(nan)
        is_pos = torch.nn.functional.one_hot(pos, s64.shape[1]).bool() if q else torch.zeros_like(nan)
        neg = neg & ~is_pos
        if name == "infonce_loss":   # every score of a query is in its sum
            enters = torch.ones_like(nan)
        else:                        # a negative's score enters; the positive's enters if any negative does
            enters = neg | (is_pos & neg.any(1, keepdim=True))
        rows = (nan & enters).any(1)
        if rect:
            return rows
        neg_t, pos_t = neg.T, is_pos.T   # text-to-image queries: the columns, relevance.T
        enters_t = torch.ones_like(nan) if name == "infonce_loss" else neg_t | (pos_t & neg_t.any(1, keepdim=True))
        return torch.stack([rows, (nan.T & enters_t).any(1)])
    raise AssertionError(name)


NAN_FUNCTIONS = [n for n in FUNCTIONS if n not in SQUARE and n != "SmoothNDCGLoss" and n != "KendallRankLoss"]


@pytest.mark.parametrize("name", NAN_FUNCTIONS)
def test_nan_score_gives_nan_exactly_in_its_queries(name, target):
    """One or two NaN scores (on valid entries of rows with >= 2 valid candidates): the per-query
    output ("none") is NaN exactly in the queries they enter; every other query, and the gradient
    rows of row-separable losses without a NaN, stay finite; "mean" and "sum" are NaN iff some
    counted query is."""
    device, emulated = target

    def body(c, device, emulated):
        if not c.specials:
            return
        x = dict(c.extra, reduction="none") if "reduction" in c.extra else c.extra
        c2 = type(c)(**{**c.__dict__, "extra": x})
        out, grad = evaluate(name, c2, device)
        s64 = c2.scores64()
        t = _tensors(c2, "cpu")
        want = nan_queries(name, c2, s64, t)
        assert torch.equal(torch.isnan(out.cpu()), want), (
            f"NaN queries {torch.isnan(out.cpu()).nonzero().tolist()}, expected {want.nonzero().tolist()}")
        row_separable = name not in ("triplet_loss", "infonce_loss", "triplet_sn_loss") or x.get("rect")
        if row_separable and grad is not None:
            clean = ~torch.isnan(s64).any(1)
            assert torch.isfinite(grad.cpu()[clean]).all(), "a NaN leaked into the gradient of another query"
        if out.numel() and "reduction" in x:
            for reduction in ("mean", "sum"):
                c3 = type(c)(**{**c.__dict__, "extra": dict(x, reduction=reduction)})
                red, _ = evaluate(name, c3, device)
                assert bool(torch.isnan(red)) == bool(want.any()), (reduction, red)

    strategy = case_strategy(name, emulated, specials=("nan",), regimes=("normal", "ties"), min_q=1, min_n=2)
    check(strategy, body, 30, device, emulated, emulated_examples=3)


# ---- 3. permutation invariance ----

def _permute(name, case, device, seed_):
    """(value of the permuted input, the original's value permuted as the math says)."""
    g = torch.Generator().manual_seed(seed_)
    q, n = case.q, case.n
    s = case.scores(device)
    t = _tensors(case, device)
    x = case.extra
    perm = torch.randperm(n, generator=g).to(device)
    if is_square(name, x):   # images and captions together: rows and columns
        pt = dict(t, rel=t["rel"][perm][:, perm])
        return (FUNCTIONS[name](ik, s[perm][:, perm], pt, x),
                lambda out: out[..., perm] if out.dim() else out)
    inv = torch.argsort(perm)
    pt = dict(t, rel=t["rel"][:, perm], posmask=t["posmask"][:, perm], pos=inv[t["pos"]] if q and n else t["pos"],
              valid=None if t["valid"] is None else t["valid"][:, perm])
    if name == "smooth_rank":
        return FUNCTIONS[name](ik, s[:, perm], pt, x), lambda out: out[:, perm]
    return FUNCTIONS[name](ik, s[:, perm], pt, x), lambda out: out


PERMUTABLE = [n for n in FUNCTIONS if n not in ("SmoothNDCGLoss", "KendallRankLoss", "TripletSNLoss")]


@pytest.mark.parametrize("name", PERMUTABLE)
def test_permuting_columns(name, target):
    """Smooth ranks permute with the columns; losses over a candidate set are invariant (S-NDCG and
    SW-HS only without relevance ties, whose order breaks by column; SW-HS also without score ties);
    square in-batch losses permute with rows and columns together; rectangular ones are invariant
    with the positives' columns renumbered."""
    device, emulated = target

    def body(c, device, emulated):
        x = c.extra
        out = FUNCTIONS[name](ik, c.scores(device), _tensors(c, device), x)
        got, expect = _permute(name, c, device, c.seed + 1)
        tol = dict(rtol=1e-10, atol=1e-12) if c.dtype == torch.float64 else dict(rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(got, expect(out), equal_nan=True, **tol)

    rel_kinds = ("distinct",) if name in ("smooth_ndcg_loss", "kendall_loss", "ListwiseITRLoss", "BCLSLoss") \
        else ("grid", "coarse", "distinct")
    regimes = ("normal",) if name in ("kendall_loss", "BCLSLoss", "triplet_loss", "ListwiseITRLoss",
                                      "TripletLoss") else ("normal", "ties")
    strategy = case_strategy(name, emulated, specials=(), dtypes=(torch.float64, torch.float32), rel_kinds=rel_kinds,
                             regimes=regimes)
    check(strategy, body, 25, device, emulated, emulated_examples=2)


# ---- 4. views, repeated runs and thread counts: bit-identical ----

def assert_bitwise(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    a, b = a.detach().cpu(), b.detach().cpu()
    same = (a == b) & (torch.signbit(a) == torch.signbit(b)) | (torch.isnan(a) & torch.isnan(b))
    assert same.all(), f"{what}: not bit-identical at {(~same).nonzero().tolist()[:6]}: {a[~same][:4]} vs {b[~same][:4]}"


def _with_grad(name, s, t, x, upstream):
    s = s.detach().requires_grad_() if s.is_leaf else s
    out = FUNCTIONS[name](ik, s, t, x)
    if not out.requires_grad:
        return out.detach(), None
    u = upstream.to(out.dtype).reshape(out.shape) if out.dim() else torch.ones_like(out)
    (g,) = torch.autograd.grad(out, s, u, allow_unused=True)
    return out.detach(), g


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_views_are_bit_identical_to_contiguous(name, target):
    """Scores, relevance and mask as transposed / strided / sliced / expanded (stride 0) views give
    the value and gradient of contiguous copies, bit for bit."""
    device, emulated = target

    def body(c, device, emulated):
        x = c.extra
        base = c.scores(device).requires_grad_()
        s_view = as_view(base, x["sv"])                 # a non-leaf view of a leaf: gradient w.r.t. the view
        t = _tensors(c, device)
        tv = dict(t, rel=as_view(t["rel"], x["rv"]),
                  valid=None if t["valid"] is None else as_view(t["valid"], x["vv"]))
        tc = dict(tv, rel=tv["rel"].contiguous(), valid=None if tv["valid"] is None else tv["valid"].contiguous())
        out = FUNCTIONS[name](ik, s_view, tv, x)
        up = torch.rand(out.shape, generator=c.generator(8)) + 0.5 if out.dim() else None
        o1, g1 = out.detach(), None
        if out.requires_grad:
            (g1,) = torch.autograd.grad(out, s_view, torch.ones_like(out) if up is None else up.to(out.dtype),
                                        allow_unused=True)
        contiguous = s_view.detach().contiguous().requires_grad_()
        out2 = FUNCTIONS[name](ik, contiguous, tc, x)
        o2, g2 = out2.detach(), None
        if out2.requires_grad:
            (g2,) = torch.autograd.grad(out2, contiguous, torch.ones_like(out2) if up is None else up.to(out2.dtype),
                                        allow_unused=True)
        assert_bitwise(o1, o2, f"{name} value ({x['sv']}, relevance {x['rv']}, valid {x['vv']})")
        if g1 is not None or g2 is not None:
            assert g1 is not None and g2 is not None
            assert_bitwise(g1, g2, f"{name} gradient ({x['sv']}, relevance {x['rv']}, valid {x['vv']})")

    lim = limits(emulated)
    params = dict(PARAMS[name], sv=S(VIEWS), rv=S(VIEWS), vv=S(VIEWS))
    square = name in SQUARE

    def make(rect):
        extra = dict(params, rect=st.just(rect)) if rect is not None else params
        return cases(square=square or rect is False, specials=SPECIALS[name], min_n=1 if rect else 0, extra=extra,
                     **lim)
    strategy = st.booleans().flatmap(make) if name in ("triplet_loss", "infonce_loss", "triplet_sn_loss") \
        else make(None)
    check(strategy, body, 25, device, emulated, emulated_examples=3)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_bit_identical_across_runs_and_thread_counts(name):
    """Two runs, and torch.set_num_threads(1) against 2, give the same bits (values and gradients),
    on rows short and long enough to take each of the kernels' work splits."""
    def body(c, device, emulated):
        s = c.scores()
        t = _tensors(c, "cpu")
        up = c.upstream(FUNCTIONS[name](ik, s, t, c.extra).shape)
        previous = torch.get_num_threads()
        try:
            results = []
            for threads in (1, 1, 2, 2):
                torch.set_num_threads(threads)
                results.append(_with_grad(name, s.clone(), t, c.extra, up))
        finally:
            torch.set_num_threads(previous)
        for i, (o, g) in enumerate(results[1:], 1):
            what = f"{name}: run {i} ({'1 vs 2 threads' if i >= 2 else 'repeat'})"
            assert_bitwise(results[0][0], o, what + " value")
            if g is not None:
                assert_bitwise(results[0][1], g, what + " gradient")

    square = name in SQUARE
    sizes = st.sampled_from([(1, 300), (2, 300), (3, 257), (5, 40), (70, 70), (7, 9)])

    def make(shape, rect):
        q, n = shape
        if square or rect is False:
            n = q = min(q, 70)
        extra = dict(PARAMS[name], rect=st.just(rect)) if rect is not None else PARAMS[name]
        return cases(max_q=q, min_q=q, max_n=n, min_n=n, square=square or rect is False, specials=(),
                     extra=extra, regimes=("normal", "ties"))
    if name in ("triplet_loss", "infonce_loss", "triplet_sn_loss"):
        strategy = st.tuples(sizes, st.booleans()).flatmap(lambda a: make(*a))
    else:
        strategy = sizes.flatmap(lambda a: make(a, None))
    check(strategy, body, 6)


# ---- 5. masked candidates contribute exactly 0 ----

@pytest.mark.parametrize("name", ["smooth_rank", "smooth_ndcg_loss", "kendall_loss", "ranknet_loss", "smooth_ap_loss",
                                  "listnet_loss"])
def test_masked_candidates_contribute_exactly_zero(name, target):
    """Masked entries: rank 0 and gradient exactly 0 whatever their score (NaN, inf); a row whose
    only valid candidate is j: smooth rank exactly 1 and gradient exactly 0; masking a candidate
    gives the value of deleting it (within the dtype's rounding)."""
    device, emulated = target

    def body(c, device, emulated):
        x = c.extra
        s = c.scores(device)
        t = _tensors(c, device)
        v = t["valid"]
        junk = torch.tensor([math.nan, math.inf, -math.inf, 1e4], dtype=c.dtype)
        noisy = torch.where(v.cpu(), s.cpu(), junk[torch.randint(0, 4, s.shape, generator=c.generator(11))]).to(device)
        out, grad = _with_grad(name, noisy.clone(), t, x, c.upstream(FUNCTIONS[name](ik, s, t, x).shape))
        out_clean, grad_clean = _with_grad(name, s.clone(), t, x, c.upstream(FUNCTIONS[name](ik, s, t, x).shape))
        assert_bitwise(out, out_clean, f"{name}: value depends on masked scores")
        if grad is not None:
            assert torch.all(grad.cpu()[~v.cpu()] == 0), f"{name}: gradient at masked entries {grad[~v]}"
            assert_bitwise(grad, grad_clean, f"{name}: gradient depends on masked scores")
        if name == "smooth_rank":
            assert torch.all(out.cpu()[~v.cpu()] == 0)
            lone = v.sum(1) == 1
            if lone.any():
                assert torch.all(out[lone][v[lone]] == 1), f"lone valid candidate: rank {out[lone][v[lone]]}"
                assert torch.all(grad[lone] == 0), f"lone valid candidate: gradient {grad[lone]}"
        # masking == deleting: row by row against the compacted row
        for row in range(c.q):
            keep = v[row].nonzero()[:, 0]
            if len(keep) == 0:
                continue
            tr = {k: (val[row:row + 1][:, keep] if torch.is_tensor(val) and val.dim() == 2 else val)
                  for k, val in t.items()}
            tr["valid"] = None
            xr = dict(x, reduction="none") if "reduction" in x else x
            tv = dict(t)
            one = FUNCTIONS[name](ik, s[row:row + 1][:, keep], tr, xr)
            full = FUNCTIONS[name](ik, s, tv, xr)
            full_row = full[row:row + 1][:, keep] if name == "smooth_rank" else full[row:row + 1]
            tol = dict(rtol=1e-12, atol=1e-14) if c.dtype == torch.float64 else \
                dict(rtol=1e-5, atol=1e-6) if c.dtype == torch.float32 else dict(rtol=2e-2, atol=1e-2)
            torch.testing.assert_close(full_row.to(one.dtype), one, equal_nan=True, **tol)

    params = dict(PARAMS[name])
    if name == "kendall_loss":
        params["gap"] = S([0.0, 0.3])
    strategy = cases(specials=(), masks=("random",), min_q=1, min_n=1, extra=params, **limits(emulated))
    check(strategy, body, 25, device, emulated, emulated_examples=3)


# ---- 6. double backward: the documented error, or exact ----

@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_double_backward_raises_or_is_exact(name):
    """d/dS <grad, v>: every op raises "second derivatives are not implemented" (the contract); a
    function built from plain tensor code may instead give the exact second derivative, never a
    silent wrong one."""
    def body(c, device, emulated):
        x = c.extra
        t = _tensors(c, "cpu")
        s = c.scores().requires_grad_()
        out = FUNCTIONS[name](ik, s, t, x)
        up = c.upstream(out.shape).to(out.dtype) if out.dim() else torch.ones_like(out)
        direction = torch.randn(s.shape, generator=c.generator(12), dtype=torch.float64)
        (g,) = torch.autograd.grad(out, s, up, create_graph=True)
        try:
            # a gradient that does not require grad is constant in S: a second derivative of 0, right
            # only where the truth's is 0 too (piecewise-linear plain-tensor code, e.g. the SW-HS hinge)
            hv = (torch.autograd.grad((g * direction.to(g.dtype)).sum(), s, allow_unused=True)[0]
                  if g.requires_grad else None)
        except RuntimeError as e:
            assert "second derivatives are not implemented" in str(e), f"{name}: unclear double-backward error: {e}"
            return
        hv = torch.zeros_like(s) if hv is None else hv
        s64 = c.scores64().requires_grad_()
        t64 = dict(t, rel=t["rel"].double())
        out64 = FUNCTIONS[name](None, s64, t64, x)
        hv64 = torch.zeros_like(s64)
        if out64.requires_grad:
            (g64,) = torch.autograd.grad(out64, s64, up.double(), create_graph=True)
            if g64.requires_grad:   # else piecewise linear: the second derivative is 0
                (h,) = torch.autograd.grad((g64 * direction).sum(), s64, allow_unused=True)
                hv64 = hv64 if h is None else h
        torch.testing.assert_close(hv.double(), hv64.detach(), rtol=1e-8, atol=1e-10)

    strategy = case_strategy(name, specials=(), dtypes=(torch.float64,), regimes=("normal",), min_q=2, min_n=2,
                             max_q=4, max_n=5)
    check(strategy, body, 4)


# ---- 7. empty batches (each function's own shapes) ----

def _empty_cases():
    for name in FUNCTIONS:
        if name in SQUARE:
            yield name, (0, 0), False
        elif name in ("triplet_loss", "infonce_loss", "triplet_sn_loss"):
            yield name, (0, 0), False
            yield name, (0, 3), True    # rectangular rows with positives: no row
        else:
            for shape in ((0, 0), (0, 3), (3, 0)):
                yield name, shape, False


@pytest.mark.parametrize("name,shape,rect", list(_empty_cases()))
def test_empty_batches(name, shape, rect):
    """(0, N), (Q, 0), (0, 0) where the shape rules allow: "none" gives the empty per-query output,
    "sum" and "mean" 0, backward a zero gradient of the scores' shape (contract)."""
    q, n = shape

    def body(c, device, emulated):
        reductions = ("none", "mean", "sum") if "reduction" in c.extra else (None,)
        for reduction in reductions:
            x = dict(c.extra, rect=rect) if reduction is None else dict(c.extra, reduction=reduction, rect=rect)
            s = torch.zeros(q, n, dtype=c.dtype, requires_grad=True)
            t = _tensors(c, "cpu")
            out = FUNCTIONS[name](ik, s, t, x)
            assert not torch.isnan(out).any(), f"{name} {shape} {reduction}: NaN"
            if reduction in ("mean", "sum", None) and out.dim() == 0:
                assert out.item() == 0, (reduction, out)
            if out.requires_grad:
                out.sum().backward()
                assert s.grad is not None and s.grad.shape == s.shape

    strategy = cases(min_q=q, max_q=q, min_n=n, max_n=n, square=False, specials=(), extra=PARAMS[name])
    check(strategy, body, 3)


# ---- 8. contract details on special inputs ----

def test_kendall_low_precision_mean_does_not_overflow():
    """float16 / bfloat16 per-row Kendall sums grow with N: they are accumulated and reduced in
    float32 (the accumulator dtype), so a "mean" whose row sums exceed the low-precision range is
    finite and accurate, returned in the scores' dtype (docs/bcls.md)."""
    def body(c, device, emulated):
        x = c.extra
        s = c.scores()
        rel = c.relevance()
        out = ik.kendall_loss(s, rel, 0.0, "hinge", x["margin"], 0.01, x["sampling"], window=1, reduction="mean")
        assert out.dtype == s.dtype, out.dtype
        sums, counts = (kendall_full_truth(c.scores64(), rel, 0.0, "hinge", x["margin"], 0.01) if x["sampling"] == "full"
                        else kendall_swhs_truth(c.scores64(), rel, 0.0, "hinge", x["margin"], 0.01, 1, 1))
        truth = sums.sum() / counts.sum().clamp(min=1)
        assert torch.isfinite(out), out
        torch.testing.assert_close(out.double(), truth, rtol=1e-2, atol=0)

    strategy = cases(min_q=1, max_q=3, min_n=40, max_n=96, dtypes=LOW_PRECISION, specials=(), masks=("none",),
                     rel_kinds=("distinct",), regimes=("normal",),
                     extra=dict(margin=S([100.0, 1000.0]), sampling=S(["full", "swhs"])))
    check(strategy, body, 6)


def test_triplet_sn_rho_without_relevance_and_rho_inf():
    """Without relevance rho is ignored (every j != p is a negative); with relevance rho = +inf keeps
    every j != p and rho = 1 drops relevance-1 candidates (contract)."""
    def body(c, device, emulated):
        s = c.scores()
        rel = c.relevance()
        rho = c.extra["rho"]
        every = triplet_sn_truth(c.scores64(), None, 0.2, 0.1, 1.0)
        got = ik.triplet_sn_loss(s, None, 0.2, 0.1, rho, "none")
        assert_matches_truth(got, every, None, c.dtype, f"rho={rho} without relevance")
        got = ik.triplet_sn_loss(s, rel, 0.2, 0.1, math.inf, "none")
        assert_matches_truth(got, every, None, c.dtype, "rho=inf with relevance")

    strategy = cases(min_q=1, max_q=6, square=True, dtypes=(torch.float64, torch.float32), specials=(),
                     regimes=("normal",), extra=dict(rho=S([0.0, 0.25, 0.5, 1.0, -3.0])))
    check(strategy, body, 15)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_scaled_scores_do_not_overflow(dtype):
    """S / T (ListNet) and the learned logit scale times S (InfoNCELoss) run in float32: in the
    scores' dtype they passed float16's 65504 and gave inf - inf = NaN where the loss is finite."""
    s = torch.tensor([[0.5, 0.75, 0.875], [0.25, 0.5, 0.5]], dtype=dtype).requires_grad_()
    rel = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.0, 0.25]])
    out = ik.listnet_loss(s, rel, 1e-5, reduction="none")
    s64 = s.detach().double().requires_grad_()
    truth, _ = listnet_truth(s64, rel.double(), 1e-5)
    (g,), (g64,) = torch.autograd.grad(out.sum(), s), torch.autograd.grad(truth.sum(), s64)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), truth.detach().to(dtype).double(), rtol=1e-2, atol=0)
    torch.testing.assert_close(g.double(), g64.to(dtype).double(), rtol=1e-2, atol=1e-3)

    s = torch.tensor([[700.0, 700.5], [699.5, 700.0]], dtype=dtype).requires_grad_()
    module = ik.InfoNCELoss(0.01, learn_temperature=True)   # scale exp(log 100) = 100: 100 * S > 65504
    out = module(s)
    scale = float(torch.tensor(math.log(100.0)).exp())
    s64 = s.detach().double().requires_grad_()
    truth = reduce_truth(infonce_truth(s64, 1 / scale), None, "mean")
    (g,), (g64,) = torch.autograd.grad(out, s), torch.autograd.grad(truth, s64)
    assert out.dtype == dtype and torch.isfinite(out)
    torch.testing.assert_close(out.double(), truth.detach().to(dtype).double(), rtol=1e-2, atol=0)
    torch.testing.assert_close(g.double(), g64.to(dtype).double(), rtol=1e-2, atol=1e-3)
