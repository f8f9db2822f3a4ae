"""The contract every loss shares: empty batches, rows with nothing counted, first-order gradients
(a clear error on double backward), torch.compile with dynamic shapes, and what each loss does with
relevance outside [0, 1] or NaN (documented, not checked). The fused API on every device and the
reference alike where it applies; truths are float64 loops written here."""
import math

import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import cosine_scores, run

IMPLS = [pytest.param(ik, id="fused"), pytest.param(ref, id="reference")]

# ---- empty batches: (0, 0), (0, N), (Q, 0) wherever the shape rules allow ----

# name -> (shapes, call(F, scores, relevance, reduction), "none" shape of (Q, N))
_ROWS = ("rows", lambda q, n: (q,))
_SQUARE = ("square", lambda q, n: (2, q))
_WITH_POSITIVES = ("positives", lambda q, n: (q,))
FUNCTIONS = {
    "smooth_ndcg": (_ROWS, lambda F, s, r, red: F.smooth_ndcg_loss(s, r, reduction=red)),
    "smooth_ndcg_topk_masked": (_ROWS, lambda F, s, r, red: F.smooth_ndcg_loss(s, r, k=2, valid=r > 0.5,
                                                                                  reduction=red)),
    "kendall_full": (_ROWS, lambda F, s, r, red: F.kendall_loss(s, r, reduction=red)),
    "kendall_swhs": (_ROWS, lambda F, s, r, red: F.kendall_loss(s, r, sampling="swhs", window=2, reduction=red)),
    "ranknet": (_ROWS, lambda F, s, r, red: F.ranknet_loss(s, r, reduction=red)),
    "smooth_ap": (_ROWS, lambda F, s, r, red: F.smooth_ap_loss(s, r > 0.5, reduction=red)),
    "listnet": (_ROWS, lambda F, s, r, red: F.listnet_loss(s, r, reduction=red)),
    "listnet_masked": (_ROWS, lambda F, s, r, red: F.listnet_loss(s, r, valid=r > 0.5, reduction=red)),
    "triplet": (_SQUARE, lambda F, s, r, red: F.triplet_loss(s, reduction=red)),
    "triplet_sum": (_SQUARE, lambda F, s, r, red: F.triplet_loss(s, max_violation=False, reduction=red)),
    "infonce": (_SQUARE, lambda F, s, r, red: F.infonce_loss(s, reduction=red)),
    "triplet_sn": (_SQUARE, lambda F, s, r, red: F.triplet_sn_loss(s, reduction=red)),
    "triplet_sn_relevance": (_SQUARE, lambda F, s, r, red: F.triplet_sn_loss(s, r, rho=0.5, reduction=red)),
    "triplet_rows": (_WITH_POSITIVES, lambda F, s, r, red: F.triplet_loss(s, reduction=red, positives=_none(s))),
    "infonce_rows": (_WITH_POSITIVES, lambda F, s, r, red: F.infonce_loss(s, reduction=red, positives=_none(s))),
    "triplet_sn_rows": (_WITH_POSITIVES, lambda F, s, r, red: F.triplet_sn_loss(s, r, reduction=red,
                                                                                 positives=_none(s))),
}
SHAPES = {"rows": [(0, 0), (0, 5), (4, 0)], "square": [(0, 0)], "positives": [(0, 0), (0, 5)]}


def _none(s):
    """The positives of a batch without rows."""
    return torch.zeros(0, dtype=torch.long, device=s.device)


def _empty_cases():
    for name, ((kind, _), _) in FUNCTIONS.items():
        for shape in SHAPES[kind]:
            yield pytest.param(name, shape, id=f"{name}-{shape[0]}x{shape[1]}")


def _check_empty(call, shape, none_shape, device, dtype=torch.float32):
    s = torch.zeros(shape, dtype=dtype, device=device, requires_grad=True)
    r = torch.rand(shape, device=device)
    out = call(s, r, "none")
    assert out.shape == none_shape
    for reduction in ("mean", "sum"):
        s.grad = None
        loss = call(s, r, reduction)
        assert loss.shape == () and loss.item() == 0, (reduction, loss)
        loss.backward()
        assert s.grad.shape == s.shape


@pytest.mark.parametrize("name,shape", _empty_cases())
def test_empty_batch(name, shape, device):
    (_, none_shape), call = FUNCTIONS[name]
    _check_empty(lambda s, r, red: call(ik, s, r, red), shape, none_shape(*shape), device)


