"""Plain-PyTorch reference of every public function and module, with the same signatures (less
the `reducer` keyword of the fused losses): docs/ and the shared contract written as tensor code,
materialising the (Q, N, N) pair tensors that the
kernels avoid. Used by the tests (in float64, as the truth) and by bench/compare.py (eager and
torch.compile).

It shares only the argument checks with the fused API (both reject the same inputs with the same
message); every number is computed here, by code of its own: reductions, ranks, φ, the relevance
order, SW-HS windows, Smooth-AP, ListNet and the module compositions. Contract it implements:
a NaN score gives NaN in every term it enters (SW-HS: a NaN score is the hardest of its window);
masked candidates contribute exactly 0; NaN relevance orders last among valid candidates, masked
ones after every valid one; rows with nothing counted give 0 and are left out of "mean"; empty
batches give the empty "none" and a 0 "mean" / "sum"; Triplet-SN ignores rho without relevance."""
import math

import torch
from torch import nn

from . import _validate as check
from . import modules as args   # the modules' argument checks only
from .bcls import _kendall_args, _listnet_args, _smooth_ap_args, _triplet_sn_args
from .losses import _infonce_args, _smooth_ndcg_args, _smooth_rank_args, _triplet_args

# ---- shared pieces of the reference (its own; nothing here is the fused code's) ----


def _reduce(per_row, counted, reduction):
    """"none": the per-row losses; "sum": their total; "mean": the total over the number of
    counted rows (every row when `counted` is None), 0 when no row is counted. The total is
    accumulated in float32 at least (a float16 sum of many rows overflows)."""
    if reduction == "none":
        return per_row
    acc = torch.promote_types(per_row.dtype, torch.float32)
    total = per_row.sum(dtype=acc)
    if reduction == "mean":
        count = per_row.new_tensor(per_row.numel(), dtype=acc) if counted is None else counted.sum().to(acc)
        total = total / torch.clamp(count, min=1)
    return total.to(per_row.dtype)


def _no_rows_loss(scores):
    """Zero per-row losses tied to scores (a zero gradient, never NaN), for rows with nothing to count."""
    return scores[:, :0].sum(dim=1)


def _all_valid(scores):
    return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)


def _columns(scores):
    return torch.arange(scores.shape[1], device=scores.device)


def _hinge(y):
    """[y]+ with no gradient at the kink y = 0; NaN stays NaN."""
    return torch.where(y <= 0, torch.zeros_like(y), y)


def _phi(x, phi, margin, temperature):
    """The Kendall surrogate on x = S[k] - S[j] (j the more relevant)."""
    if phi == "hinge":
        return _hinge(margin + x)
    if phi == "logistic":   # T log(1 + e^{x/T}), accurate at any x/T
        return temperature * torch.logaddexp(torch.zeros_like(x), x / temperature)
    return torch.sigmoid(2 * x / temperature)   # (1 + tanh(x/T)) / 2, without tanh's cancellation near -1


def _relevance_order(relevance, valid):
    """Each row's columns in the contract's relevance order: valid candidates by decreasing
    relevance (ties to the lower column), then valid NaN relevance, then masked candidates.
    Lexicographic by two stable sorts, the last key first."""
    nan = torch.isnan(relevance)
    by_relevance = torch.sort(torch.where(nan | ~valid, 0, relevance), dim=1, descending=True, stable=True).indices
    group = torch.where(valid, nan.long(), 2).gather(1, by_relevance)   # 0 valid, 1 valid NaN, 2 masked
    return by_relevance.gather(1, torch.sort(group, dim=1, stable=True).indices)


def _hardest(scores, candidates):
    """Each row's column of the largest score among `candidates` (NaN the largest, ties to the
    lowest column; the first candidate when every one is -inf), as a (Q, 1) index."""
    h = torch.where(candidates, scores, -math.inf).detach().argmax(dim=1, keepdim=True)
    first = candidates.int().argmax(dim=1, keepdim=True)
    return torch.where(candidates.gather(1, h), h, first)


def _sum_exp_others(scores, candidates, k, temperature):
    """sum over candidates j != k of exp((S[q,j] - S[q,k]) / T), S[q,k] the row's largest: exact
    score differences before the division by T, each term <= 1. 0 where S[q,k] is -inf."""
    s_k = scores.gather(1, k)
    others = candidates & (_columns(scores) != k) & (s_k != -math.inf)
    d = torch.where(others, scores - s_k, -math.inf)
    return torch.exp(d / temperature).sum(dim=1, keepdim=True)


