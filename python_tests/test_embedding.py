"""EmbeddingLoss, the embedding-level front end, and the explicit "mean" denominator, on one
process (test_distributed.py runs them across two)."""
import pytest
import torch

import itr_kernels as ik
from itr_kernels import losses
from helpers import F64

B, D = 7, 5


def features(gen, b=B, d=D):
    """Unnormalised float64 features (norms far from 1, so normalisation matters)."""
    img = 3 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    txt = 0.5 * torch.randn(b, d, generator=gen, dtype=torch.float64)
    return img, txt


def unit(x):
    return x / x.pow(2).sum(dim=1, keepdim=True).sqrt()


def relevance(gen, b=B):
    r = torch.rand(b, b, generator=gen, dtype=torch.float64)
    r.fill_diagonal_(1.0)
    return r


LOSSES = {
    "triplet": lambda: ik.TripletLoss(),
    "triplet_sum_vse0": lambda: ik.TripletLoss(max_violation=False, reduction="sum"),
    "infonce": lambda: ik.InfoNCELoss(temperature=0.1),
    "listwise": lambda: ik.ListwiseITRLoss(tau=0.05, k=3),
    "bcls": lambda: ik.BCLSLoss(temperature=0.05, window=2),
    "triplet_sn": lambda: ik.TripletSNLoss(temperature=0.05, rho=0.9),
    "triplet_sn_none": lambda: ik.TripletSNLoss(temperature=0.05, reduction="none"),
}
NEEDS_RELEVANCE = ("listwise", "bcls", "triplet_sn")


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("name", list(LOSSES))
def test_equals_the_score_matrix_loss(name, normalize, gen):
    img, txt = features(gen)
    rel = relevance(gen)
    loss = LOSSES[name]()
    a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
    with_rel = (rel,) if name.startswith(NEEDS_RELEVANCE) else ()
    got = ik.EmbeddingLoss(loss, normalize=normalize)(a, b, *with_rel)
    x, y = img.clone().requires_grad_(), txt.clone().requires_grad_()
    s = unit(x) @ unit(y).T if normalize else x @ y.T
    want = loss(s, *with_rel)
    torch.testing.assert_close(got, want, **F64)
    up = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    got.backward(up)
    want.backward(up)
    torch.testing.assert_close(a.grad, x.grad, **F64)
    torch.testing.assert_close(b.grad, y.grad, **F64)


def test_normalisation_on_and_off(gen):
    img, txt = features(gen)
    rel = relevance(gen)
    on = ik.EmbeddingLoss(ik.ListwiseITRLoss(tau=0.05), normalize=True)
    off = ik.EmbeddingLoss(ik.ListwiseITRLoss(tau=0.05), normalize=False)
    # normalised: invariant to each row's scale; unnormalised: not
    row_scale = torch.arange(1, B + 1, dtype=torch.float64)[:, None]
    torch.testing.assert_close(on(img, txt, rel), on(img * row_scale, txt / row_scale, rel), **F64)
    assert not torch.allclose(off(img, txt, rel), off(img * row_scale, txt / row_scale, rel))
    torch.testing.assert_close(off(unit(img), unit(txt), rel), on(img, txt, rel), **F64)