@pytest.mark.parametrize("name,shape", _empty_cases())
def test_reference_empty_batch(name, shape):
    (_, none_shape), call = FUNCTIONS[name]
    _check_empty(lambda s, r, red: call(ref, s, r, red), shape, none_shape(*shape), "cpu", torch.float64)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(0, 0), (0, 5), (4, 0)])
def test_smooth_rank_empty(impl, shape, device):
    s = torch.zeros(shape, device=device, requires_grad=True)
    out = impl.smooth_rank(s, 0.1)
    assert out.shape == shape
    out.sum().backward()
    assert s.grad.shape == shape


def _modules(F):
    """Every module of a namespace, and the shapes it takes: "rows" (any), or "in-batch" (square,
    and rectangular rows of both directions with positives)."""
    return [("SmoothNDCGLoss", F.SmoothNDCGLoss(), "rows"), ("KendallRankLoss", F.KendallRankLoss(), "rows"),
            ("KendallRankLoss-swhs", F.KendallRankLoss(sampling="swhs", window=2), "rows"),
            ("ListwiseITRLoss", F.ListwiseITRLoss(), "in-batch"), ("TripletLoss", F.TripletLoss(), "in-batch"),
            ("InfoNCELoss", F.InfoNCELoss(), "in-batch"),
            ("InfoNCELoss-learned", F.InfoNCELoss(learn_temperature=True), "in-batch"),
            ("TripletSNLoss", F.TripletSNLoss(), "in-batch"), ("BCLSLoss", F.BCLSLoss(), "in-batch")]


@pytest.mark.parametrize("impl", IMPLS)
def test_modules_empty_batch(impl, device):
    for name, module, kind in _modules(impl):
        module.to(device)
        shapes = [(0, 0), (0, 5), (4, 0)] if kind == "rows" else [(0, 0), (0, 5)]
        for shape in shapes:
            s = torch.zeros(shape, device=device, requires_grad=True)
            r = torch.rand(shape, device=device)
            if kind == "rows" or shape[0] == shape[1]:   # any rows, or a square in-batch matrix
                loss = module(s, r)
            elif name == "TripletSNLoss":
                loss = module(s, r, positives=_none(s))
            else:
                loss = module(s, r, r, positives=_none(s), scores_t2i=s)
            assert loss.shape == () and loss.item() == 0, (name, shape, loss)
            loss.backward()
            assert s.grad.shape == shape


# ---- ListNet: a row without valid candidates gives 0 and is not counted ----

def listnet_truth(scores, relevance, valid, temperature):
    """Per row -sum_j p_j log q_j over the valid j (p = softmax(R), q = softmax(S / T)), the
    gradient (q - p) / T, and which rows have a valid candidate; float64 loops."""
    q_rows, n = scores.shape
    loss, grad, counted = [0.0] * q_rows, torch.zeros(q_rows, n, dtype=torch.float64), [False] * q_rows
    for q in range(q_rows):
        cols = [j for j in range(n) if valid[q, j]]
        if not cols:
            continue
        counted[q] = True
        s = {j: scores[q, j].item() / temperature for j in cols}
        r = {j: relevance[q, j].item() for j in cols}
        zs, zr = sum(math.exp(v) for v in s.values()), sum(math.exp(v) for v in r.values())
        loss[q] = -sum(math.exp(r[j]) / zr * (s[j] - math.log(zs)) for j in cols)
        for j in cols:
            grad[q, j] = (math.exp(s[j]) / zs - math.exp(r[j]) / zr) / temperature
    return torch.tensor(loss, dtype=torch.float64), grad, torch.tensor(counted)


@pytest.mark.parametrize("impl", IMPLS)
def test_listnet_row_without_valid_candidate(impl, gen):
    scores = cosine_scores(5, 7, gen)
    relevance = torch.rand(5, 7, generator=gen, dtype=torch.float64)
    valid = torch.rand(5, 7, generator=gen) > 0.3
    valid[:, 0] = True
    valid[2] = False   # no valid candidate
    loss, grad, counted = listnet_truth(scores, relevance, valid, 0.5)
    out, out_grad = run(impl.listnet_loss, scores, relevance, 0.5, valid, "none")
    torch.testing.assert_close(out, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out_grad, grad, rtol=1e-10, atol=1e-14)
    mean, mean_grad = run(impl.listnet_loss, scores, relevance, 0.5, valid, "mean")
    assert counted.sum() == 4
    torch.testing.assert_close(mean, loss.sum() / 4, rtol=1e-12, atol=0)
    torch.testing.assert_close(mean_grad, grad / 4, rtol=1e-10, atol=1e-14)
    # every row without a valid candidate: 0, a zero gradient
    out, out_grad = run(impl.listnet_loss, scores, relevance, 0.5, torch.zeros_like(valid), "mean")
    assert out.item() == 0 and torch.all(out_grad == 0)