# ---- ranking losses ----


def smooth_rank(scores, tau=0.01, valid=None):
    _smooth_rank_args(scores, tau, valid)
    v = _all_valid(scores) if valid is None else valid
    s = torch.where(v, scores, 0)   # masked scores, even NaN, reach neither a rank nor a gradient
    n = scores.shape[1]
    sig = torch.sigmoid((s.unsqueeze(1) - s.unsqueeze(2)) / tau)   # [q, j, k] = sigma((S[q,k] - S[q,j]) / tau)
    counted = v.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=scores.device)   # k valid, k != j
    return torch.where(v, 1 + torch.where(counted, sig, 0).sum(dim=2), 0)


def smooth_ndcg_loss(scores, relevance, tau=0.01, k=None, gain="exp", valid=None, reduction="mean"):
    _smooth_ndcg_args(scores, relevance, tau, k, gain, valid, reduction)
    v = _all_valid(scores) if valid is None else valid
    rel = relevance.to(scores.dtype)
    n = scores.shape[1]
    order = _relevance_order(rel, v)
    set_size = v.sum(dim=1, keepdim=True)
    if k is not None:
        set_size = set_size.clamp(max=k)
    in_set_sorted = torch.arange(n, device=scores.device) < set_size   # the gain set: the first k in order
    in_set = torch.zeros_like(v).scatter(1, order, in_set_sorted)
    gains = rel if gain == "linear" else torch.exp2(rel) - 1
    gains = torch.where(in_set, gains, 0)
    # IDCG: the set's gains in decreasing order at ranks 1, 2, ... (the gain is monotone in relevance)
    ideal_rank = torch.arange(1, n + 1, dtype=scores.dtype, device=scores.device)
    idcg = (gains.gather(1, order) / torch.log2(1 + ideal_rank)).sum(dim=1)
    rank = smooth_rank(scores, tau, v)
    dcg = torch.where(in_set, gains / torch.log2(1 + torch.where(in_set, rank, 1)), 0).sum(dim=1)
    has_gain = idcg > 0
    loss = torch.where(has_gain, 1 - dcg / torch.where(has_gain, idcg, 1), torch.where(torch.isnan(idcg), idcg, 0))
    # A NaN score is in every rank of its row: NaN even in a row without gain (value and gradient);
    # 0 * rank adds nothing otherwise.
    loss = loss + (0 * torch.where(v, rank, 0)).sum(dim=1)   # (0 * rank first: a float16 sum of ranks overflows)
    return _reduce(loss, has_gain, reduction)


def _positive_columns(scores, positives):
    """(is the positive [q, j], the positive's score [q, 1]) for explicit positive columns."""
    is_pos = _columns(scores).unsqueeze(0) == positives.long().unsqueeze(1)
    return is_pos, scores.gather(1, positives.long().unsqueeze(1))


def _diagonal(b, device):
    return torch.arange(b, device=device)


def _vse_rows(scores, positives, margin, max_violation):
    """VSE++ per row: [m + S[q,h] - S[q,p]]+ for the hardest negative h, or the sum over negatives."""
    q, n = scores.shape
    if n == 0:
        return _no_rows_loss(scores)
    is_pos, pos = _positive_columns(scores, positives)
    negative = ~is_pos
    if not max_violation:
        return torch.where(negative, _hinge(margin + scores - pos), 0).sum(dim=1)
    hinge = _hinge(margin + scores.gather(1, _hardest(scores, negative)) - pos).squeeze(1)
    return torch.where(negative.any(dim=1), hinge, 0)


def triplet_loss(scores, margin=0.2, max_violation=True, reduction="mean", positives=None):
    _triplet_args(scores, margin, reduction, positives)
    if positives is not None:
        return _reduce(_vse_rows(scores, positives, margin, max_violation), None, reduction)
    diag = _diagonal(scores.shape[0], scores.device)
    per_direction = torch.stack([_vse_rows(m, diag, margin, max_violation) for m in (scores, scores.T)])
    return _reduce(per_direction, None, reduction)


