"""InfoNCE and the fused VSE++ triplet kernel: values and gradients against float64 truths written
here (InfoNCE's exponents from exact score differences; the triplet's hardest negatives by argmax,
first index on ties), both directions, rectangular rows with positives, the modules, special
values and the op contract."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import ALL_DTYPES, LOW_PRECISION, assert_close_to_truth, cosine_scores, run

ops = torch.ops.itr_kernels


# ---- float64 truths ----

def _rows_infonce(s, pos, t):
    """Per row of float64 s (Q, N) with positive column pos[q]: the loss and dL/ds. The exponents
    are (s - row max) / t: differences of the inputs, exact in float64, then one rounding."""
    is_pos = torch.nn.functional.one_hot(pos, s.shape[1]).bool()
    x = (s - s.max(dim=1, keepdim=True).values) / t
    e = torch.exp(x)
    neg = torch.where(is_pos, 0, e).sum(dim=1)
    total = e.sum(dim=1)
    loss = torch.log(total) - x.gather(1, pos[:, None])[:, 0]
    # -log p = log1p(neg / pos) keeps the digits of a small loss; 1 - p = neg / total likewise
    p_pos = e.gather(1, pos[:, None])[:, 0]
    small = neg <= p_pos
    loss = torch.where(small, torch.log1p(neg / torch.where(small, p_pos, 1)), loss)
    grad = torch.where(is_pos, -(neg / total)[:, None], e / total[:, None]) / t
    return loss, grad


def infonce_truth(scores, t, positives=None, upstream=None):
    """float64 InfoNCE per query ((2, B) square, (Q,) with positives) and d(sum upstream * loss)/dS."""
    s = scores.detach().double().cpu()
    if positives is not None:
        loss, g = _rows_infonce(s, positives.cpu().long(), t)
        u = torch.ones_like(loss) if upstream is None else upstream.double().cpu()
        return loss, g * u[:, None]
    diag = torch.arange(s.shape[0])
    rows, g_rows = _rows_infonce(s, diag, t)
    cols, g_cols = _rows_infonce(s.T.contiguous(), diag, t)
    u = torch.ones(2, s.shape[0], dtype=torch.float64) if upstream is None else upstream.double().cpu()
    return torch.stack([rows, cols]), g_rows * u[0][:, None] + (g_cols * u[1][:, None]).T


def triplet_truth(scores, margin, max_violation, positives=None, upstream=None):
    """float64 VSE++ per query and d(sum upstream * loss)/dS; the hardest negative is the first
    maximal one (lowest index), and a hinge at exactly 0 passes no gradient."""
    s = scores.detach().double().cpu()
    q = s.shape[0]
    directions = [(s, torch.arange(q) if positives is None else positives.cpu().long())]
    if positives is None:
        directions.append((s.T.contiguous(), torch.arange(q)))
    u = torch.ones(len(directions), q, dtype=torch.float64) if upstream is None else upstream.double().cpu().reshape(
        len(directions), q)
    losses, grad = [], torch.zeros_like(s)
    for d, (m, pos) in enumerate(directions):
        is_pos = torch.nn.functional.one_hot(pos, m.shape[1]).bool()
        h = margin + m - m.gather(1, pos[:, None])
        g = torch.zeros_like(m)
        if max_violation:
            masked = m.masked_fill(is_pos, -math.inf)
            hard = masked.argmax(dim=1)                      # first maximal index
            top = h.gather(1, hard[:, None])[:, 0]
            has_negative = torch.full((q,), m.shape[1] > 1)
            loss = torch.where(has_negative, top.clamp(min=0), 0)
            active = has_negative & (top > 0)
            rows = torch.arange(q)
            g[rows[active], hard[active]] += u[d][active]
            g[rows[active], pos[active]] -= u[d][active]
        else:
            hinge = torch.where(is_pos, 0, h.clamp(min=0))
            loss = hinge.sum(dim=1)
            on = (h > 0) & ~is_pos
            g = on * u[d][:, None] - is_pos * (on.sum(dim=1) * u[d])[:, None]
        losses.append(loss)
        grad += g if d == 0 else g.T
    return (torch.stack(losses) if positives is None else losses[0]), grad


def rel_err(got, want):
    return ((got.double().cpu() - want).norm() / want.norm()).item()


def _check(fused_out, fused_grad, truth, truth_grad, same_out, same_grad, dtype, rtol32=1e-5):
    assert_close_to_truth(fused_out.cpu(), truth, None if same_out is None else same_out.cpu(), dtype, rtol32=rtol32)
    assert_close_to_truth(fused_grad.cpu(), truth_grad, None if same_grad is None else same_grad.cpu(), dtype,
                          rtol32=rtol32)


# ---- InfoNCE ----

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("temperature", [0.05, 0.01])
@pytest.mark.parametrize("b", [1, 2, 3, 17, 128, 257])
def test_infonce_matches_truth(b, temperature, dtype, device, gen):
    scores = cosine_scores(b, b, gen).to(device, dtype)
    upstream = torch.randn(2, b, generator=gen, dtype=torch.float64).to(device)
    out, grad = run(ik.infonce_loss, scores, temperature, "none", upstream=upstream)
    assert out.dtype == grad.dtype == dtype and out.shape == (2, b)
    truth, truth_grad = infonce_truth(scores, temperature, upstream=upstream)
    same = run(ref.infonce_loss, scores, temperature, "none", upstream=upstream) if dtype in LOW_PRECISION else (None,
                                                                                                                  None)
    _check(out, grad, truth, truth_grad, *same, dtype)
    if dtype == torch.float64:   # and the plain reference (F.cross_entropy) agrees with the truth
        want, want_grad = run(ref.infonce_loss, scores, temperature, "none", upstream=upstream)
        torch.testing.assert_close(want.cpu(), truth, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(want_grad.cpu(), truth_grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1e-2, 1e-3, 1e-4, 1e-6, 1e-9])
def test_infonce_small_temperatures(temperature, dtype, device, gen):
    """float32 within 1e-5 of the float64 truth (values and gradients) down to T = 1e-9: every
    exponent is formed from a score difference before the scaling by 1 / T."""
    scores = (cosine_scores(33, 33, gen) * 0.5).to(device, dtype)
    upstream = torch.rand(2, 33, generator=gen, dtype=torch.float64).to(device) + 0.5
    out, grad = run(ik.infonce_loss, scores, temperature, "none", upstream=upstream)
    truth, truth_grad = infonce_truth(scores, temperature, upstream=upstream)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert rel_err(out, truth) < tol and rel_err(grad, truth_grad) < tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infonce_confident_queries_keep_their_digits(dtype, device):
    """Positives far above every negative: losses ~1e-9 and their gradients, to full relative
    precision (log1p of the negatives' sum, the diagonal weight summed without the positive)."""
    b, t = 40, 0.02
    scores = torch.full((b, b), 0.1, dtype=torch.float64) + 0.3 * torch.eye(b, dtype=torch.float64)
    scores += 1e-3 * torch.arange(b * b, dtype=torch.float64).reshape(b, b).sin()
    scores = scores.to(device, dtype)
    out, grad = run(ik.infonce_loss, scores, t, "none")
    truth, truth_grad = infonce_truth(scores, t)
    assert truth.max() < 1e-4
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert rel_err(out, truth) < tol and rel_err(grad, truth_grad) < tol


@pytest.mark.parametrize("spread", [0.05, 2.0])
def test_infonce_shared_and_split_shift(spread, device, gen):
    """One common shift (one exponential per score) where the rows' and columns' maxima lie
    close; each direction its own otherwise. Both within 1e-5 in float32."""
    t = 0.01
    scores = (cosine_scores(150, 150, gen) * spread).float().to(device)
    loss, stats = ops.infonce(scores, None, t)
    shifts = stats[:, 0].cpu()
    if device == "cpu":   # the CUDA kernels always shift each query by its own maximum
        assert bool((shifts == shifts.max()).all()) == (spread < 1)
    out, grad = run(ik.infonce_loss, scores, t, "none")
    truth, truth_grad = infonce_truth(scores, t)
    assert rel_err(out, truth) < 1e-5 and rel_err(grad, truth_grad) < 1e-5


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_infonce_rectangular_rows(dtype, device, gen):
    q, n, t = 23, 70, 0.05
    scores = cosine_scores(q, n, gen).to(device, dtype)
    positives = torch.randperm(n, generator=gen)[:q].to(device)
    upstream = torch.randn(q, generator=gen, dtype=torch.float64).to(device)
    out, grad = run(ik.infonce_loss, scores, t, "none", positives, upstream=upstream)
    assert out.shape == (q,)
    truth, truth_grad = infonce_truth(scores, t, positives, upstream=upstream)
    same = run(ref.infonce_loss, scores, t, "none", positives, upstream=upstream) if dtype in LOW_PRECISION else (
        None, None)
    _check(out, grad, truth, truth_grad, *same, dtype)
    square = cosine_scores(9, 9, gen).to(device, dtype)   # the image-to-text rows of the square form
    eps = torch.finfo(dtype).eps if dtype != torch.float64 else 1e-14
    torch.testing.assert_close(ik.infonce_loss(square, t, "none", torch.arange(9, device=device)),
                               ik.infonce_loss(square, t, "none")[0], rtol=4 * eps, atol=4 * eps)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_infonce_reductions(reduction, device, gen):
    scores = cosine_scores(12, 12, gen).to(device)
    per_query = infonce_truth(scores, 0.1)[0]
    want = per_query.mean() if reduction == "mean" else per_query.sum()  # mean of 2B = mean of the directions' means
    torch.testing.assert_close(ik.infonce_loss(scores, 0.1, reduction).cpu(), want, rtol=1e-13, atol=0)


def test_infonce_module(device, gen):
    b = 10
    scores = cosine_scores(b, b, gen).to(device)
    torch.testing.assert_close(ik.InfoNCELoss(0.1)(scores), ik.infonce_loss(scores, 0.1), rtol=1e-14, atol=0)
    # rows of both directions against a global batch, as itr_kernels.distributed passes them
    rows = torch.arange(3, 7)
    part = ik.InfoNCELoss(0.1)(scores[rows], positives=rows.to(device), scores_t2i=scores.T[rows])
    per_query = ik.infonce_loss(scores, 0.1, "none")
    torch.testing.assert_close(part, per_query[:, rows].mean(), rtol=1e-14, atol=0)


def test_infonce_learned_temperature(device, gen):
    scores = cosine_scores(16, 16, gen).to(device)
    fused, plain = ik.InfoNCELoss(0.07, learn_temperature=True), ref.InfoNCELoss(0.07, learn_temperature=True)
    fused.to(device), plain.to(device)
    assert fused.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    grads = []
    for module in (fused, plain):
        s = scores.clone().requires_grad_()
        loss = module(s)
        loss.backward()
        grads.append((loss.detach(), s.grad, module.logit_scale.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b.to(a.dtype), rtol=1e-5, atol=1e-7)
    assert grads[0][2].abs() > 0
    with torch.no_grad():   # beyond CLIP's bound the scale stays 100 and the parameter gets no gradient
        fused.logit_scale.fill_(math.log(500.0))
    fused.logit_scale.grad = None
    fused(scores).backward()
    assert fused.logit_scale_value().item() == pytest.approx(100.0) and fused.logit_scale.grad.item() == 0
    torch.testing.assert_close(fused(scores), ik.infonce_loss(scores, 0.01), rtol=1e-6, atol=0)  # float32 scale


def test_infonce_special_values(device, gen):
    b = 6
    scores = cosine_scores(b, b, gen).to(device)
    nan = scores.clone()
    nan[1, 3] = math.nan
    out = ik.infonce_loss(nan, 0.1, "none").cpu()
    bad = torch.zeros(2, b, dtype=torch.bool)
    bad[0, 1] = bad[1, 3] = True
    assert torch.isnan(out[bad]).all() and torch.isfinite(out[~bad]).all()
    assert torch.isnan(ik.infonce_loss(nan, 0.1))
    # a negative at -inf adds nothing: the loss of the others as if it were not there
    neg_inf = scores.clone()
    neg_inf[0, 2] = -math.inf
    out, grad = run(ik.infonce_loss, neg_inf, 0.1, "none")
    want, want_grad = run(ref.infonce_loss, neg_inf, 0.1, "none")
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-12)
    assert grad[0, 2] == 0
    # one query: its positive is its only candidate
    one, one_grad = run(ik.infonce_loss, scores[:1, :1], 0.1, "none")
    assert torch.all(one == 0) and torch.all(one_grad == 0)


@pytest.mark.parametrize("fn", ["infonce", "triplet"])
def test_empty_batch(fn, device):
    call = {"infonce": ik.infonce_loss, "triplet": ik.triplet_loss}[fn]
    s = torch.zeros(0, 0, device=device, requires_grad=True)
    assert call(s, reduction="none").shape == (2, 0)
    for reduction in ("mean", "sum"):
        out = call(s, reduction=reduction)
        assert out.item() == 0
        out.backward()
    assert call(torch.zeros(0, 5, device=device), reduction="none", positives=torch.zeros(0, dtype=torch.long,
                                                                                         device=device)).shape == (0,)


def test_deterministic(device, gen):
    scores = cosine_scores(300, 300, gen).float().to(device)
    for fn in (lambda s: ik.infonce_loss(s, 0.02), lambda s: ik.triplet_loss(s),
               lambda s: ik.triplet_loss(s, max_violation=False)):
        first, second = run(fn, scores), run(fn, scores)
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ---- VSE++ triplet ----

@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("b", [1, 2, 3, 17, 128, 257])
def test_triplet_matches_truth(b, max_violation, dtype, device, gen):
    scores = cosine_scores(b, b, gen).to(device, dtype)
    upstream = torch.randn(2, b, generator=gen).to(device, dtype)   # as autograd passes it
    out, grad = run(ik.triplet_loss, scores, 0.2, max_violation, "none", upstream=upstream)
    assert out.dtype == grad.dtype == dtype and out.shape == (2, b)
    truth, truth_grad = triplet_truth(scores, 0.2, max_violation, upstream=upstream)
    same_out = run(ref.triplet_loss, scores, 0.2, max_violation, "none")[0] if dtype in LOW_PRECISION else None
    assert_close_to_truth(out.cpu(), truth, None if same_out is None else same_out.cpu(), dtype)
    # gradients: sums of upstream values (times hinge counts on the positives), exact but for the
    # float32 (float64) arithmetic and one rounding to the dtype; the positives' sums may cancel
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(grad.double().cpu(), truth_grad, rtol=eps, atol=4 * eps * b * truth_grad.abs().max())


@pytest.mark.parametrize("max_violation", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_triplet_rectangular_rows(max_violation, dtype, device, gen):
    q, n = 19, 55
    scores = cosine_scores(q, n, gen).to(device, dtype)
    positives = torch.randint(0, n, (q,), generator=gen).to(device)
    upstream = torch.randn(q, generator=gen).to(device, dtype)
    out, grad = run(ik.triplet_loss, scores, 0.2, max_violation, "none", positives, upstream=upstream)
    truth, truth_grad = triplet_truth(scores, 0.2, max_violation, positives, upstream=upstream)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.double().cpu(), truth, rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(grad.double().cpu(), truth_grad, rtol=2 * eps, atol=4 * eps)


def test_triplet_ties_go_to_the_lowest_index(device, gen):
    """Exact ties among the hardest negatives: the lowest column (image-to-text) or row
    (text-to-image) takes the whole gradient, on every device."""
    b = 150   # more than one tile in both directions on the GPU
    scores = (torch.randint(0, 5, (b, b), generator=gen) / 4).to(device)
    scores.fill_diagonal_(0.5)
    out, grad = run(ik.triplet_loss, scores, 0.2, True, "none")
    truth, truth_grad = triplet_truth(scores, 0.2, True)
    torch.testing.assert_close(out.double().cpu(), truth, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad.double().cpu(), truth_grad, rtol=0, atol=1e-7)
    _, aux = ops.vse_triplet(scores, None, 0.2, True)
    masked = scores.cpu().masked_fill(torch.eye(b, dtype=torch.bool), -math.inf)
    assert torch.equal(aux[0].cpu(), masked.argmax(dim=1)) and torch.equal(aux[1].cpu(), masked.argmax(dim=0))


def test_triplet_special_values(device, gen):
    b = 5
    scores = cosine_scores(b, b, gen).to(device)
    for max_violation in (True, False):
        nan = scores.clone()
        nan[2, 0] = math.nan
        out = ik.triplet_loss(nan, 0.2, max_violation, "none").cpu()
        assert torch.isnan(out[0, 2]) and torch.isnan(out[1, 0])
        assert torch.isnan(ik.triplet_loss(nan, 0.2, max_violation))
        one, one_grad = run(ik.triplet_loss, scores[:1, :1], 0.2, max_violation, "none")
        assert torch.all(one == 0) and torch.all(one_grad == 0)
    # hinges at exactly 0 (the kink: 0.2 + 0.3 - 0.5) pass no gradient
    kink = torch.tensor([[0.5, 0.3], [0.1, 0.5]], dtype=torch.float64, device=device)
    for max_violation in (True, False):
        out, grad = run(ik.triplet_loss, kink, 0.2, max_violation, "none")
        assert torch.all(out == 0) and torch.all(grad == 0)


def test_triplet_modules_use_the_kernel(gen):
    b = 8
    scores = cosine_scores(b, b, gen)
    for kw in (dict(), dict(reduction="sum"), dict(max_violation=False)):
        torch.testing.assert_close(ik.TripletLoss(**kw)(scores), ref.TripletLoss(**kw)(scores), rtol=1e-14, atol=0)


# ---- properties (CPU, bounded example counts) ----

@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 40), temperature=st.sampled_from([1.0, 0.1, 0.01, 1e-4]),
       spread=st.sampled_from([0.01, 1.0, 30.0]), seed=st.integers(0, 2**31 - 1))