# ---- gradients are first order ----

# Each op through the public function that runs it; a differentiable term beside it, so that a
# second derivative that skipped the op would go unnoticed (no "does not require grad" error).
SECOND_ORDER = {
    "smooth_rank": lambda s, r: ik.smooth_rank(s, 0.1).sum(),
    "smooth_ndcg": lambda s, r: ik.smooth_ndcg_loss(s, r, 0.1),
    "smooth_ap": lambda s, r: ik.smooth_ap_loss(s, r > 0.5, 0.1),
    "kendall_full": lambda s, r: ik.kendall_loss(s, r, phi="logistic", temperature=0.1),
    "triplet_sn": lambda s, r: ik.triplet_sn_loss(s, r, temperature=0.1),
    "infonce": lambda s, r: ik.infonce_loss(s, 0.1),
    "vse_triplet": lambda s, r: ik.triplet_loss(s, 0.5),
}


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_double_backward_raises(name, device, gen):
    scores = cosine_scores(5, 5, gen).to(device).requires_grad_()
    relevance = torch.rand(5, 5, generator=gen, dtype=torch.float64).to(device)
    loss = SECOND_ORDER[name](scores, relevance) + (scores * scores).sum()
    (g,) = torch.autograd.grad(loss, scores, create_graph=True)   # the first derivative works
    first = torch.autograd.grad(SECOND_ORDER[name](scores, relevance), scores)[0]
    torch.testing.assert_close(g.detach(), first + 2 * scores.detach(), rtol=1e-12, atol=1e-14)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(g.sum(), scores)


# ---- torch.compile(fullgraph=True, dynamic=True): every public function and module ----

def _every_function(s, r, t):
    """Every public function on square scores, with a float hyperparameter t that is symbolic
    under dynamic=True (as a schedule's would be)."""
    valid = r > 0.1
    pos = torch.arange(s.shape[0], device=s.device).flip(0)
    return [
        ik.smooth_rank(s, t, valid),
        ik.smooth_ndcg_loss(s, r, t, k=3, gain="linear", valid=valid, reduction="none"),
        ik.triplet_loss(s, t),
        ik.triplet_loss(s, t, max_violation=False, reduction="none", positives=pos),
        ik.infonce_loss(s, t),
        ik.infonce_loss(s, t, positives=pos),
        ik.triplet_sn_loss(s, r, t, t, rho=0.8, reduction="none"),
        ik.triplet_sn_loss(s, None, temperature=t, positives=pos),
        ik.kendall_loss(s, r, gap=t, phi="logistic", temperature=t, valid=valid, reduction="none"),
        ik.kendall_loss(s, r, phi="tanh", temperature=t, sampling="swhs", window=2, stride=1),
        ik.ranknet_loss(s, r, temperature=t),
        ik.smooth_ap_loss(s, r > 0.5, t, valid),
        ik.listnet_loss(s, r, t, valid),
    ]


def _every_module(modules, s, r):
    pos = torch.arange(s.shape[0], device=s.device)
    out = [m(s, r) for m in modules]
    out += [m(s, r, r.T, positives=pos, scores_t2i=s.T) for m in modules[2:] if not isinstance(m, ik.TripletSNLoss)]
    return out


def _compare_compiled(fn, sizes, device, gen, extra):
    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for b, t in sizes:
        scores = cosine_scores(b, b, gen).to(device)
        relevance = torch.rand(b, b, generator=gen, dtype=torch.float64).to(device)
        results = []
        for f in (fn, compiled):
            s = scores.clone().requires_grad_()
            outs = f(s, relevance, *extra(t))
            sum(o.sum() for o in outs).backward()
            results.append(([o.detach() for o in outs], s.grad))
        (want, want_grad), (got, got_grad) = results
        for i, (a, b_) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b_, rtol=1e-12, atol=1e-14, msg=lambda m: f"output {i}: {m}")
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-12, atol=1e-14)


def test_compile_dynamic_every_function(device, gen):
    """One graph (fullgraph) for every function, dynamic shapes and a symbolic float; the values
    and gradients of eager. (aot_eager: dynamo, the fake kernels and AOT autograd, without
    inductor's code generation, which test_ops.py covers.)"""
    _compare_compiled(_every_function, [(6, 0.2), (9, 0.3)], device, gen, lambda t: (t,))


