import math

import mpmath  # a dependency of torch (through sympy): the exact truth of the small-temperature tests
import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import ALL_DTYPES, F64, assert_close_to_truth, assert_compiles_to_same, cosine_scores, inputs, run


def _check_parity(fn_fused, fn_ref, scores, args, kw, dtype, loss_atol=1e-6):
    truth, truth_grad = run(fn_ref, scores.double(), *[a.double() if torch.is_tensor(a) and a.is_floating_point()
                                                        else a for a in args], **kw)
    out, grad = run(fn_fused, scores, *args, **kw)
    assert out.dtype == dtype and grad.dtype == dtype
    same_out = same_grad = None
    if dtype != torch.float64:
        same_out, same_grad = run(fn_ref, scores, *args, **kw)
    assert_close_to_truth(out, truth, same_out, dtype, atol=1e-14 if dtype == torch.float64 else loss_atol)
    assert_close_to_truth(grad, truth_grad, same_grad, dtype, rtol32=1e-4)


# ---- Triplet-SN ----

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("temperature", [0.01, 0.1])
@pytest.mark.parametrize("rho", [None, 0.6])
@pytest.mark.parametrize("b", [1, 2, 3, 17, 128, 257])
def test_triplet_sn_matches_reference(b, rho, temperature, dtype, device, gen):
    scores, relevance, _ = inputs(b, b, gen)
    scores, relevance = scores.to(device, dtype), relevance.to(device, dtype)
    kw = dict(temperature=temperature, reduction="none")
    if rho is None:
        _check_parity(ik.triplet_sn_loss, ref.triplet_sn_loss, scores, (), kw, dtype)
    else:
        _check_parity(ik.triplet_sn_loss, ref.triplet_sn_loss, scores, (relevance,), dict(kw, rho=rho), dtype)


def test_triplet_sn_tends_to_vse_hinge(device, gen):
    """As T -> 0, Triplet-SN is the VSE++ max-violation hinge (docs/bcls.md §1)."""
    scores = cosine_scores(40, 40, gen).to(device)
    for t in (1e-3, 1e-5):
        sn = ik.triplet_sn_loss(scores, temperature=t, reduction="none")
        vse = ik.triplet_loss(scores, reduction="none")
        assert (sn - vse).abs().max() <= t * math.log(40) + 1e-12