def _infonce_rows(scores, positives, temperature):
    """log sum_j exp((S[q,j] - S[q,p]) / T) = (S[q,k] - S[q,p]) / T + log1p(sum_{j != k} ...), k the
    row's largest: every exponent from exact score differences, so exact at any T."""
    q, n = scores.shape
    if n == 0:
        return _no_rows_loss(scores)
    _, pos = _positive_columns(scores, positives)
    everyone = torch.ones_like(scores, dtype=torch.bool)
    k = _hardest(scores, everyone)
    rest = _sum_exp_others(scores, everyone, k, temperature)
    return ((scores.gather(1, k) - pos) / temperature + torch.log1p(rest)).squeeze(1)


def infonce_loss(scores, temperature=0.05, reduction="mean", positives=None):
    _infonce_args(scores, temperature, reduction, positives)
    if positives is not None:
        return _reduce(_infonce_rows(scores, positives, temperature), None, reduction)
    diag = _diagonal(scores.shape[0], scores.device)
    return _reduce(torch.stack([_infonce_rows(m, diag, temperature) for m in (scores, scores.T)]), None, reduction)


def _triplet_sn_rows(scores, positives, relevance, margin, temperature, rho):
    """T log(1 + sum_{j in Neg} exp((m + S[q,j] - S[q,p]) / T)), Neg = {j != p: R[q,j] < rho}
    (every j != p without relevance). With k the largest negative, a = m + S[q,k] - S[q,p] and
    r = sum_{j != k} exp((S[q,j] - S[q,k]) / T) (exact differences): a + T log1p(e^{-a/T} + r) if
    a > 0, else T log1p(e^{a/T} (1 + r)); no cancellation at any T."""
    q, n = scores.shape
    if n == 0:
        return _no_rows_loss(scores)
    is_pos, pos = _positive_columns(scores, positives)
    negative = ~is_pos if relevance is None else ~is_pos & (relevance < rho)
    k = _hardest(scores, negative)
    s_k = scores.gather(1, k)
    r = _sum_exp_others(scores, negative, k, temperature)
    # no negative, or all at -inf: every term is 0
    a = torch.where(negative.any(dim=1, keepdim=True) & (s_k != -math.inf), margin + (s_k - pos), -math.inf)
    above = a > 0
    a_above, a_below = torch.where(above, a, 0), torch.where(above, 0, a)   # each branch finite in the other's rows
    loss = torch.where(above, a_above + temperature * torch.log1p(torch.exp(-a_above / temperature) + r),
                       temperature * torch.log1p(torch.exp(a_below / temperature) * (1 + r)))
    return loss.squeeze(1)


def triplet_sn_loss(scores, relevance=None, margin=0.2, temperature=0.01, rho=1.0, reduction="mean", positives=None):
    _triplet_sn_args(scores, relevance, margin, temperature, rho, reduction, positives)
    if positives is not None:
        return _reduce(_triplet_sn_rows(scores, positives, relevance, margin, temperature, rho), None, reduction)
    diag = _diagonal(scores.shape[0], scores.device)
    rows = [_triplet_sn_rows(scores, diag, relevance, margin, temperature, rho),
            _triplet_sn_rows(scores.T, diag, None if relevance is None else relevance.T, margin, temperature, rho)]
    return _reduce(torch.stack(rows), None, reduction)


def _kendall_full(scores, rel, v, gap, phi, margin, temperature):
    s = torch.where(v, scores, 0)
    # [q, j, k]: j more relevant than k by more than gap (a NaN relevance is in no pair), both valid
    in_pair = (rel.unsqueeze(2) - rel.unsqueeze(1) > gap) & v.unsqueeze(2) & v.unsqueeze(1)
    x = torch.where(in_pair, s.unsqueeze(1) - s.unsqueeze(2), 0)   # S[k] - S[j]; no NaN outside pairs
    terms = torch.where(in_pair, _phi(x, phi, margin, temperature), 0)
    return terms.sum(dim=(1, 2)), in_pair.sum(dim=(1, 2))


def _hardest_in_window(order, s_sorted, window, lowest):
    """The column of the hardest candidate among the sorted positions `window` of each row: the
    lowest score (upper window) or the highest (lower window), a NaN score harder than any, ties
    to the lower column. Rows with an empty window get some column (their step is not kept)."""
    n = order.shape[1]
    nan = window & torch.isnan(s_sorted)
    key = s_sorted if lowest else -s_sorted
    best = torch.where(window & ~nan, key, math.inf).amin(dim=1, keepdim=True)
    hit = torch.where(nan.any(dim=1, keepdim=True), nan, window & ~nan & (key == best))
    return torch.where(hit, order, n).amin(dim=1, keepdim=True).clamp(max=n - 1)


