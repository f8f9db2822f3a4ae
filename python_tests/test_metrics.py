"""Retrieval metrics against scipy / scikit-learn and brute-force loops on fresh random inputs."""
import numpy as np
import pytest
import torch

from itr_kernels import metrics

scipy_stats = pytest.importorskip("scipy.stats", reason="pip install scipy (CI installs it)")
sk_metrics = pytest.importorskip("sklearn.metrics", reason="pip install scikit-learn (CI installs it)")


def random_split(gen, n_img=13, m=3, dim=8):
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen), dim=1)
    cap = torch.nn.functional.normalize(torch.randn(n_img * m, dim, generator=gen), dim=1)
    scores = img @ cap.T
    owner = torch.arange(n_img * m) // m
    return scores, owner


def brute_recall(scores, owner, k):
    n_img, n_cap = scores.shape
    i2t = []
    for i in range(n_img):
        order = sorted(range(n_cap), key=lambda j: -scores[i, j].item())
        rank = min(r for r, j in enumerate(order) if owner[j] == i)
        i2t.append(rank < k)
    t2i = []
    for j in range(n_cap):
        order = sorted(range(n_img), key=lambda i: -scores[i, j].item())
        t2i.append(order.index(int(owner[j])) < k)
    return 100 * np.mean(i2t), 100 * np.mean(t2i)


def test_recall_matches_brute_force(gen):
    scores, owner = random_split(gen)
    out = metrics.recall_at_k(scores, owner, ks=(1, 5, 10))
    for k in (1, 5, 10):
        i2t, t2i = brute_recall(scores, owner, k)
        assert out[f"i2t_r{k}"] == pytest.approx(i2t)
        assert out[f"t2i_r{k}"] == pytest.approx(t2i)
    assert out["rsum"] == pytest.approx(sum(out[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)))


def test_recall_hand_case():
    # 2 images, 2 captions each. Image 0's best caption of its own is ranked 2nd (index 1);
    # image 1 ranks its own caption 3 first.
    scores = torch.tensor([[0.1, 0.8, 0.9, 0.2],
                           [0.5, 0.4, 0.3, 0.7]])
    owner = torch.tensor([0, 0, 1, 1])
    out = metrics.recall_at_k(scores, owner, ks=(1, 2))
    assert out["i2t_r1"] == 50.0 and out["i2t_r2"] == 100.0
    # captions: c0 -> img1 (0.5 > 0.1) miss; c1 -> img0 hit; c2 -> img0 miss; c3 -> img1 hit
    assert out["t2i_r1"] == 50.0 and out["t2i_r2"] == 100.0


@pytest.mark.parametrize("gain", ["exp", "linear"])
@pytest.mark.parametrize("k", [1, 5, 10, 40])
def test_ndcg_matches_sklearn(gen, gain, k):
    scores = torch.randn(9, 31, generator=gen, dtype=torch.float64)
    rel = torch.rand(9, 31, generator=gen, dtype=torch.float64)
    rel[0] = 0   # a query without gain scores 0, as in sklearn
    ours = metrics.ndcg_at_k(scores, rel, k=k, gain=gain)
    g = (2 ** rel - 1) if gain == "exp" else rel
    expected = sk_metrics.ndcg_score(g.numpy(), scores.numpy(), k=k)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_kendall_tau_matches_scipy(gen):
    scores = torch.randn(7, 25, generator=gen, dtype=torch.float64)
    rel = torch.randint(0, 5, (7, 25), generator=gen).double()   # many ties: tau-b's correction matters
    scores[1, :5] = scores[1, 0]                                  # ties in x too
    expected = np.mean([scipy_stats.kendalltau(scores[i].numpy(), rel[i].numpy()).statistic for i in range(7)])
    assert metrics.kendall_tau(scores, rel) == pytest.approx(expected, rel=1e-9)


def test_kendall_tau_skips_constant_rows(gen):
    scores = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    rel = torch.rand(3, 10, generator=gen, dtype=torch.float64)
    rel[2] = 0.5
    expected = np.mean([scipy_stats.kendalltau(scores[i].numpy(), rel[i].numpy()).statistic for i in range(2)])
    assert metrics.kendall_tau(scores, rel) == pytest.approx(expected, rel=1e-9)


def brute_map_at_r(scores, positives):
    maps, rps = [], []
    for s, p in zip(scores, positives):
        r = int(p.sum())
        if r == 0:
            continue
        order = torch.argsort(-s, stable=True)[:r]
        hits = p[order].double()
        prec = torch.cumsum(hits, 0) / torch.arange(1, r + 1)
        maps.append((prec * hits).sum().item() / r)
        rps.append(hits.sum().item() / r)
    return 100 * np.mean(maps), 100 * np.mean(rps)


def test_map_at_r_matches_brute_force(gen):
    scores = torch.randn(11, 20, generator=gen, dtype=torch.float64)
    pos = torch.rand(11, 20, generator=gen) < 0.2
    pos[3] = False
    ours = metrics.map_at_r(scores, pos)
    assert ours == pytest.approx(brute_map_at_r(scores, pos), rel=1e-12)


def test_chunking_does_not_change_results(gen, monkeypatch):
    scores, owner = random_split(gen, n_img=17, m=2)
    rel = torch.rand(scores.shape, generator=gen)
    whole = metrics.evaluate(scores, owner, rel)
    small = metrics._chunks
    monkeypatch.setattr(metrics, "_chunks", lambda n, cost, budget=0: small(n, cost, budget=cost * 3))
    chunked = metrics.evaluate(scores, owner, rel)
    assert chunked == pytest.approx(whole, rel=1e-12)


def test_bad_inputs():
    s = torch.rand(3, 6)
    with pytest.raises(ValueError, match="caption_owner"):
        metrics.recall_at_k(s, torch.arange(5))
    with pytest.raises(ValueError, match="caption_owner"):
        metrics.recall_at_k(s, torch.tensor([0, 0, 1, 1, 2, 3]))
    with pytest.raises(ValueError, match="relevance"):
        metrics.ndcg_at_k(s, torch.rand(3, 5))
    with pytest.raises(ValueError, match="k"):
        metrics.ndcg_at_k(s, torch.rand(3, 6), k=0)
    with pytest.raises(TypeError, match="positives"):
        metrics.map_at_r(s, torch.ones(3, 6))
    with pytest.raises(ValueError, match="scores"):
        metrics.kendall_tau(torch.rand(6), torch.rand(6))


def test_separate_t2i_matrix(gen):
    scores, owner = random_split(gen)
    rel = torch.rand(scores.shape, generator=gen)
    assert metrics.evaluate(scores, owner, rel, scores_t2i=scores.T.clone()) == metrics.evaluate(scores, owner, rel)
    # a different text-to-image matrix changes only the t2i numbers
    flipped = metrics.evaluate(scores, owner, rel, scores_t2i=-scores.T, rank_metrics=False)
    plain = metrics.evaluate(scores, owner, rel, rank_metrics=False)
    assert {k: v for k, v in flipped.items() if k.startswith("i2t")} == {k: v for k, v in plain.items()
                                                                       if k.startswith("i2t")}
    assert flipped["t2i_r1"] != plain["t2i_r1"] or flipped["t2i_ndcg@10"] != plain["t2i_ndcg@10"]
    assert "kendall_tau" not in plain and "i2t_map_r" not in plain
    with pytest.raises(ValueError, match="scores_t2i"):
        metrics.evaluate(scores, owner, rel, scores_t2i=scores)