def test_infonce_properties(b, temperature, spread, seed):
    """float32 within 1e-5 of the truth whatever the size, temperature and score range (shared or
    split shifts); permuting images and captions together permutes the per-query losses."""
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(b, b, generator=g, dtype=torch.float64) * spread).float()
    upstream = torch.rand(2, b, generator=g, dtype=torch.float64) + 0.5
    out, grad = run(ik.infonce_loss, s, temperature, "none", upstream=upstream)
    truth, truth_grad = infonce_truth(s, temperature, upstream=upstream)
    assert_close_to_truth(out, truth, None, torch.float32, atol=1e-7)
    assert_close_to_truth(grad, truth_grad, None, torch.float32, atol=1e-7)
    perm = torch.randperm(b, generator=g)
    torch.testing.assert_close(ik.infonce_loss(s[perm][:, perm], temperature, "none"), out[:, perm], rtol=1e-5,
                               atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(b=st.integers(1, 40), max_violation=st.booleans(), levels=st.sampled_from([2, 5, 1000]),
       seed=st.integers(0, 2**31 - 1))
def test_triplet_properties(b, max_violation, levels, seed):
    """Scores on a grid (many exact ties, hinges exactly at the kink with margin 0.25): values and
    gradients equal the truth's (first maximal index; no gradient at the kink)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randint(0, levels, (b, b), generator=g).float() / 4
    upstream = torch.randn(2, b, generator=g)
    out, grad = run(ik.triplet_loss, s, 0.25, max_violation, "none", upstream=upstream)
    truth, truth_grad = triplet_truth(s, 0.25, max_violation, upstream=upstream)
    torch.testing.assert_close(out.double(), truth, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad.double(), truth_grad, rtol=1e-6, atol=1e-5)


# ---- the op contract ----

def _op_samples(device, gen):
    s = cosine_scores(6, 6, gen).to(device)
    rect = cosine_scores(5, 9, gen).to(device)
    pos = torch.tensor([0, 8, 3, 3, 1], device=device)
    req = s.clone().requires_grad_()
    rect_req = rect.clone().requires_grad_()
    grad2, grad1 = torch.randn(2, 6, dtype=s.dtype, device=device), torch.randn(1, 5, dtype=s.dtype, device=device)
    stats = ops.infonce(s, None, 0.1)[1]
    rect_stats = ops.infonce(rect, pos, 0.1)[1]
    aux = ops.vse_triplet(s, None, 0.2, True)[1]
    rect_aux = ops.vse_triplet(rect, pos, 0.2, False)[1]
    return [
        (ops.infonce.default, (req, None, 0.1)),
        (ops.infonce.default, (rect_req, pos, 0.05)),
        (ops.infonce.default, (s.float().T, None, 0.5)),
        (ops.infonce_backward.default, (grad2, s, None, stats, 0.1)),
        (ops.infonce_backward.default, (grad1, rect, pos, rect_stats, 0.1)),
        (ops.vse_triplet.default, (req, None, 0.2, True)),
        (ops.vse_triplet.default, (req, None, 0.2, False)),
        (ops.vse_triplet.default, (rect_req, pos, 0.1, True)),
        (ops.vse_triplet.default, (s.half().T, None, 0.2, False)),
        (ops.vse_triplet_backward.default, (grad2, s, None, aux, 0.2, True)),
        (ops.vse_triplet_backward.default, (grad1, rect, pos, rect_aux, 0.2, False)),
    ]


def test_opcheck(device, gen):
    for op, args in _op_samples(device, gen):
        torch.library.opcheck(op, args)


def test_transposed_scores_need_no_copy_to_agree(device, gen):
    scores = cosine_scores(40, 40, gen).float().to(device)
    flipped = scores.T.contiguous().T   # same values, column-major
    for fn in (lambda s: ik.infonce_loss(s, 0.05, "none"), lambda s: ik.triplet_loss(s, reduction="none")):
        a, ga = run(fn, scores)
        b, gb = run(fn, flipped)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ga, gb, rtol=1e-6, atol=1e-7)


def test_compile_fullgraph_dynamic(device, gen):
    learned = ik.InfoNCELoss(learn_temperature=True).to(device)

    def step(s):
        return (ik.infonce_loss(s, 0.1) + ik.triplet_loss(s, 0.1) + ik.triplet_loss(s, 0.2, max_violation=False)
                + learned(s) + ik.InfoNCELoss(0.07)(s))

    torch._dynamo.reset()
    compiled = torch.compile(step, fullgraph=True, dynamic=True)
    for b in (6, 9):
        scores = cosine_scores(b, b, gen).to(device)
        got, want = run(compiled, scores), run(step, scores)
        torch.testing.assert_close(got[0], want[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], want[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", ["infonce", "triplet"])
def test_double_backward_is_an_error(fn, device, gen):
    call = {"infonce": lambda s: ik.infonce_loss(s, 0.1), "triplet": lambda s: ik.triplet_loss(s)}[fn]
    s = cosine_scores(4, 4, gen).to(device).requires_grad_()
    (g,) = torch.autograd.grad(call(s), s, create_graph=True)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(g.sum(), s)
