"""ContinuousLabelLoss (a pairwise base + S-NDCG or Kendall over both directions) and
TripletSNITRLoss against float64 truths composed in the test from the pure-PyTorch reference
functions; the named forms equal ListwiseITRLoss and BCLSLoss; argument errors."""
import pytest
import torch
import torch.nn.functional as F

import itr_kernels as ik
from itr_kernels import reference as ref

from helpers import assert_close_to_truth, cosine_scores

BASE_ARGS = {"triplet": dict(margin=0.15), "triplet_sum": dict(margin=0.25),
             "triplet_sn": dict(margin=0.1, temperature=0.05, rho=0.9), "infonce": dict(temperature=0.07)}
TERM_ARGS = {"sndcg": dict(tau=0.05, k=6), "kendall": dict(kendall_margin=0.05, window=3)}


def base_truth(base, s, r, s_t2i=None, r_t2i=None, positives=None):
    """The pairwise base, both directions averaged, written from the reference functions and
    F.cross_entropy: square (s, r) or rectangular rows of each direction with `positives`."""
    a = BASE_ARGS[base]
    if positives is None:
        if base in ("triplet", "triplet_sum"):
            return ref.triplet_loss(s, a["margin"], base == "triplet", "none").mean(dim=1).mean()
        if base == "triplet_sn":
            return ref.triplet_sn_loss(s, r, a["margin"], a["temperature"], a["rho"], "none").mean(dim=1).mean()
        target = torch.arange(s.shape[0])
        return (F.cross_entropy(s / a["temperature"], target) + F.cross_entropy(s.T / a["temperature"], target)) / 2
    out = []
    for m, rel in ((s, r), (s_t2i, r_t2i)):
        if base in ("triplet", "triplet_sum"):
            out.append(ref.triplet_loss(m, a["margin"], base == "triplet", "mean", positives))
        elif base == "triplet_sn":
            out.append(ref.triplet_sn_loss(m, rel, a["margin"], a["temperature"], a["rho"], "mean", positives))
        else:
            out.append(F.cross_entropy(m / a["temperature"], positives))
    return (out[0] + out[1]) / 2


def term_truth(term, s, r):
    a = TERM_ARGS[term]
    if term == "sndcg":
        return ref.smooth_ndcg_loss(s, r, a["tau"], a["k"])
    return ref.kendall_loss(s, r, None, "hinge", a["kendall_margin"], 0.01, "swhs", a["window"])


def truth(base, term, weight, mix, s, r_i2t, r_t2i, s_t2i=None, positives=None):
    s_t2i_rows = s.T if positives is None else s_t2i
    b = base_truth(base, s, r_i2t, s_t2i, r_t2i, positives)
    t = (term_truth(term, s, r_i2t) + term_truth(term, s_t2i_rows, r_t2i)) / 2
    return ((1 - weight) if mix == "convex" else 1.0) * b + weight * t


def relevance(q, n, gen):
    return torch.rand(q, n, generator=gen, dtype=torch.float64)


def value_and_grads(fn, *tensors):
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves)
    return out.detach(), grads