def test_relevance_tensor_callable_and_pair_agree(gen):
    img, txt = features(gen)

    def rsc(i, t):   # from the (normalised, detached) features
        assert not i.requires_grad and not t.requires_grad
        torch.testing.assert_close(t.norm(dim=1), torch.ones(B, dtype=torch.float64))
        r = (t @ t.T + 1) / 2
        return r.fill_diagonal_(1.0)

    rel = rsc(unit(img), unit(txt))
    loss = ik.BCLSLoss(temperature=0.05, sampling="full", gap=0.1)
    a = img.clone().requires_grad_()
    want = loss(unit(img) @ unit(txt).T, rel)
    by_tensor = ik.EmbeddingLoss(loss)(img, txt, rel)
    by_callable = ik.EmbeddingLoss(loss)(a, txt, rsc)
    by_default = ik.EmbeddingLoss(loss, relevance=rsc)(img, txt)
    by_pair = ik.EmbeddingLoss(loss)(img, txt, (rel, rel.T.contiguous()))
    for got in (by_tensor, by_callable, by_default, by_pair):
        torch.testing.assert_close(got, want, **F64)
    by_callable.backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_learnable_logit_scale_gets_a_gradient(gen):
    img, txt = features(gen)
    loss = ik.InfoNCELoss(temperature=0.07, learn_temperature=True).double()
    out = ik.EmbeddingLoss(loss)(img, txt)
    out.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0
    # the gradient of log-scale theta: d/dtheta CE(e^theta S) = e^theta * <dL/d(scaled S), S>, by finite difference
    s = unit(img) @ unit(txt).T
    labels = torch.arange(B)

    def clip(theta):
        z = theta.exp() * s
        return (torch.nn.functional.cross_entropy(z, labels) + torch.nn.functional.cross_entropy(z.T, labels)) / 2

    theta = loss.logit_scale.detach()
    h = 1e-6
    fd = (clip(theta + h) - clip(theta - h)) / (2 * h)
    torch.testing.assert_close(loss.logit_scale.grad, fd.to(loss.logit_scale.dtype), rtol=1e-6, atol=1e-8)


def test_logit_scale_argument_as_open_clip_passes_it(gen):
    img, txt = features(gen)
    log_scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    got = ik.EmbeddingLoss(ik.InfoNCELoss())(img, txt, logit_scale=log_scale.exp())
    s = unit(img) @ unit(txt).T
    labels = torch.arange(B)
    want = (torch.nn.functional.cross_entropy(s * log_scale.detach().exp(), labels)
            + torch.nn.functional.cross_entropy(s.T * log_scale.detach().exp(), labels)) / 2
    torch.testing.assert_close(got, want, **F64)
    got.backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    with pytest.raises(TypeError, match="logit_scale applies to InfoNCELoss only"):
        ik.EmbeddingLoss(ik.TripletLoss())(img, txt, logit_scale=10.0)
    with pytest.raises(ValueError, match="logit_scale"):
        ik.EmbeddingLoss(ik.InfoNCELoss())(img, txt, logit_scale=-1.0)


def test_bad_inputs_name_the_argument(gen):
    img, txt = features(gen)
    rel = relevance(gen)
    loss_fn = ik.EmbeddingLoss(ik.ListwiseITRLoss())
    with pytest.raises(ValueError, match=r"image_features and text_features must have the same shape.*\(7, 5\) and \(6, 5\)"):
        loss_fn(img, txt[:6], rel)
    with pytest.raises(ValueError, match=r"image_features and text_features must have the same shape.*\(7, 4\)"):
        loss_fn(img, txt[:, :4], rel)
    with pytest.raises(ValueError, match="image_features must be 2-D"):
        loss_fn(img[0], txt[0], rel)
    with pytest.raises(TypeError, match="text_features must be a torch.Tensor"):
        loss_fn(img, txt.tolist(), rel)
    with pytest.raises(TypeError, match="image_features must be a floating tensor"):
        loss_fn(img.long(), txt, rel)
    with pytest.raises(ValueError, match=r"relevance: the tensor must have shape \(7, 7\).*got \(7, 6\)"):
        loss_fn(img, txt, rel[:, :6])
    with pytest.raises(ValueError, match=r"relevance: the callable's result must have shape \(7, 7\).*got \(7,\)"):
        loss_fn(img, txt, lambda i, t: rel[0])
    with pytest.raises(TypeError, match="relevance: the callable must return a tensor"):
        loss_fn(img, txt, lambda i, t: 1.0)
    with pytest.raises(ValueError, match=r"relevance\[1\] \(relevance_t2i\) must have shape \(7, 7\)"):
        loss_fn(img, txt, (rel, rel[:3]))
    with pytest.raises(TypeError, match="relevance must be a tensor, a .* pair or a callable"):
        loss_fn(img, txt, "rsc")
    with pytest.raises(ValueError, match="relevance: ListwiseITRLoss needs relevance"):
        loss_fn(img, txt)
    with pytest.raises(TypeError, match="loss: SmoothNDCGLoss is a row-wise"):
        ik.EmbeddingLoss(ik.SmoothNDCGLoss())
    with pytest.raises(TypeError, match="loss must be an nn.Module"):
        ik.EmbeddingLoss(ik.triplet_loss)
    with pytest.raises(TypeError, match="relevance must be a callable"):
        ik.EmbeddingLoss(ik.ListwiseITRLoss(), relevance=rel)


