"""itr_kernels.reference, the truth of the parity tests, against truths written here: loops in
float64, and 60-digit mpmath for the contrastive losses at tiny temperature."""
import math

import mpmath
import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import cosine_scores, run


def _mp_infonce(scores, temperature):
    """Both directions of a square matrix: per query log sum_j exp((S_j - S_p) / T) and the
    gradient of the sum of all queries, in 60 digits."""
    with mpmath.workdps(60):
        b = scores.shape[0]
        s = [[mpmath.mpf(scores[i, j].item()) for j in range(b)] for i in range(b)]
        t = mpmath.mpf(temperature)
        loss, grad = torch.zeros(2, b, dtype=torch.float64), [[mpmath.mpf(0)] * b for _ in range(b)]
        for d in range(2):
            at = (lambda q, j: s[q][j]) if d == 0 else (lambda q, j: s[j][q])
            for q in range(b):
                e = [mpmath.exp((at(q, j) - at(q, q)) / t) for j in range(b)]
                z = mpmath.fsum(e)
                loss[d, q] = float(mpmath.log(z))
                for j in range(b):
                    g = (e[j] / z - (1 if j == q else 0)) / t
                    if d == 0:
                        grad[q][j] += g
                    else:
                        grad[j][q] += g
        return loss, torch.tensor([[float(g) for g in row] for row in grad], dtype=torch.float64)


def _mp_triplet_sn(scores, margin, temperature):
    """Both directions, no relevance: per query T log(1 + sum_{j != p} exp((m + S_j - S_p) / T))
    and the gradient of the sum of all queries, in 60 digits."""
    with mpmath.workdps(60):
        b = scores.shape[0]
        s = [[mpmath.mpf(scores[i, j].item()) for j in range(b)] for i in range(b)]
        t, m = mpmath.mpf(temperature), mpmath.mpf(margin)
        loss, grad = torch.zeros(2, b, dtype=torch.float64), [[mpmath.mpf(0)] * b for _ in range(b)]
        for d in range(2):
            idx = (lambda q, j: (q, j)) if d == 0 else (lambda q, j: (j, q))
            for q in range(b):
                e = {j: mpmath.exp((m + s[idx(q, j)[0]][idx(q, j)[1]] - s[q][q]) / t) for j in range(b) if j != q}
                z = 1 + mpmath.fsum(e.values())
                loss[d, q] = float(t * mpmath.log(z))
                for j, ej in e.items():
                    a, c = idx(q, j)
                    grad[a][c] += ej / z
                    grad[q][q] -= ej / z
        return loss, torch.tensor([[float(g) for g in row] for row in grad], dtype=torch.float64)


def _near_ties(b, temperature, gen):
    """Scores 0.5 + O(T): at tiny T every candidate's exponent is O(1), the regime where forming
    S / T before the differences loses digits (S / T ~ 1e9 has an ulp of 1e-7)."""
    return 0.5 + temperature * (torch.rand(b, b, generator=gen, dtype=torch.float64) * 6 - 3)