def test_compile_dynamic_every_module(gen):
    """Every module, on the CPU: they compose the functions, whose ops the test above compiles on every device."""
    device = "cpu"
    modules = [ik.SmoothNDCGLoss(tau=0.1, k=4), ik.KendallRankLoss(phi="logistic"),
               ik.ListwiseITRLoss(tau=0.1), ik.TripletLoss(), ik.InfoNCELoss(0.1),
               ik.InfoNCELoss(learn_temperature=True), ik.TripletSNLoss(rho=0.9), ik.BCLSLoss(window=2)]
    for m in modules:
        m.to(device)
    _compare_compiled(lambda s, r: _every_module(modules, s, r), [(5, None), (7, None)], device, gen, lambda t: ())


# ---- relevance outside [0, 1] and NaN: accepted, each loss's treatment pinned (CPU) ----

def _smooth_ranks(s, valid, tau):
    n = len(s)
    return [1 + sum(1 / (1 + math.exp(-(s[k] - s[j]) / tau)) for k in range(n) if k != j and valid[k])
            for j in range(n)]


def smooth_ndcg_truth(scores, relevance, tau, k=None, linear=False):
    """Per row: the gain set (the k first by decreasing relevance, ties to the lower column, NaN
    last), gains 2^R - 1 or R, 1 - DCG / IDCG if IDCG > 0, NaN if IDCG is NaN, else 0; float64."""
    rows = []
    for q in range(scores.shape[0]):
        s, r = scores[q].tolist(), relevance[q].tolist()
        n = len(s)
        order = sorted(range(n), key=lambda j: (math.isnan(r[j]), -r[j] if not math.isnan(r[j]) else 0, j))
        gain_set = order[:n if k is None else k]
        gain = {j: r[j] if linear else 2 ** r[j] - 1 for j in gain_set}
        idcg = sum(gain[j] / math.log2(2 + i) for i, j in enumerate(gain_set))
        ranks = _smooth_ranks(s, [True] * n, tau)
        dcg = sum(gain[j] / math.log2(1 + ranks[j]) for j in gain_set)
        rows.append(1 - dcg / idcg if idcg > 0 else (math.nan if math.isnan(idcg) else 0.0))
    return torch.tensor(rows, dtype=torch.float64)


def test_smooth_ndcg_relevance_out_of_range(gen):
    """Gains of any real relevance (2^R - 1 < 0 below 0, > 1 above 1); a row whose IDCG is <= 0
    has loss 0 and is not counted."""
    scores = cosine_scores(4, 6, gen)
    relevance = torch.rand(4, 6, generator=gen, dtype=torch.float64) * 2.5 - 0.5   # [-0.5, 2]
    relevance[:3, 0] = 2.0   # rows 0-2 keep IDCG > 0 under both gains, so "mean" counts them all
    relevance[3] = -torch.rand(6, generator=gen, dtype=torch.float64)              # no gain: IDCG < 0
    for linear in (False, True):
        for k in (None, 3):
            gain = "linear" if linear else "exp"
            want = smooth_ndcg_truth(scores, relevance, 0.1, k, linear)
            out = ik.smooth_ndcg_loss(scores, relevance, 0.1, k, gain, reduction="none")
            torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-14)
            assert out[3] == 0
            mean = ik.smooth_ndcg_loss(scores, relevance, 0.1, k, gain)
            torch.testing.assert_close(mean, want[:3].mean(), rtol=1e-12, atol=1e-14)


def test_smooth_ndcg_nan_relevance(gen):
    """A NaN relevance in the gain set makes its row's loss NaN (and "mean" NaN); outside the
    top-k gain set (NaN sorts last) it carries no gain and the row is finite."""
    scores = cosine_scores(3, 6, gen)
    relevance = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    relevance[1, 2] = math.nan
    out = ik.smooth_ndcg_loss(scores, relevance, 0.1, reduction="none")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
    assert torch.isnan(ik.smooth_ndcg_loss(scores, relevance, 0.1))
    torch.testing.assert_close(out[[0, 2]], smooth_ndcg_truth(scores, relevance, 0.1)[[0, 2]], rtol=1e-12, atol=0)
    top = ik.smooth_ndcg_loss(scores, relevance, 0.1, k=5, reduction="none")
    torch.testing.assert_close(top, smooth_ndcg_truth(scores, relevance, 0.1, k=5), rtol=1e-12, atol=1e-14)
    assert torch.isfinite(top).all()