@pytest.mark.parametrize("base", list(BASE_ARGS))
@pytest.mark.parametrize("term", list(TERM_ARGS))
@pytest.mark.parametrize("mix", ["convex", "add"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_square_matches_composed_truth(base, term, mix, dtype, device, gen):
    b, weight = 12, 0.3 if mix == "convex" else 1.7
    s = cosine_scores(b, b, gen, spread=2.0)
    r_i2t, r_t2i = relevance(b, b, gen), relevance(b, b, gen)
    r_i2t.fill_diagonal_(1.0)
    loss_fn = ik.ContinuousLabelLoss(base, term, weight, mix, **BASE_ARGS[base], **TERM_ARGS[term])
    got, (g,) = value_and_grads(lambda x: loss_fn(x, r_i2t.to(device, dtype), r_t2i.to(device, dtype)),
                                s.to(device, dtype))
    want, (gw,) = value_and_grads(lambda x: truth(base, term, weight, mix, x, r_i2t, r_t2i), s)
    assert_close_to_truth(got.cpu(), want, None, dtype)
    assert_close_to_truth(g.cpu(), gw, None, dtype)
    # relevance_t2i defaults to relevance_i2t.T
    torch.testing.assert_close(loss_fn(s.to(device), r_i2t.to(device)).cpu(),
                               truth(base, term, weight, mix, s, r_i2t, r_i2t.T))


@pytest.mark.parametrize("base", list(BASE_ARGS))
@pytest.mark.parametrize("term", list(TERM_ARGS))
def test_rectangular_rows_match_composed_truth(base, term, device, gen):
    # local rows against a global batch: 5 queries of each direction, 13 candidates
    q, n = 5, 13
    s_i2t, s_t2i = cosine_scores(q, n, gen, 2.0), cosine_scores(q, n, gen, 2.0)
    r_i2t, r_t2i = relevance(q, n, gen), relevance(q, n, gen)
    positives = torch.randperm(n, generator=gen)[:q]
    loss_fn = ik.ContinuousLabelLoss(base, term, 0.4, **BASE_ARGS[base], **TERM_ARGS[term])
    mix = loss_fn.mix
    got, grads = value_and_grads(lambda a, c: loss_fn(a, r_i2t.to(device), r_t2i.to(device), positives.to(device), c),
                                 s_i2t.to(device), s_t2i.to(device))
    want, want_grads = value_and_grads(lambda a, c: truth(base, term, 0.4, mix, a, r_i2t, r_t2i, c, positives),
                                       s_i2t, s_t2i)
    torch.testing.assert_close(got.cpu(), want)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g.cpu(), w)


@pytest.mark.parametrize("base", list(BASE_ARGS))
def test_rectangular_with_every_row_is_the_square_form(base, gen):
    s = cosine_scores(10, 10, gen)
    r = relevance(10, 10, gen)
    r.fill_diagonal_(1.0)
    for term in TERM_ARGS:
        loss_fn = ik.ContinuousLabelLoss(base, term, 0.5, **BASE_ARGS[base], **TERM_ARGS[term])
        torch.testing.assert_close(loss_fn(s, r, positives=torch.arange(10), scores_t2i=s.T.contiguous()),
                                   loss_fn(s, r))


@pytest.mark.parametrize("impl", [ik, ref])
def test_named_forms_are_listwise_and_bcls(impl, gen):
    s = cosine_scores(16, 16, gen).float()
    r_i2t, r_t2i = relevance(16, 16, gen).float(), relevance(16, 16, gen).float()
    pairs = [(impl.ContinuousLabelLoss("triplet", "sndcg", 0.3, margin=0.1, tau=0.02),
              impl.ListwiseITRLoss(margin=0.1, tau=0.02, weight=0.3)),
             (impl.ContinuousLabelLoss("triplet_sn", "kendall", 0.7, margin=0.1, rho=0.8, kendall_margin=0.05),
              impl.BCLSLoss(mu=0.7, margin=0.1, rho=0.8, kendall_margin=0.05))]
    for ours, theirs in pairs:
        a, ga = value_and_grads(lambda x: ours(x, r_i2t, r_t2i), s)
        b, gb = value_and_grads(lambda x: theirs(x, r_i2t, r_t2i), s)
        assert torch.equal(a, b) and torch.equal(ga[0], gb[0])


def test_arguments_reach_their_module():
    loss_fn = ik.ContinuousLabelLoss("triplet_sn", "kendall", margin=0.3, temperature=0.02, kendall_margin=0.1,
                                     kendall_temperature=0.5, window=4)
    assert loss_fn.base.triplet.margin == 0.3 and loss_fn.base.triplet.temperature == 0.02
    assert loss_fn.term.margin == 0.1 and loss_fn.term.temperature == 0.5 and loss_fn.term.window == 4
    assert loss_fn.term.sampling == "swhs" and loss_fn.mix == "add" and loss_fn.weight == 1.0
    sndcg = ik.ContinuousLabelLoss("triplet_sum", "sndcg", margin=0.3)
    assert sndcg.base.max_violation is False and sndcg.mix == "convex" and sndcg.weight == 0.5
    assert ik.ContinuousLabelLoss("triplet").base.max_violation is True
    assert set(ik.ContinuousLabelLoss.accepted_arguments("infonce", "sndcg")) == {
        "temperature", "learn_temperature", "tau", "k", "gain"}


def test_modules_as_base_and_term_learned_temperature(gen):
    loss_fn = ik.ContinuousLabelLoss(ik.InfoNCELoss(0.1, learn_temperature=True), ik.SmoothNDCGLoss(tau=0.05), 0.25)
    assert [n for n, _ in loss_fn.named_parameters()] == ["base.logit_scale"]
    s, r = cosine_scores(8, 8, gen), relevance(8, 8, gen)
    loss = loss_fn(s, r)
    loss.backward()
    want = 0.75 * ref.infonce_loss(s, 0.1) + 0.25 * (ref.smooth_ndcg_loss(s, r, 0.05) +
                                                     ref.smooth_ndcg_loss(s.T, r.T, 0.05)) / 2
    torch.testing.assert_close(loss.detach(), want)
    assert loss_fn.base.logit_scale.grad is not None and loss_fn.base.logit_scale.grad != 0


def test_triplet_sn_itr_loss_matches_reference(gen):
    s, r = cosine_scores(9, 9, gen), relevance(9, 9, gen)
    for impl in (ik, ref):
        torch.testing.assert_close(impl.TripletSNITRLoss(0.1, 0.05, 0.7)(s, r),
                                   ref.triplet_sn_loss(s, r, 0.1, 0.05, 0.7))


def test_argument_errors(gen):
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['tua'\] for base 'infonce' and term 'sndcg'.*tau"):
        ik.ContinuousLabelLoss("infonce", "sndcg", tua=0.1)
    with pytest.raises(ValueError, match=r"unknown argument\(s\) \['margin'\] for base InfoNCELoss"):
        ik.ContinuousLabelLoss(ik.InfoNCELoss(), "kendall", margin=0.1)
    with pytest.raises(ValueError, match="base must be one of"):
        ik.ContinuousLabelLoss("hinge", "sndcg")
    with pytest.raises(ValueError, match="term must be one of"):
        ik.ContinuousLabelLoss("triplet", "ndcg")
    with pytest.raises(TypeError, match="base must be one of.*got ListwiseITRLoss"):
        ik.ContinuousLabelLoss(ik.ListwiseITRLoss(), "sndcg")
    with pytest.raises(ValueError, match="reduction 'mean' or 'sum'"):
        ik.ContinuousLabelLoss("triplet", ik.SmoothNDCGLoss(reduction="none"))
    with pytest.raises(ValueError, match="weight"):
        ik.ContinuousLabelLoss("triplet", "sndcg", 1.5)
    with pytest.raises(ValueError, match="mix must be one of"):
        ik.ContinuousLabelLoss("triplet", "sndcg", mix="product")
    loss_fn = ik.ContinuousLabelLoss("infonce", "kendall")
    s = cosine_scores(6, 6, gen)
    with pytest.raises(ValueError, match="relevance_t2i must have the shape"):
        loss_fn(s, relevance(6, 6, gen), relevance(6, 5, gen))
    with pytest.raises(ValueError, match="scores_t2i"):
        loss_fn(s[:4], relevance(4, 6, gen), positives=torch.arange(4))