def test_the_denominator_hook_is_gone():
    assert not hasattr(losses, "set_denominator_hook") and not hasattr(losses, "_denominator_hook")


@pytest.mark.parametrize("name", ["smooth_ndcg", "kendall", "ranknet", "smooth_ap", "listnet", "triplet", "infonce",
                                  "triplet_sn"])
def test_reducer_is_explicit(name, gen):
    """"sum" and "mean" = the sum over rows / reducer(count, reduction), the count being the loss's
    own; without a process group GlobalReduction is the plain reduction, an empty batch's 0 included."""
    q = 6
    s = torch.randn(q, q, generator=gen, dtype=torch.float64)
    r = torch.rand(q, q, generator=gen, dtype=torch.float64)
    r[0] = 0   # a row without gain for S-NDCG, without positive for Smooth-AP
    fns = {
        "smooth_ndcg": lambda s, **kw: ik.smooth_ndcg_loss(s, r[:s.shape[0], :s.shape[1]], tau=0.1, **kw),
        "kendall": lambda s, **kw: ik.kendall_loss(s, r[:s.shape[0], :s.shape[1]], gap=0.2, **kw),
        "ranknet": lambda s, **kw: ik.ranknet_loss(s, r[:s.shape[0], :s.shape[1]], gap=0.2, **kw),
        "smooth_ap": lambda s, **kw: ik.smooth_ap_loss(s, r[:s.shape[0], :s.shape[1]] > 0.7, tau=0.1, **kw),
        "listnet": lambda s, **kw: ik.listnet_loss(s, r[:s.shape[0], :s.shape[1]], **kw),
        "triplet": lambda s, **kw: ik.triplet_loss(s, **kw),
        "infonce": lambda s, **kw: ik.infonce_loss(s, **kw),
        "triplet_sn": lambda s, **kw: ik.triplet_sn_loss(s, r[:s.shape[0], :s.shape[1]], temperature=0.1, **kw),
    }
    fn = fns[name]
    seen = []

    def recorder(count, reduction):
        assert count.dtype == torch.float64 and not count.requires_grad
        seen.append((float(count), reduction))
        return count * 2 + 3 if reduction == "mean" else torch.tensor(0.25, dtype=torch.float64)

    total = fn(s, reduction="sum")
    torch.testing.assert_close(fn(s, reduction="sum", reducer=recorder), total / 0.25, **F64)
    got = fn(s, reducer=recorder)
    (_, (count, reduction)) = seen
    assert reduction == "mean"
    torch.testing.assert_close(got, total / (2 * count + 3), **F64)
    torch.testing.assert_close(fn(s), total / max(count, 1), **F64)   # the default divides by the same count
    for reduction in ("mean", "sum"):
        torch.testing.assert_close(fn(s, reduction=reduction, reducer=ik.GlobalReduction()), fn(s, reduction=reduction),
                                   **F64)
    assert fn(s, reduction="none", reducer=recorder).shape == fn(s, reduction="none").shape and len(seen) == 2
    assert float(fn(s[:0, :0], reducer=ik.GlobalReduction())) == 0.0