def test_triplet_sn_deterministic(device, gen):
    scores, relevance, _ = inputs(300, 300, gen)
    scores, relevance = scores.float().to(device), relevance.float().to(device)
    runs = [run(ik.triplet_sn_loss, scores, relevance, rho=0.7) for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


# ---- Triplet-SN as T -> 0 (the VSE++ limit): values and gradients against an exact truth ----

def triplet_sn_queries(q, n, positives, relevance, rho):
    """Triplet-SN's queries as (positive (row, col), negatives [(row, col)]): the rows of (q, n)
    scores against `positives`, or (positives None) both directions of a square matrix, the
    text-to-image queries reading relevance.T. Without relevance every j != p is a negative."""
    def negatives(cells, p):
        return [c for c in cells if c != p and (relevance is None or relevance[c].item() < rho)]
    if positives is not None:
        return [((i, int(positives[i])), negatives([(i, j) for j in range(n)], (i, int(positives[i]))))
                for i in range(q)]
    rows = [((i, i), negatives([(i, j) for j in range(n)], (i, i))) for i in range(q)]
    cols = [((j, j), negatives([(i, j) for i in range(q)], (j, j))) for j in range(n)]
    return rows + cols


def triplet_sn_truth(scores, queries, margin, temperature, upstream):
    """Per query T ln(1 + sum_j exp((m + S_j - S_p) / T)) and the gradient of sum(upstream * loss),
    in 60-digit arithmetic (mpmath) on the exact values of the scores, margin and T: exact at any T."""
    s = scores.double().tolist()
    grad = [[mpmath.mpf(0)] * scores.shape[1] for _ in range(scores.shape[0])]
    losses = []
    with mpmath.workdps(60):
        m, t = mpmath.mpf(margin), mpmath.mpf(temperature)
        for ((pi, pj), negs), g in zip(queries, upstream.double().tolist()):
            x = [(m + mpmath.mpf(s[i][j]) - mpmath.mpf(s[pi][pj])) / t for i, j in negs]
            top = max(x + [mpmath.mpf(0)])
            total = mpmath.exp(-top) + mpmath.fsum(mpmath.exp(v - top) for v in x)
            losses.append(t * (top + mpmath.log(total)))
            for (i, j), v in zip(negs, x):
                w = g * mpmath.exp(v - top) / total
                grad[i][j] += w
                grad[pi][pj] -= w
        return (torch.tensor([float(v) for v in losses], dtype=torch.float64),
                torch.tensor([[float(v) for v in row] for row in grad], dtype=torch.float64))


def near_tie_scores(q, n, positives, temperature, dtype, gen, margin=0.2):
    """Scores whose every Triplet-SN term matters at temperature T: the positives near one base
    score b (b + e T), every other score b - m + c T with c in [-8, 4], so that the exponents
    (m + S_j - S_p) / T are of order 1 in both directions (then rounded to dtype: the truth reads
    the rounded values)."""
    base = 0.1 + 0.8 * torch.rand((), generator=gen, dtype=torch.float64)
    s = base - margin + temperature * (12 * torch.rand(q, n, generator=gen, dtype=torch.float64) - 8)
    rows = torch.arange(q)
    cols = torch.arange(q) if positives is None else positives
    s[rows, cols] = base + temperature * (2 * torch.rand(q, generator=gen, dtype=torch.float64) - 1)
    return s.to(dtype)


def relative_error(got, truth):
    return ((got.double() - truth).norm() / truth.norm()).item()


SMALL_TEMPERATURES = {torch.float32: [1.0, 0.1, 1e-3, 1e-5, 1e-6, 1e-7, 1e-9],
                      torch.float64: [1.0, 1e-3, 1e-6, 1e-9, 1e-12, 1e-14, 1e-16]}
SMALL_T_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.mark.parametrize("soft", [False, True], ids=["all-negatives", "relevance"])
@pytest.mark.parametrize("shape", ["square", "rows"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_sn_small_temperature_is_exact(dtype, shape, soft, device, gen):
    """Values and gradients keep their relative accuracy from T = 1 down to the VSE++ limit (the
    log-sum-exp form lost eps * |S| / T: float32 gradients off by 1e-3 at T = 1e-5, infinite at 1e-9)."""
    q, n = (6, 6) if shape == "square" else (5, 9)
    positives = None if shape == "square" else torch.randint(0, n, (q,), generator=gen)
    relevance = torch.randint(0, 5, (q, n), generator=gen).double() / 4 if soft else None
    rho = 0.6 if soft else 1.0
    queries = triplet_sn_queries(q, n, positives, relevance, rho)
    errors = {}
    for t in SMALL_TEMPERATURES[dtype]:
        scores = near_tie_scores(q, n, positives, t, dtype, gen)
        upstream = torch.rand(len(queries), generator=gen, dtype=torch.float64).to(dtype) + 0.5
        truth, truth_grad = triplet_sn_truth(scores, queries, 0.2, t, upstream)
        kw = dict(margin=0.2, temperature=t, rho=rho, reduction="none")
        if positives is not None:
            kw["positives"] = positives.to(device)
        out, grad = run(ik.triplet_sn_loss, scores.to(device), None if relevance is None else relevance.to(device),
                        upstream=upstream.reshape(-1, q).squeeze(0).to(device), **kw)
        errors[t] = (relative_error(out.reshape(-1).cpu(), truth), relative_error(grad.cpu(), truth_grad))
    assert all(max(e) <= SMALL_T_RTOL[dtype] for e in errors.values()), errors


@pytest.mark.parametrize("shape", ["square", "rows"])
def test_triplet_sn_tiny_temperature_by_hand(shape, device):
    """The issue's case: at T = 1e-9 the loss is the VSE++ max-violation hinge and the gradient of
    its mean has S.grad[0, 1] = 1/3 (row 0's and column 1's hardest negative), not 3e11."""
    s = torch.tensor([[.1, .5, .2], [.3, .2, 0.], [.1, .2, .4]], device=device, requires_grad=True)
    positives = None if shape == "square" else torch.arange(3)
    kw = {} if positives is None else dict(positives=positives.to(device))
    ik.triplet_sn_loss(s, temperature=1e-9, **kw).backward()
    assert abs(s.grad[0, 1].item() - 1 / 3) <= 1e-7
    queries = triplet_sn_queries(3, 3, positives, None, 1.0)
    _, truth = triplet_sn_truth(s.detach().cpu(), queries, 0.2, 1e-9, torch.ones(len(queries)) / len(queries))
    assert relative_error(s.grad.cpu(), truth) <= 1e-6


def test_triplet_sn_non_finite_scores(device):
    """The kernels' shifted form gives the formula's non-finite values as torch computes them: a NaN
    positive makes its queries NaN (even when every negative is -inf), a negative at +inf gives +inf,
    -inf negatives add nothing."""
    inf, nan = math.inf, math.nan
    s = torch.tensor([[nan, -inf, -inf, 0.1], [-inf, 0.3, 0.2, inf], [-inf, 0.1, inf, 0.], [0.2, -inf, 0.5, 0.4]],
                     dtype=torch.float64)
    expected = []
    for m in (s, s.T):
        x = ((0.2 + m - m.diagonal()[:, None]) / 0.05).masked_fill(torch.eye(4, dtype=torch.bool), -inf)
        expected.append(0.05 * torch.logsumexp(torch.cat([torch.zeros(4, 1, dtype=s.dtype), x], dim=1), dim=1))
    expected = torch.stack(expected)
    got = ik.triplet_sn_loss(s.to(device), temperature=0.05, reduction="none").cpu()
    torch.testing.assert_close(got, expected, equal_nan=True)
    rows = ik.triplet_sn_loss(s.to(device), temperature=0.05, reduction="none", positives=torch.arange(4, device=device))
    torch.testing.assert_close(rows.cpu(), expected[0], equal_nan=True)


# ---- Triplet-SN's rho ----

@pytest.mark.parametrize("rho", [1.0, 0.0, -1.0, -math.inf, math.inf])
@pytest.mark.parametrize("shape", ["square", "rows"])
def test_triplet_sn_rho_without_relevance_is_ignored(shape, rho, device, gen):
    """Without relevance every j != p is a negative, whatever rho (rho <= 0 gave 0 on the kernels)."""
    q, n = (5, 5) if shape == "square" else (4, 7)
    scores = cosine_scores(q, n, gen).to(device)
    positives = None if shape == "square" else torch.randint(0, n, (q,), generator=gen)
    kw = dict(margin=0.2, temperature=0.05, rho=rho, reduction="none")
    if positives is not None:
        kw["positives"] = positives.to(device)
    out, grad = run(ik.triplet_sn_loss, scores, None, **kw)
    queries = triplet_sn_queries(q, n, positives, None, rho)
    truth, truth_grad = triplet_sn_truth(scores.cpu(), queries, 0.2, 0.05, torch.ones(len(queries)))
    assert relative_error(out.reshape(-1).cpu(), truth) <= 1e-12 and relative_error(grad.cpu(), truth_grad) <= 1e-12
    assert torch.all(out > 0)


@pytest.mark.parametrize("shape", ["square", "rows"])
def test_triplet_sn_rho_inf_keeps_every_negative(shape, device, gen):
    """With relevance, Neg = {j != p : R < rho}: rho = +inf keeps them all (relevance 1 included),
    rho = 1 leaves out relevance 1, rho = -inf keeps none."""
    q, n = (6, 6) if shape == "square" else (4, 7)
    scores = cosine_scores(q, n, gen).to(device)
    relevance = (torch.randint(0, 3, (q, n), generator=gen).double() / 2).to(device)  # 0, 0.5 and 1
    kw = dict(margin=0.2, temperature=0.05, reduction="none")
    if shape == "rows":
        kw["positives"] = torch.randint(0, n, (q,), generator=gen).to(device)
    everything = ik.triplet_sn_loss(scores, **kw)
    torch.testing.assert_close(ik.triplet_sn_loss(scores, relevance, rho=math.inf, **kw), everything,
                               rtol=0, atol=0)
    strict = ik.triplet_sn_loss(scores, relevance, rho=1.0, **kw)
    positives = None if shape == "square" else kw["positives"].cpu()
    queries = triplet_sn_queries(q, n, positives, relevance.cpu(), 1.0)
    truth, _ = triplet_sn_truth(scores.cpu(), queries, 0.2, 0.05, torch.ones(len(queries)))
    assert relative_error(strict.reshape(-1).cpu(), truth) <= 1e-12
    assert torch.all(ik.triplet_sn_loss(scores, relevance, rho=-math.inf, **kw) == 0)


def test_triplet_sn_rho_checks(device):
    """rho = +inf is accepted everywhere (functions, modules, BCLS); NaN is rejected naming rho, by
    the Python API and by the ops themselves, before any work."""
    s, r = torch.rand(4, 4, device=device), torch.rand(4, 4, device=device)
    rows = dict(positives=torch.tensor([0, 2, 1, 3], device=device))
    assert torch.isfinite(ik.TripletSNLoss(rho=math.inf)(s, r))
    assert torch.isfinite(ik.BCLSLoss(rho=math.inf, window=2)(s, r))
    assert torch.isfinite(ik.BCLSLoss(rho=math.inf, window=2)(s, r, positives=torch.arange(4, device=device),
                                                              scores_t2i=s.T.contiguous()))
    for call in (lambda: ik.triplet_sn_loss(s, r, rho=math.nan), lambda: ik.triplet_sn_loss(s, r, rho=math.nan, **rows),
                 lambda: ref.triplet_sn_loss(s, r, rho=math.nan), lambda: ik.TripletSNLoss(rho=math.nan),
                 lambda: ik.BCLSLoss(rho=math.nan)):
        with pytest.raises(ValueError, match="rho must be a number"):
            call()
    with pytest.raises(ValueError, match="rho must be a number"):
        ik._ops.ops.triplet_sn(s, None, 0.2, 0.05, math.nan)
    stats = ik._ops.ops.triplet_sn(s, None, 0.2, 0.05, 1.0)[1]
    with pytest.raises(ValueError, match="rho must be a number"):
        ik._ops.ops.triplet_sn_backward(torch.ones(2, 4, device=device), s, None, stats, 0.2, 0.05, math.nan)


# ---- Kendall, full ----

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("phi", ["hinge", "logistic", "tanh"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q,n", [(1, 1), (2, 2), (3, 3), (17, 17), (64, 128), (5, 257)])
def test_kendall_full_matches_reference(q, n, masked, phi, dtype, device, gen):
    scores, relevance, valid = inputs(q, n, gen, masked)
    # Relevance on a 1/64 grid (exact in every dtype, with ties): no difference lies within rounding
    # of the gap 0.3, where a pair's membership would flip between float32 and the float64 truth.
    relevance = (relevance * 64).round() / 64
    scores, relevance = scores.to(device, dtype), relevance.to(device, dtype)
    valid = None if valid is None else valid.to(device)
    kw = dict(phi=phi, margin=0.05, temperature=0.1, valid=valid, reduction="none")
    _check_parity(ik.kendall_loss, ref.kendall_loss, scores, (relevance,), kw, dtype, loss_atol=1e-5)


@pytest.mark.parametrize("gap", [0.0, 0.3, 0.9])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_kendall_full_gap_and_reduction(gap, reduction, device, gen):
    scores, relevance, _ = inputs(6, 30, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    kw = dict(gap=gap, reduction=reduction)
    out, grad = run(ik.kendall_loss, scores, relevance, **kw)
    truth, truth_grad = run(ref.kendall_loss, scores, relevance, **kw)
    torch.testing.assert_close(out, truth, **F64)
    torch.testing.assert_close(grad, truth_grad, **F64)


def test_kendall_rows_without_pairs(device, gen):
    scores, relevance, _ = inputs(4, 10, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    relevance[1] = 0.5  # no gap inside row 1
    s = scores.clone().requires_grad_()
    per_row = ik.kendall_loss(s, relevance, reduction="none")
    mean = ik.kendall_loss(s, relevance)
    mean.backward()
    assert per_row[1] == 0 and torch.all(s.grad[1] == 0) and torch.isfinite(mean)
    flat = torch.full_like(relevance, 0.5)
    assert ik.kendall_loss(scores, flat).item() == 0 and ik.kendall_loss(scores, flat, sampling="swhs").item() == 0


def test_kendall_full_deterministic(device, gen):
    scores, relevance, _ = inputs(64, 200, gen)
    scores, relevance = scores.float().to(device), relevance.float().to(device)
    runs = [run(ik.kendall_loss, scores, relevance, phi="logistic") for _ in range(2)]
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def phi_truth(x, phi, margin, temperature):
    """The Kendall surrogates in float64, NaN in, NaN out (torch.maximum propagates NaN)."""
    if phi == "hinge":
        return torch.maximum(x + margin, torch.zeros_like(x))
    z = x / temperature
    if phi == "logistic":
        return temperature * (torch.maximum(z, torch.zeros_like(z)) + torch.log1p(torch.exp(-z.abs())))
    return (1 + torch.tanh(z)) / 2


def kendall_full_truth(scores, relevance, valid, gap, phi, margin, temperature):
    """Per-row sums and pair counts of the full form in float64: every pair (j, k) of valid
    candidates with R_j - R_k > gap, phi(S_k - S_j)."""
    s, r = scores.double(), relevance.double()
    live = torch.ones_like(s, dtype=torch.bool) if valid is None else valid.cpu()
    s = torch.where(live, s, 0)  # masked scores (even NaN) enter no pair
    pair = (r[:, :, None] - r[:, None, :] > gap) & live[:, :, None] & live[:, None, :]  # [q, j, k]
    terms = torch.where(pair, phi_truth(s[:, None, :] - s[:, :, None], phi, margin, temperature), 0)
    return terms.sum(dim=(1, 2)), pair.sum(dim=(1, 2))


def kendall_swhs_truth(scores, relevance, valid, window, stride, gap, phi, margin, temperature):
    """Per-row sums and term counts of SW-HS in float64, from brute_force_swhs's selection."""
    s = scores.double()
    sums, counts = [], []
    for q, steps in enumerate(brute_force_swhs(scores.detach(), relevance, valid, window, stride, gap)):
        kept = [(a, b) for a, b, keep in steps if keep]
        terms = [phi_truth(s[q, b] - s[q, a], phi, margin, temperature) for a, b in kept]
        sums.append(torch.stack(terms).sum() if terms else s.new_zeros(()))
        counts.append(len(kept))
    return torch.stack(sums), torch.tensor(counts)


TRUTH_RTOL = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("sampling", ["full", "swhs"])
@pytest.mark.parametrize("phi", ["hinge", "logistic", "tanh"])
def test_kendall_nan_score_gives_nan_row(phi, sampling, dtype, device, gen):
    """A NaN score in a pair (full) or in a kept window pair (swhs, where a NaN is the hardest of its
    window) makes its row's loss NaN for every phi; the other rows, and a NaN at a masked candidate,
    stay finite in loss and gradient."""
    q, n, window = 3, 12, 4
    scores = cosine_scores(q, n, gen)
    # distinct relevance: every SW-HS step is kept (gap 0), and the full form's pairs are clear of gap 0.3
    relevance = torch.argsort(torch.rand(q, n, generator=gen), dim=1).double() / n
    valid = torch.ones(q, n, dtype=torch.bool)
    # row 1: NaN at the second most relevant candidate (in step 0's upper window, not its first)
    scores[1, relevance[1].argsort(descending=True)[1]] = float("nan")
    # row 2: NaN at a masked column 0, and 7 valid candidates: its last step (of 2) is past the row
    scores[2, 0] = float("nan")
    valid[2, :5] = False
    scores, relevance = scores.to(dtype), relevance.to(dtype)
    kw = dict(phi=phi, margin=0.05, temperature=0.1, sampling=sampling, window=window)
    s = scores.to(device).clone().requires_grad_()
    out = ik.kendall_loss(s, relevance.to(device), valid=valid.to(device), reduction="none", **kw)
    out.sum().backward()
    assert out.dtype == dtype and out.shape == (q,)
    assert torch.isnan(ik.kendall_loss(scores.to(device), relevance.to(device), valid=valid.to(device), **kw))

    truth_s = scores.double().clone().requires_grad_()
    if sampling == "full":
        truth, _ = kendall_full_truth(truth_s, relevance, valid, 0.3, phi, 0.05, 0.1)
    else:
        truth, _ = kendall_swhs_truth(truth_s, relevance, valid, window, window, 0.0, phi, 0.05, 0.1)
    assert torch.isnan(out[1]) and torch.isnan(truth[1])
    finite = [0, 2]
    assert torch.all(torch.isfinite(out[finite]))
    torch.testing.assert_close(out[finite].double().cpu(), truth[finite].detach(), rtol=TRUTH_RTOL[dtype], atol=1e-6)
    truth[finite].sum().backward()
    grad = s.grad[finite].double().cpu()
    assert torch.all(torch.isfinite(grad)) and torch.all(grad[1, :5] == 0)  # masked: exactly 0, the NaN too
    torch.testing.assert_close(grad, truth_s.grad[finite], rtol=TRUTH_RTOL[dtype], atol=1e-3 if dtype in
                               (torch.float16, torch.bfloat16) else 1e-6)


@pytest.mark.parametrize("phi,sampling", [("hinge", "full"), ("logistic", "full"), ("tanh", "full"),
                                          ("hinge", "swhs"), ("logistic", "swhs")])
def test_kendall_float16_does_not_overflow(phi, sampling, device, gen):
    """(2, 1100) in float16: a row's full-form sum (~3e5 pairs) passes float16's 65504, as do the SW-HS
    sums of large scores; the sums and the mean run in float32, so the float16 mean and its gradient
    match the float64 truth (and float32) instead of being inf."""
    q, n = 2, 1100
    scores, relevance, _ = inputs(q, n, gen)
    relevance = (relevance * 64).round() / 64  # exact in float16; no difference within rounding of the gap
    kw = dict(phi=phi, margin=0.05, temperature=0.1, sampling=sampling)
    if sampling == "swhs":  # relevance distinct in float16: all ~1100 steps kept, terms of ~100 each
        scores, kw = 1000 * scores, dict(kw, window=1)
        relevance = torch.argsort(torch.rand(q, n, generator=gen), dim=1).double() / n
    scores = scores.half()
    out, grad = run(ik.kendall_loss, scores.to(device), relevance.half().to(device), **kw)
    truth_s = scores.double().clone().requires_grad_()
    if sampling == "full":
        sums, counts = kendall_full_truth(truth_s, relevance.half(), None, 0.3, phi, 0.05, 0.1)
    else:
        sums, counts = kendall_swhs_truth(truth_s, relevance.half(), None, 1, 1, 0.0, phi, 0.05, 0.1)
    truth = sums.sum() / counts.sum()
    truth.backward()
    assert sums.sum() > 65504  # the sum does overflow float16
    assert out.dtype == torch.float16 and grad.dtype == torch.float16
    assert torch.isfinite(out) and torch.all(torch.isfinite(grad))
    torch.testing.assert_close(out.double().cpu(), truth.detach(), rtol=2e-3, atol=0)
    err = (grad.double().cpu() - truth_s.grad).norm() / truth_s.grad.norm()
    assert err <= 2e-3, err
    out32 = ik.kendall_loss(scores.float().to(device), relevance.float().to(device), **kw)
    torch.testing.assert_close(out.float(), out32, rtol=2e-3, atol=0)
    # per-row sums: the op returns them in float32 (its accumulator), finite
    if sampling == "full":
        op_sums, op_counts, _ = ik._ops.ops.kendall_full(scores.to(device), relevance.half().to(device), None, 0.3,
                                                         ["hinge", "logistic", "tanh"].index(phi), 0.05, 0.1, False)
        assert op_sums.dtype == torch.float32 and torch.equal(op_counts.cpu(), counts)
        torch.testing.assert_close(op_sums.double().cpu(), sums.detach(), rtol=1e-5, atol=0)


# ---- Kendall, SW-HS ----

def brute_force_swhs(scores, relevance, valid, window, stride, gap):
    """docs/bcls.md §2 (SW-HS) as loops: per row, the (upper, lower, keep) of every window step. A NaN score
    is the hardest of its window (lowest in the upper, highest in the lower); ties to the lower column."""
    rows = []
    for q in range(scores.shape[0]):
        s, r = scores[q].tolist(), relevance[q].tolist()
        cols = [j for j in range(len(s)) if valid is None or valid[q, j]]
        cols.sort(key=lambda j: (-r[j], j))
        n, steps, t = len(cols), [], 0
        while t * stride + window < n:
            upper = cols[t * stride: t * stride + window]
            lower = cols[t * stride + window: t * stride + 2 * window]
            a = min(upper, key=lambda j: (0, 0, j) if math.isnan(s[j]) else (1, s[j], j))
            b = min(lower, key=lambda j: (0, 0, j) if math.isnan(s[j]) else (1, -s[j], j))
            steps.append((a, b, min(r[j] for j in upper) - max(r[j] for j in lower) > gap))
            t += 1
        rows.append(steps)
    return rows


@pytest.mark.parametrize("window,stride", [(1, 1), (2, 1), (3, 3), (8, 8), (8, 3), (5, 7)])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])   # float32 sorts packed integer keys
def test_swhs_selection_matches_brute_force(window, stride, masked, dtype, device, gen):
    q, n = 7, 41
    # Coarse values make ties in both relevance and scores; -0.0 ties +0.0; infinities sort too.
    scores = (torch.randint(0, 6, (q, n), generator=gen) / 5).to(device, dtype)
    relevance = (torch.randint(-1, 5, (q, n), generator=gen) / 4).to(dtype)
    relevance[relevance == 0] = torch.tensor([0.0, -0.0], dtype=dtype)[torch.randint(0, 2, ((relevance == 0).sum(),),
                                                                                      generator=gen)]
    relevance[0, :3] = torch.tensor([float("inf"), -float("inf"), float("inf")], dtype=dtype)
    relevance = relevance.to(device)
    valid = (torch.rand(q, n, generator=gen) > 0.25).to(device) if masked else None
    upper, lower, keep = ik._ops.ops.kendall_swhs(scores, relevance, valid, window, stride, 0.1)
    expected = brute_force_swhs(scores.cpu(), relevance.cpu(), None if valid is None else valid.cpu(), window,
                                stride, 0.1)
    for row in range(q):
        steps = expected[row]
        got = list(zip(upper[row].tolist(), lower[row].tolist(), keep[row].tolist()))
        assert got[:len(steps)] == steps
        assert not any(k for _, _, k in got[len(steps):])  # steps past a short row are dropped


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_swhs_nan_score_is_the_hardest(dtype, device, gen):
    """A NaN score is the hardest of its window (lowest-first in the upper window, NaN first in the
    lower), before -inf and +inf; ties between NaNs go to the lower column."""
    nan, inf = float("nan"), float("inf")
    # relevance descending with the column: the windows are columns 0-3 and 4-7
    scores = torch.tensor([[0.5, nan, -inf, nan, 0.2, inf, nan, 0.1],
                           [0.5, -inf, 0.3, 0.1, nan, 0.2, inf, nan]], dtype=dtype, device=device)
    relevance = torch.linspace(1, 0, 8, dtype=dtype).expand(2, 8).contiguous().to(device)
    upper, lower, keep = ik._ops.ops.kendall_swhs(scores, relevance, None, 4, 4, 0.0)
    assert upper.tolist() == [[1], [1]] and lower.tolist() == [[6], [4]] and keep.all()
    # random scores with NaN and infinities, several window shapes, against the brute force
    q, n = 6, 24
    scores = (torch.randint(0, 6, (q, n), generator=gen) / 5).to(dtype)
    special = torch.rand(q, n, generator=gen)
    scores[special < 0.2] = nan
    scores[(special >= 0.2) & (special < 0.25)] = inf
    scores[(special >= 0.25) & (special < 0.3)] = -inf
    relevance = (torch.randint(0, 5, (q, n), generator=gen) / 4).to(dtype)
    for window, stride in [(1, 1), (3, 3), (4, 2), (8, 8)]:
        upper, lower, keep = ik._ops.ops.kendall_swhs(scores.to(device), relevance.to(device), None, window, stride,
                                                      0.1)
        expected = brute_force_swhs(scores, relevance, None, window, stride, 0.1)
        for row in range(q):
            assert list(zip(upper[row].tolist(), lower[row].tolist(), keep[row].tolist())) == expected[row]


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("phi", ["hinge", "logistic", "tanh"])
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("q,n", [(1, 1), (3, 9), (17, 17), (64, 128), (5, 257)])
def test_swhs_matches_reference(q, n, masked, phi, dtype, device, gen):
    scores, relevance, valid = inputs(q, n, gen, masked)
    scores, relevance = scores.to(device, dtype), relevance.to(device, dtype)
    valid = None if valid is None else valid.to(device)
    kw = dict(phi=phi, margin=0.1, temperature=0.1, sampling="swhs", window=4, valid=valid, reduction="none")
    _check_parity(ik.kendall_loss, ref.kendall_loss, scores, (relevance,), kw, dtype, loss_atol=1e-5)


def test_swhs_gradient_is_sparse(device, gen):
    scores, relevance, _ = inputs(3, 64, gen)
    scores, relevance = scores.to(device), relevance.to(device)
    s = scores.clone().requires_grad_()
    ik.kendall_loss(s, relevance, sampling="swhs", window=8, margin=10.0).backward()  # every hinge active
    upper, lower, keep = ik._ops.ops.kendall_swhs(scores, relevance, None, 8, 8, 0.0)
    touched = torch.zeros_like(scores, dtype=torch.bool)
    touched.scatter_(1, torch.where(keep, upper, 0), keep, reduce="add")
    touched.scatter_(1, torch.where(keep, lower, 0), keep, reduce="add")
    assert torch.all(s.grad[~touched] == 0) and torch.all(s.grad[touched] != 0)


# ---- gradcheck, opcheck, compile ----

def test_gradcheck(device, gen):
    scores, relevance, valid = inputs(5, 5, gen, masked=True, spread=0.3)
    scores, relevance, valid = scores.to(device).requires_grad_(), relevance.to(device), valid.to(device)
    for fn in (lambda s: ik.triplet_sn_loss(s, relevance, temperature=0.05, rho=0.8),
               lambda s: ik.kendall_loss(s, relevance, phi="logistic", temperature=0.1, valid=valid),
               lambda s: ik.kendall_loss(s, relevance, phi="tanh", temperature=0.2, gap=0.1, reduction="sum"),
               lambda s: ik.kendall_loss(s, relevance, phi="logistic", sampling="swhs", window=2),
               lambda s: ik.smooth_ap_loss(s, relevance > 0.5, tau=0.1),
               lambda s: ik.listnet_loss(s, relevance, valid=valid)):
        assert torch.autograd.gradcheck(fn, (scores,))


def test_opcheck(device, gen):
    scores, relevance, valid = inputs(6, 6, gen, masked=True)
    scores, relevance, valid = scores.to(device), relevance.to(device), valid.to(device)
    req = scores.clone().requires_grad_()
    ops = ik._ops.ops  # the routed ops: the CUDA emulation's under the cuda-emu device
    stats = ops.triplet_sn(scores, relevance, 0.2, 0.05, 0.9)[1]
    for op, args in [
        (ops.triplet_sn.default, (req, None, 0.2, 0.05, 1.0)),
        (ops.triplet_sn.default, (req, relevance, 0.2, 0.05, 0.7)),
        (ops.triplet_sn_backward.default, (torch.randn(2, 6, dtype=scores.dtype, device=device), scores, relevance,
                                           stats, 0.2, 0.05, 0.9)),
        (ops.kendall_full.default, (req, relevance, valid, 0.1, 0, 0.1, 0.1, True)),
        (ops.kendall_full.default, (scores.float(), relevance.float(), None, 0.1, 1, 0.0, 0.1, False)),
        (ops.kendall_full.default, (scores.half().requires_grad_(), relevance.half(), valid, 0.1, 2, 0.0, 0.1, True)),
        (ops.kendall_swhs.default, (scores, relevance, valid, 2, 1, 0.0)),
    ]:
        torch.library.opcheck(op, args)


def test_compile_bcls(device, gen):
    b = 24
    scores = cosine_scores(b, b, gen).to(device, torch.float32)
    rel = torch.rand(b, b, generator=gen).to(device)
    loss_fn = ik.BCLSLoss(window=4)
    full = ik.KendallRankLoss(phi="logistic")
    assert_compiles_to_same(lambda s, r: loss_fn(s, r) + full(s, r), scores, rel)


# ---- modules and section-6 losses ----

def test_bcls_module_matches_reference(device, gen):
    scores, r_i2t, _ = inputs(20, 20, gen)
    scores, r_i2t = scores.to(device), r_i2t.to(device)
    r_t2i = torch.rand(20, 20, generator=gen, dtype=torch.float64).to(device)
    kw = dict(mu=0.7, rho=0.9, window=3, phi="logistic")
    out, grad = run(ik.BCLSLoss(**kw), scores, r_i2t, r_t2i)
    truth, truth_grad = run(ref.BCLSLoss(**kw), scores, r_i2t, r_t2i)
    torch.testing.assert_close(out, truth, **F64)
    torch.testing.assert_close(grad, truth_grad, **F64)
    expected = (ik.triplet_sn_loss(scores, r_i2t, rho=0.9) + 0.7 * (
        ik.kendall_loss(scores, r_i2t, phi="logistic", sampling="swhs", window=3)
        + ik.kendall_loss(scores.T, r_t2i, phi="logistic", sampling="swhs", window=3)) / 2)
    torch.testing.assert_close(out, expected, **F64)


def test_ranknet_by_hand(device):
    scores = torch.tensor([[0.2, 0.5, -0.1]], dtype=torch.float64, device=device)
    rel = torch.tensor([[1.0, 0.5, 0.0]], dtype=torch.float64, device=device)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    # pairs (j more relevant than k): (0,1), (0,2), (1,2); x = s_k - s_j
    expected = (sp(0.5 - 0.2) + sp(-0.1 - 0.2) + sp(-0.1 - 0.5)) / 3
    assert ik.ranknet_loss(scores, rel).item() == pytest.approx(expected, rel=1e-12)


def test_smooth_ap_by_hand(device):
    tau = 0.1
    scores = torch.tensor([[0.9, 0.3, 0.5]], dtype=torch.float64, device=device)
    pos = torch.tensor([[True, True, False]], device=device)
    sig = lambda x: 1 / (1 + math.exp(-x / tau))  # noqa: E731
    r0 = 1 + sig(0.3 - 0.9) + sig(0.5 - 0.9)
    r1 = 1 + sig(0.9 - 0.3) + sig(0.5 - 0.3)
    rp0, rp1 = 1 + sig(0.3 - 0.9), 1 + sig(0.9 - 0.3)
    expected = 1 - (rp0 / r0 + rp1 / r1) / 2
    assert ik.smooth_ap_loss(scores, pos, tau).item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(ik.smooth_ap_loss(scores, pos, tau), ref.smooth_ap_loss(scores, pos, tau), **F64)


def test_listnet_by_hand(device):
    scores = torch.tensor([[1.0, 0.0]], dtype=torch.float64, device=device)
    rel = torch.tensor([[1.0, 0.0]], dtype=torch.float64, device=device)
    p = [math.e / (math.e + 1), 1 / (math.e + 1)]
    expected = -(p[0] * math.log(p[0]) + p[1] * math.log(p[1]))
    assert ik.listnet_loss(scores, rel).item() == pytest.approx(expected, rel=1e-12)


# ---- bad input ----

S, R = torch.rand(4, 4), torch.rand(4, 4)


@pytest.mark.parametrize("impl", [ik, ref], ids=["fused", "reference"])
@pytest.mark.parametrize("call,exc,msg", [
    (lambda F: F.kendall_loss(S, R, window=0, sampling="swhs"), ValueError, "window must be an integer >= 1"),
    (lambda F: F.kendall_loss(S, R, stride=0, sampling="swhs"), ValueError, "stride must be an integer >= 1"),
    (lambda F: F.kendall_loss(S, R, gap=-0.1), ValueError, "gap must be >= 0"),
    (lambda F: F.kendall_loss(S, R, temperature=0), ValueError, "temperature must be a finite number > 0"),
    (lambda F: F.kendall_loss(S, R, phi="square"), ValueError, "phi must be one of"),
    (lambda F: F.kendall_loss(S, R, sampling="random"), ValueError, "sampling must be one of"),
    (lambda F: F.kendall_loss(S, torch.rand(4, 5)), ValueError, "relevance must have the shape"),
    (lambda F: F.triplet_sn_loss(torch.rand(4, 5)), ValueError, "square"),
    (lambda F: F.triplet_sn_loss(S, temperature=-1.0), ValueError, "temperature must be"),
    (lambda F: F.triplet_sn_loss(S, torch.rand(3, 3)), ValueError, "relevance must have the shape"),
    (lambda F: F.smooth_ap_loss(S, R), TypeError, "positives must be a bool tensor"),
    (lambda F: F.listnet_loss(S, R, temperature=0.0), ValueError, "temperature must be"),
])
def test_bad_input(impl, call, exc, msg):
    with pytest.raises(exc, match=msg):
        call(impl)


def test_module_bad_input():
    with pytest.raises(ValueError, match="window"):
        ik.KendallRankLoss(window=0)
    with pytest.raises(ValueError, match="phi"):
        ik.BCLSLoss(phi="x")
    with pytest.raises(ValueError, match="square"):
        ik.BCLSLoss()(torch.rand(3, 4), torch.rand(3, 4))