def _check_infonce(loss_fn, temperature, gen, device="cpu"):
    scores = _near_ties(5, temperature, gen)
    want, want_grad = _mp_infonce(scores, temperature)
    out, grad = run(loss_fn, scores.to(device), temperature, "none")
    torch.testing.assert_close(out.cpu(), want, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(grad.cpu() * temperature, want_grad * temperature, rtol=1e-11, atol=1e-13)


def _check_triplet_sn(loss_fn, margin, temperature, gen, device="cpu"):
    scores = _near_ties(5, temperature, gen)
    scores.diagonal().add_(margin)   # the positives near m above the negatives: every term in play
    want, want_grad = _mp_triplet_sn(scores, margin, temperature)
    out, grad = run(loss_fn, scores.to(device), None, margin, temperature, 1.0, "none")
    torch.testing.assert_close(out.cpu(), want, rtol=1e-13, atol=1e-15 * temperature)
    torch.testing.assert_close(grad.cpu(), want_grad, rtol=1e-11, atol=1e-13)


TINY = pytest.mark.parametrize("temperature", [1e-3, 1e-6, 1e-9])


@TINY
def test_infonce_exact_at_tiny_temperature(temperature, gen):
    _check_infonce(ref.infonce_loss, temperature, gen)


@TINY
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_triplet_sn_exact_at_tiny_temperature(margin, temperature, gen):
    _check_triplet_sn(ref.triplet_sn_loss, margin, temperature, gen)


# The fused kernels against the same truths (float64).
@TINY
def test_fused_infonce_exact_at_tiny_temperature(temperature, device, gen):
    _check_infonce(ik.infonce_loss, temperature, gen, device)


@TINY
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_fused_triplet_sn_exact_at_tiny_temperature(margin, temperature, device, gen):
    _check_triplet_sn(ik.triplet_sn_loss, margin, temperature, gen, device)


def test_triplet_sn_rho_needs_relevance(gen):
    """Without relevance rho is ignored (every j != p is a negative); with it, Neg = {R < rho}
    is strict: rho = 1 leaves out relevance exactly 1."""
    scores = cosine_scores(5, 5, gen)
    base = ref.triplet_sn_loss(scores, None, 0.2, 0.1, 1.0, "none")
    torch.testing.assert_close(ref.triplet_sn_loss(scores, None, 0.2, 0.1, 0.0, "none"), base, rtol=0, atol=0)
    relevance = torch.zeros(5, 5, dtype=torch.float64)
    relevance[0, 3] = 1.0
    with_one = ref.triplet_sn_loss(scores, relevance, 0.2, 0.1, 1.0, "none")
    masked = scores.clone()
    masked[0, 3] = -math.inf   # out of image 0's negatives and of caption 3's (relevance.T)
    torch.testing.assert_close(with_one, ref.triplet_sn_loss(masked, None, 0.2, 0.1, 1.0, "none"), rtol=1e-14, atol=0)


def swhs_truth(scores, relevance, valid, window, stride, gap, margin):
    """SW-HS by the contract, as loops: each row's valid columns by decreasing relevance (ties to
    the lower column, NaN relevance last); per step the upper window's lowest score and the lower
    window's highest (a NaN score first, ties to the lower column), kept when the upper's last
    relevance exceeds the lower's first by more than gap; hinge sums and the kept count."""
    sums, count = [], 0
    for q in range(scores.shape[0]):
        s, r = scores[q].tolist(), relevance[q].tolist()
        cols = [j for j in range(len(s)) if valid[q, j]]
        cols.sort(key=lambda j: (math.isnan(r[j]), 0 if math.isnan(r[j]) else -r[j], j))
        total, t = 0.0, 0
        while t * stride + window < len(s):
            upper = cols[t * stride: t * stride + window]
            lower = cols[t * stride + window: t * stride + 2 * window]
            t += 1
            if not lower or not r[upper[-1]] - r[lower[0]] > gap:
                continue
            j = min(upper, key=lambda c: (not math.isnan(s[c]), s[c] if not math.isnan(s[c]) else 0, c))
            k = min(lower, key=lambda c: (not math.isnan(s[c]), -s[c] if not math.isnan(s[c]) else 0, c))
            x = margin + s[k] - s[j]
            total += x if (x > 0 or math.isnan(x)) else 0.0
            count += 1
        sums.append(total)
    return torch.tensor(sums, dtype=torch.float64), count


@pytest.mark.parametrize("window,stride", [(1, 1), (2, 1), (3, 2), (2, 3)])
def test_swhs_by_the_contract(window, stride, gen):
    q, n = 6, 13
    scores = (torch.randint(0, 5, (q, n), generator=gen) / 4).double()   # ties
    relevance = (torch.randint(-2, 6, (q, n), generator=gen) / 4).double()
    relevance[0, 2] = relevance[1, 5] = relevance[1, 6] = math.nan
    relevance[2, 1] = -math.inf
    scores[3, 4] = scores[3, 9] = scores[4, 0] = math.nan   # NaN scores: the hardest of their window
    valid = torch.rand(q, n, generator=gen) > 0.2
    valid[2, 1] = True
    sums, count = swhs_truth(scores, relevance, valid, window, stride, 0.1, 0.3)
    kw = dict(gap=0.1, margin=0.3, sampling="swhs", window=window, stride=stride, valid=valid)
    out = ref.kendall_loss(scores, relevance, reduction="none", **kw)
    torch.testing.assert_close(out, sums, rtol=1e-14, atol=0, equal_nan=True)
    finite = torch.isfinite(sums)
    if count and finite.all():
        torch.testing.assert_close(ref.kendall_loss(scores, relevance, **kw), sums.sum() / count, rtol=1e-14, atol=0)


def test_gain_set_order(gen):
    """The gain set follows the contract's order: valid candidates by decreasing relevance, a
    valid -inf before masked ones, NaN relevance after every valid number."""
    scores = cosine_scores(1, 5, gen)
    relevance = torch.tensor([[0.3, -math.inf, math.nan, 0.9, 0.5]], dtype=torch.float64)
    valid = torch.tensor([[False, True, True, True, True]])
    s = scores[0].tolist()
    rank = [1 + sum(1 / (1 + math.exp(-(s[k] - s[j]) / 0.1)) for k in range(5) if k != j and valid[0, k])
            for j in range(5)]

    def loss(gain_set):
        gains = [2 ** relevance[0, j].item() - 1 for j in gain_set]
        idcg = sum(g / math.log2(2 + i) for i, g in enumerate(gains))
        dcg = sum(g / math.log2(1 + rank[j]) for g, j in zip(gains, gain_set))
        return 1 - dcg / idcg if idcg > 0 else 0.0

    for k, gain_set in [(1, [3]), (2, [3, 4]), (3, [3, 4, 1])]:   # the masked 0.3 never carries gain
        out = ref.smooth_ndcg_loss(scores, relevance, 0.1, k, valid=valid, reduction="none")
        assert out.item() == pytest.approx(loss(gain_set), rel=1e-13, abs=1e-15), k
    assert torch.isnan(ref.smooth_ndcg_loss(scores, relevance, 0.1, 4, valid=valid))   # NaN's gain enters


def test_nan_scores_propagate_only_where_they_enter(gen):
    """A NaN score gives NaN in its row (S-NDCG even without gain, Kendall where it is in a pair);
    a masked NaN score changes nothing and gets a zero gradient."""
    scores = cosine_scores(3, 6, gen)
    relevance = torch.rand(3, 6, generator=gen, dtype=torch.float64)
    relevance[0, :2] = torch.tensor([0.0, 1.0])   # the NaN score's candidate is in a Kendall pair
    valid = torch.ones(3, 6, dtype=torch.bool)
    valid[2, 4] = False
    nan = scores.clone()
    nan[0, 1] = nan[2, 4] = math.nan
    nan_rel = relevance.clone()
    nan_rel[0] = 0   # row 0 has no gain, still NaN
    for fn, args in [(ref.smooth_ndcg_loss, (nan_rel, 0.1)), (ref.kendall_loss, (relevance,)),
                     (ref.listnet_loss, (relevance,))]:
        out, grad = run(fn, nan, *args, valid=valid, reduction="none")
        clean, clean_grad = run(fn, scores, *args, valid=valid, reduction="none")
        assert torch.isnan(out[0]) and not torch.isnan(out[1:]).any(), fn
        torch.testing.assert_close(out[1:], clean[1:], rtol=0, atol=0)
        torch.testing.assert_close(grad[1:], clean_grad[1:], rtol=0, atol=0)
    assert torch.isnan(ref.smooth_rank(nan, 0.1, valid)[0]).all()


def listnet_by_hand():
    s, r = [0.3, -0.2, 0.7], [1.0, 0.2, 0.5]
    zs, zr = sum(math.exp(x / 0.5) for x in s), sum(math.exp(x) for x in r)
    return -sum(math.exp(rj) / zr * (sj / 0.5 - math.log(zs)) for sj, rj in zip(s, r))


def test_listnet_and_smooth_ap_by_hand():
    scores = torch.tensor([[0.3, -0.2, 0.7]], dtype=torch.float64)
    assert ref.listnet_loss(scores, torch.tensor([[1.0, 0.2, 0.5]], dtype=torch.float64), 0.5).item() == \
        pytest.approx(listnet_by_hand(), rel=1e-14)
    sig = lambda x: 1 / (1 + math.exp(-x / 0.1))  # noqa: E731
    pos = torch.tensor([[True, False, True]])
    r0, r2 = 1 + sig(-0.5) + sig(0.4), 1 + sig(-0.4) + sig(-0.9)   # ranks of the positives 0 and 2
    rp0, rp2 = 1 + sig(0.4), 1 + sig(-0.4)
    want = 1 - (rp0 / r0 + rp2 / r2) / 2
    assert ref.smooth_ap_loss(scores, pos, 0.1).item() == pytest.approx(want, rel=1e-14)


def test_modules_compose_the_functions(gen):
    """The reference modules are their formulas over the reference functions, on square and
    rectangular (both directions' rows with positives) in-batch scores."""
    s = cosine_scores(6, 6, gen)
    r, r2 = torch.rand(6, 6, generator=gen, dtype=torch.float64), torch.rand(6, 6, generator=gen, dtype=torch.float64)
    tol = dict(rtol=1e-14, atol=0)
    want = 0.7 * ref.triplet_loss(s, 0.1) + 0.3 * (ref.smooth_ndcg_loss(s, r, 0.05) + ref.smooth_ndcg_loss(s.T, r2, 0.05)) / 2
    torch.testing.assert_close(ref.ListwiseITRLoss(0.1, 0.05, 0.3)(s, r, r2), want, **tol)
    kendall = lambda x, y: ref.kendall_loss(x, y, phi="logistic", sampling="swhs", window=2)  # noqa: E731
    want = ref.triplet_sn_loss(s, r, rho=0.8) + 0.5 * (kendall(s, r) + kendall(s.T, r2)) / 2
    torch.testing.assert_close(ref.BCLSLoss(0.5, rho=0.8, phi="logistic", window=2)(s, r, r2), want, **tol)
    pos = torch.tensor([2, 0, 5, 1])
    rows, rows_t2i = cosine_scores(4, 6, gen), cosine_scores(4, 6, gen)
    rr = torch.rand(4, 6, generator=gen, dtype=torch.float64)
    want = (ref.infonce_loss(rows, 0.1, positives=pos) + ref.infonce_loss(rows_t2i, 0.1, positives=pos)) / 2
    torch.testing.assert_close(ref.InfoNCELoss(0.1)(rows, rr, rr, pos, rows_t2i), want, **tol)
    want = ref.triplet_loss(rows, positives=pos, reduction="sum") + ref.triplet_loss(rows_t2i, positives=pos,
                                                                                    reduction="sum")
    torch.testing.assert_close(ref.TripletLoss(reduction="sum")(rows, rr, rr, pos, rows_t2i), want, **tol)