def _kendall_swhs(scores, rel, v, window, stride, gap, phi, margin, temperature):
    q, n = scores.shape
    order = _relevance_order(rel, v)
    n_valid = v.sum(dim=1, keepdim=True)
    s_sorted, r_sorted = scores.detach().gather(1, order), rel.gather(1, order)
    position = torch.arange(n, device=scores.device)
    sums = _no_rows_loss(scores)
    counts = torch.zeros(q, dtype=torch.int64, device=scores.device)
    t = 0
    while t * stride + window < n:   # a step for every start of a non-empty lower window in a full row
        u0, l0 = t * stride, t * stride + window
        in_upper = (position >= u0) & (position < u0 + window) & (position < n_valid)
        in_lower = (position >= l0) & (position < l0 + window) & (position < n_valid)
        j = _hardest_in_window(order, s_sorted, in_upper, lowest=True)
        k = _hardest_in_window(order, s_sorted, in_lower, lowest=False)
        # the gap of the windows: the upper's least relevant against the lower's most relevant
        last_upper = (torch.clamp(n_valid, max=u0 + window) - 1).clamp(min=0)
        gap_ok = r_sorted.gather(1, last_upper) - r_sorted[:, l0:l0 + 1] > gap
        keep = ((l0 < n_valid) & gap_ok).squeeze(1)
        x = torch.where(keep, (scores.gather(1, k) - scores.gather(1, j)).squeeze(1), 0)
        sums = sums + torch.where(keep, _phi(x, phi, margin, temperature), 0)
        counts = counts + keep
        t += 1
    return sums, counts


def kendall_loss(scores, relevance, gap=None, phi="hinge", margin=0.0, temperature=0.01, sampling="full", window=8,
                 stride=None, valid=None, reduction="mean"):
    gap, stride = _kendall_args(scores, relevance, gap, phi, margin, temperature, sampling, window, stride, valid,
                                reduction)
    v = _all_valid(scores) if valid is None else valid
    rel = relevance.to(scores.dtype)
    if sampling == "full":
        sums, counts = _kendall_full(scores, rel, v, gap, phi, margin, temperature)
    else:
        sums, counts = _kendall_swhs(scores, rel, v, window, stride, gap, phi, margin, temperature)
    return _reduce(sums, counts, reduction)


def ranknet_loss(scores, relevance, gap=0.0, temperature=1.0, valid=None, reduction="mean"):
    return kendall_loss(scores, relevance, gap, "logistic", 0.0, temperature, "full", valid=valid, reduction=reduction)


def smooth_ap_loss(scores, positives, tau=0.01, valid=None, reduction="mean"):
    _smooth_ap_args(scores, positives, tau, valid, reduction)
    v = _all_valid(scores) if valid is None else valid
    pos = positives & v
    n_pos = pos.sum(dim=1)
    rank = smooth_rank(scores, tau, v)             # among every valid candidate
    rank_among_pos = smooth_rank(scores, tau, pos)  # among the positives
    precision = torch.where(pos, rank_among_pos / torch.where(pos, rank, 1), 0).sum(dim=1)
    loss = torch.where(n_pos > 0, 1 - precision / n_pos.clamp(min=1), 0)
    return _reduce(loss, n_pos > 0, reduction)


def listnet_loss(scores, relevance, temperature=1.0, valid=None, reduction="mean"):
    _listnet_args(scores, relevance, temperature, valid, reduction)
    v = _all_valid(scores) if valid is None else valid
    has_valid = v.any(dim=1, keepdim=True)
    # Rows without a valid candidate: any finite stand-in (their loss is 0), so no NaN reaches a gradient.
    logits = torch.where(v, scores / temperature, -math.inf)
    target = torch.where(v, relevance.to(scores.dtype), -math.inf)
    logits, target = torch.where(has_valid, logits, 0), torch.where(has_valid, target, 0)
    log_q = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    p = torch.exp(target - torch.logsumexp(target, dim=1, keepdim=True))
    # -sum_j p_j log q_j over the valid j with p_j > 0 (a term of probability 0 is 0, masked ones too)
    terms = torch.where(v & (p != 0), p * torch.where(v & (p != 0), log_q, 0), 0)
    loss = torch.where(has_valid.squeeze(1), -terms.sum(dim=1), 0)
    return _reduce(loss, has_valid.squeeze(1), reduction)