def kendall_truth(scores, relevance, gap, margin):
    """Per-row hinge sums and pair counts over j, k with R_j - R_k > gap (false for NaN); loops."""
    sums, counts = [], []
    for q in range(scores.shape[0]):
        s, r = scores[q].tolist(), relevance[q].tolist()
        pairs = [(j, k) for j in range(len(s)) for k in range(len(s)) if r[j] - r[k] > gap]
        sums.append(sum(max(0.0, margin + s[k] - s[j]) for j, k in pairs))
        counts.append(len(pairs))
    return torch.tensor(sums, dtype=torch.float64), sum(counts)


def test_kendall_relevance_out_of_range_and_nan(gen):
    """Only relevance differences matter (any real values); a NaN relevance is in no pair."""
    scores = cosine_scores(4, 9, gen)
    relevance = torch.rand(4, 9, generator=gen, dtype=torch.float64) * 4 - 2
    relevance[1, 3] = relevance[2, 0] = math.nan
    sums, count = kendall_truth(scores, relevance, 0.3, 0.1)
    out = ik.kendall_loss(scores, relevance, 0.3, margin=0.1, reduction="none")
    torch.testing.assert_close(out.double(), sums, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(ik.kendall_loss(scores, relevance, 0.3, margin=0.1), sums.sum() / count,
                               rtol=1e-12, atol=0)
    # the same as masking the NaN-relevance candidates (their scores are in no term)
    masked = ik.kendall_loss(scores, relevance.nan_to_num(0.5), 0.3, margin=0.1, valid=~relevance.isnan(),
                             reduction="none")
    torch.testing.assert_close(out, masked, rtol=1e-12, atol=1e-14)


def test_swhs_nan_relevance_sorts_last(gen):
    """SW-HS: NaN relevance orders after every valid number (before masked candidates); a window
    step whose gap involves a NaN relevance is not kept."""
    scores = cosine_scores(1, 6, gen)
    relevance = torch.tensor([[0.9, math.nan, 0.1, 1.5, -0.5, 0.6]], dtype=torch.float64)
    upper, lower, keep = ik._ops.ops.kendall_swhs(scores, relevance, None, 1, 1, 0.0)
    # order 3 (1.5), 0 (0.9), 5 (0.6), 2 (0.1), 4 (-0.5), 1 (NaN): steps pair neighbours in it
    order = [3, 0, 5, 2, 4, 1]
    assert upper[0].tolist() == order[:-1] and lower[0].tolist() == order[1:]
    assert keep[0].tolist() == [True, True, True, True, False]


def triplet_sn_truth(scores, relevance, margin, temperature, rho):
    """Both directions, per query: T log(1 + sum over j != p with R < rho (NaN: not < rho))."""
    b = scores.shape[0]
    out = torch.zeros(2, b, dtype=torch.float64)
    for d, (s, r) in enumerate(((scores, relevance), (scores.T, relevance.T))):
        for q in range(b):
            terms = [math.exp((margin + s[q, j].item() - s[q, q].item()) / temperature)
                     for j in range(b) if j != q and r[q, j].item() < rho]
            out[d, q] = temperature * math.log1p(sum(terms))
    return out


def test_triplet_sn_relevance_out_of_range_and_nan(gen):
    """Neg = {j != p: R < rho}: relevance > 1 is not a negative at rho = 1, relevance < 0 is, a NaN
    relevance never is."""
    scores = cosine_scores(6, 6, gen)
    relevance = torch.rand(6, 6, generator=gen, dtype=torch.float64) * 3 - 1
    relevance[0, 1] = relevance[4, 2] = math.nan
    for rho in (1.0, 0.5):
        want = triplet_sn_truth(scores, relevance, 0.2, 0.1, rho)
        out = ik.triplet_sn_loss(scores, relevance, 0.2, 0.1, rho, "none")
        torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-14)


def test_listnet_relevance_out_of_range_and_nan(gen):
    """ListNet's target softmax(R) takes any real relevance; a NaN relevance makes its row NaN."""
    scores = cosine_scores(3, 5, gen)
    relevance = torch.rand(3, 5, generator=gen, dtype=torch.float64) * 4 - 2
    valid = torch.ones(3, 5, dtype=torch.bool)
    want = listnet_truth(scores, relevance, valid, 0.5)[0]
    torch.testing.assert_close(ik.listnet_loss(scores, relevance, 0.5, reduction="none"), want, rtol=1e-12,
                               atol=1e-14)
    relevance[1, 4] = math.nan
    out = ik.listnet_loss(scores, relevance, 0.5, reduction="none")
    assert torch.isnan(out[1]) and torch.isfinite(out[[0, 2]]).all()
