"""Input generators and the accuracy rule shared by the tests."""
import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)
ALL_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (Q, N) shapes of the parity tests: single elements, tiny rows, odd sizes, one long row
SIZES = [(1, 1), (2, 2), (3, 3), (17, 17), (128, 128), (257, 257), (4, 1000)]
# float64 parity of two computations of the same math (fused vs reference, a module vs its formula)
F64 = dict(rtol=1e-10, atol=1e-12)


def cosine_scores(q, n, gen, spread=1.0, dim=32):
    """In-batch-like scores: cosine similarities of random unit vectors, times `spread`."""
    a = torch.nn.functional.normalize(torch.randn(q, dim, generator=gen, dtype=torch.float64), dim=1)
    b = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
    return spread * a @ b.T


def inputs(q, n, gen, masked=False, spread=1.0):
    """float64 scores, relevance in [0, 1] and an optional mask that keeps at least one per row."""
    scores = cosine_scores(q, n, gen, spread)
    relevance = torch.rand(q, n, generator=gen, dtype=torch.float64)
    valid = None
    if masked:
        valid = torch.rand(q, n, generator=gen) > 0.3
        valid[:, 0] = True
    return scores, relevance, valid


def run(fn, scores, *args, upstream=None, **kw):
    """fn(scores, *args, **kw) and the gradient of its sum (or of <out, upstream>) w.r.t. scores;
    a zero gradient where the output is constant (no pair at all, say)."""
    s = scores.detach().clone().requires_grad_()
    out = fn(s, *args, **kw)
    if not out.requires_grad:
        return out.detach(), torch.zeros_like(scores)
    out.backward(torch.ones_like(out) if upstream is None else upstream.to(out.dtype))
    return out.detach(), s.grad


def assert_close_to_truth(fused, truth, same_precision_ref, dtype, rtol32=1e-5, atol=1e-10):
    """Errors are norms over the whole output. float64 / float32: relative bound, plus `atol` (per
    element, scaled by sqrt(numel)) for outputs that are ~0: the gradient of a row whose pairs all
    saturate, or a loss 1 - DCG/IDCG that cancels to 0 in low precision. float16 / bfloat16
    (the flash-attention rule): the fused error against the float64 truth is at most twice that of
    a same-precision PyTorch reference, plus two units in the last place. float32 passes either
    bound when a same-precision reference is given: a gradient that is a small difference of O(1)
    terms (a tau = 1 NDCG gradient of 7e-4, say) carries float32 rounding of the terms, ~1e-4
    relative to itself, in any float32 computation."""
    truth = truth.double()
    atol = atol * max(1, truth.numel()) ** 0.5
    err = (fused.double() - truth).norm().item()
    scale = truth.norm().item()
    if dtype == torch.float64:
        assert err <= 1e-10 * scale + atol, (err, scale)
    elif dtype == torch.float32 and same_precision_ref is None:
        assert err <= rtol32 * scale + atol, (err, scale)
    elif dtype == torch.float32:
        ref_err = (same_precision_ref.double() - truth).norm().item()
        assert err <= max(rtol32 * scale, 2 * ref_err + 2 * torch.finfo(dtype).eps * scale) + atol, (err, ref_err, scale)
    else:
        ref_err = (same_precision_ref.double() - truth).norm().item()
        assert err <= 2 * ref_err + 2 * torch.finfo(dtype).eps * scale + atol, (err, ref_err, scale)


def assert_compiles_to_same(step, scores, relevance):
    """step(scores, relevance) under torch.compile(fullgraph=True) gives the eager value and gradient."""
    compiled = torch.compile(step, fullgraph=True)
    outs = []
    for fn in (step, compiled):
        s = scores.clone().requires_grad_()
        loss = fn(s, relevance)
        loss.backward()
        outs.append((loss.detach(), s.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])


# ---- float64 truth of the smooth rank, written pair by pair (independent of itr_kernels) ----

def _pairs(scores, tau, valid):
    """sigma((S[q,k] - S[q,j]) / tau) at [q, j, k] and the mask of the pairs that count (k valid,
    k != j): IEEE arithmetic on the float64 scores, so an infinite score gives sigma(+-inf) = 1 or
    0, and two infinite scores of the same sign a NaN pair (inf - inf)."""
    s = scores.double()
    n = s.shape[1]
    valid = torch.ones_like(s, dtype=torch.bool) if valid is None else valid
    x = (s.unsqueeze(1) - s.unsqueeze(2)) / tau
    counted = valid.unsqueeze(1) & ~torch.eye(n, dtype=torch.bool, device=s.device)
    return torch.sigmoid(x), torch.sigmoid(-x), counted, valid


def smooth_rank_truth(scores, tau, valid=None):
    """Rhat[q, j] = 1 + sum_{k != j, valid} sigma((S[q,k] - S[q,j]) / tau); 0 at masked entries."""
    sig, _, counted, valid = _pairs(scores, tau, valid)
    return torch.where(valid, 1 + torch.where(counted, sig, 0).sum(dim=2), 0)


def smooth_rank_grad_truth(scores, tau, upstream, valid=None):
    """d <upstream, Rhat> / d S[q, c] = (1/tau) sum_{j != c, valid} sigma'((S_j - S_c)/tau) (g_j - g_c),
    with sigma' = sigma(x) sigma(-x) (no cancellation); 0 at masked entries."""
    sig, rev, counted, valid = _pairs(scores, tau, valid)
    g = upstream.double()
    terms = torch.where(counted, sig * rev * (g.unsqueeze(1) - g.unsqueeze(2)), 0)  # [q, c, j]
    return torch.where(valid, terms.sum(dim=2) / tau, 0)