# ---- modules: plain nn.Modules over the functions above ----


class SmoothNDCGLoss(nn.Module):
    def __init__(self, tau=0.01, k=None, gain="exp", reduction="mean"):
        super().__init__()
        args.smooth_ndcg_module_args(tau, k, gain, reduction)
        self.tau, self.k, self.gain, self.reduction = tau, k, gain, reduction

    def forward(self, scores, relevance, valid=None):
        return smooth_ndcg_loss(scores, relevance, self.tau, self.k, self.gain, valid, self.reduction)


def _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i):
    """(i2t rows, their relevance, t2i rows, their relevance): the square matrix's rows and
    columns, or the given rectangular rows of each direction."""
    relevance_t2i = args.in_batch_args(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
    return scores, relevance_i2t, scores.T if positives is None else scores_t2i, relevance_t2i


def _both_directions(pair_loss, directions, positives, reduction):
    """A pair loss over both directions: one call on a square matrix (it covers both), else one per
    direction's rows, averaged ("mean") or added ("sum") as the square form's reduction does."""
    i2t, r_i2t, t2i, r_t2i = directions
    if positives is None:
        return pair_loss(i2t, r_i2t, None)
    a, b = pair_loss(i2t, r_i2t, positives), pair_loss(t2i, r_t2i, positives)
    return (a + b) / 2 if reduction == "mean" else a + b


class ListwiseITRLoss(nn.Module):
    def __init__(self, margin=0.2, tau=0.01, weight=0.5, k=None, gain="exp", max_violation=True,
                 triplet_reduction="mean"):
        super().__init__()
        args.listwise_module_args(margin, tau, weight, k, gain, triplet_reduction)
        self.margin, self.tau, self.weight, self.k, self.gain = margin, tau, weight, k, gain
        self.max_violation, self.triplet_reduction = max_violation, triplet_reduction

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        directions = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        triplet = _both_directions(
            lambda s, r, p: triplet_loss(s, self.margin, self.max_violation, self.triplet_reduction, p),
            directions, positives, self.triplet_reduction)
        i2t, r_i2t, t2i, r_t2i = directions
        ndcg = (smooth_ndcg_loss(i2t, r_i2t, self.tau, self.k, self.gain)
                + smooth_ndcg_loss(t2i, r_t2i, self.tau, self.k, self.gain)) / 2
        return (1 - self.weight) * triplet + self.weight * ndcg


class TripletLoss(nn.Module):
    def __init__(self, margin=0.2, max_violation=True, reduction="mean"):
        super().__init__()
        args.triplet_module_args(margin, reduction)
        self.margin, self.max_violation, self.reduction = margin, max_violation, reduction

    def forward(self, scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None):
        if relevance_i2t is None:   # not used
            relevance_i2t = scores.detach()
        directions = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        return _both_directions(lambda s, r, p: triplet_loss(s, self.margin, self.max_violation, self.reduction, p),
                                directions, positives, self.reduction)


class InfoNCELoss(nn.Module):
    MAX_LOGIT_SCALE = 100.0

    def __init__(self, temperature=0.05, learn_temperature=False):
        super().__init__()
        check.positive(temperature, "temperature")
        self.temperature, self.learn_temperature = temperature, bool(learn_temperature)
        if self.learn_temperature:
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def logit_scale_value(self):
        if self.learn_temperature:   # CLIP: the scale is at most 100 (no gradient past it)
            return torch.exp(torch.clamp(self.logit_scale, max=math.log(self.MAX_LOGIT_SCALE)))
        return 1 / self.temperature

    def forward(self, scores, relevance_i2t=None, relevance_t2i=None, positives=None, scores_t2i=None):
        if relevance_i2t is None:   # not used
            relevance_i2t = scores.detach()
        directions = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)

        def pair_loss(s, r, p):
            if self.learn_temperature:
                return infonce_loss(s * self.logit_scale_value().to(s.dtype), 1.0, "mean", p)
            return infonce_loss(s, self.temperature, "mean", p)

        return _both_directions(pair_loss, directions, positives, "mean")


class TripletSNLoss(nn.Module):
    def __init__(self, margin=0.2, temperature=0.01, rho=1.0, reduction="mean"):
        super().__init__()
        args.triplet_sn_module_args(margin, temperature, rho, reduction)
        self.margin, self.temperature, self.rho, self.reduction = margin, temperature, rho, reduction

    def forward(self, scores, relevance=None, positives=None):
        return triplet_sn_loss(scores, relevance, self.margin, self.temperature, self.rho, self.reduction, positives)


class KendallRankLoss(nn.Module):
    def __init__(self, gap=None, phi="hinge", margin=0.0, temperature=0.01, sampling="full", window=8, stride=None,
                 reduction="mean"):
        super().__init__()
        args.kendall_module_args(gap, phi, margin, temperature, sampling, window, stride, reduction)
        self.gap, self.phi, self.margin, self.temperature = gap, phi, margin, temperature
        self.sampling, self.window, self.stride, self.reduction = sampling, window, stride, reduction

    def forward(self, scores, relevance, valid=None):
        return kendall_loss(scores, relevance, self.gap, self.phi, self.margin, self.temperature, self.sampling,
                            self.window, self.stride, valid, self.reduction)


class BCLSLoss(nn.Module):
    def __init__(self, mu=1.0, margin=0.2, temperature=0.01, rho=1.0, gap=None, phi="hinge", kendall_margin=0.0,
                 kendall_temperature=0.01, sampling="swhs", window=8, stride=None):
        super().__init__()
        check.finite(mu, "mu")
        self.mu = mu
        self.triplet = TripletSNLoss(margin, temperature, rho)
        self.kendall = KendallRankLoss(gap, phi, kendall_margin, kendall_temperature, sampling, window, stride)

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        directions = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        triplet = _both_directions(lambda s, r, p: self.triplet(s, r, p), directions, positives, self.triplet.reduction)
        i2t, r_i2t, t2i, r_t2i = directions
        return triplet + self.mu * (self.kendall(i2t, r_i2t) + self.kendall(t2i, r_t2i)) / 2


class TripletSNITRLoss(nn.Module):
    def __init__(self, margin=0.2, temperature=0.01, rho=1.0):
        super().__init__()
        args.triplet_sn_module_args(margin, temperature, rho, "mean")
        self.margin, self.temperature, self.rho = margin, temperature, rho

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        directions = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        return _both_directions(lambda s, r, p: triplet_sn_loss(s, r, self.margin, self.temperature, self.rho, "mean", p),
                                directions, positives, "mean")


def _twin(module):
    """The reference module with the settings of a fused base or term module (a learned InfoNCE
    scale is the same parameter)."""
    from . import composed, modules
    if isinstance(module, modules.TripletLoss):
        return TripletLoss(module.margin, module.max_violation, module.triplet_reduction)
    if isinstance(module, composed.TripletSNITRLoss):
        t = module.triplet
        return TripletSNITRLoss(t.margin, t.temperature, t.rho)
    if isinstance(module, modules.InfoNCELoss):
        twin = InfoNCELoss(module.temperature, module.learn_temperature)
        if module.learn_temperature:
            twin.logit_scale = module.logit_scale
        return twin
    if isinstance(module, modules.SmoothNDCGLoss):
        return SmoothNDCGLoss(module.tau, module.k, module.gain, module.reduction)
    return KendallRankLoss(module.gap, module.phi, module.margin, module.temperature, module.sampling, module.window,
                           module.stride, module.reduction)


class ContinuousLabelLoss(nn.Module):
    def __init__(self, base="triplet", term="sndcg", weight=None, mix=None, **kwargs):
        super().__init__()
        from . import composed
        fused = composed.ContinuousLabelLoss(base, term, weight, mix, **kwargs)   # argument checks and routing only
        self.weight, self.mix = fused.weight, fused.mix
        self.base, self.term = _twin(fused.base), _twin(fused.term)

    def forward(self, scores, relevance_i2t, relevance_t2i=None, positives=None, scores_t2i=None):
        i2t, r_i2t, t2i, r_t2i = _in_batch(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        base = self.base(scores, relevance_i2t, relevance_t2i, positives, scores_t2i)
        term = (self.term(i2t, r_i2t) + self.term(t2i, r_t2i)) / 2
        return ((1 - self.weight) if self.mix == "convex" else 1) * base + self.weight * term
