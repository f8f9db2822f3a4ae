"""LeaPRR re-ranking: pillar features and the neighbour graph against brute-force loops, the
top-K-only guarantee, learning on a tiny problem, and bad inputs."""
import pytest
import torch

from itr_kernels.app import rerank


def sims(gen, n_img=12, m=2, dim=6):
    img = torch.nn.functional.normalize(torch.randn(n_img, dim, generator=gen, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(n_img * m, dim, generator=gen, dtype=torch.float64), dim=1)
    return img @ txt.T, img @ img.T, txt @ txt.T


def topk_list(row, n):
    return torch.topk(row, n).indices.tolist()


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
def test_pillar_features_match_loops(gen, direction):
    s_it, s_ii, s_tt = sims(gen)
    s_ab, s_aa, s_bb = (s_it, s_ii, s_tt) if direction == "i2t" else (s_it.T, s_tt, s_ii)
    K, L = 5, 4
    br = rerank.make_branch(s_ab, s_aa, s_bb, k=K, pillars=L, neighbours=3)
    q = torch.arange(s_ab.shape[0])
    feats = rerank.pillar_features(br, q)
    assert feats.shape == (len(q), K + 1, 2 * L)
    for i in range(len(q)):
        cands = topk_list(s_ab[i], K)
        p_inter, p_intra = topk_list(s_ab[i], L), topk_list(s_aa[i], L)
        want_q = [s_ab[i, p].item() for p in p_inter] + [s_aa[i, p].item() for p in p_intra]
        assert feats[i, 0].tolist() == pytest.approx(want_q)
        for r, c in enumerate(cands):
            want_c = [s_bb[c, p].item() for p in p_inter] + [s_ab[p, c].item() for p in p_intra]
            assert feats[i, r + 1].tolist() == pytest.approx(want_c)


def test_neighbour_graph_matches_loops(gen):
    s_it, s_ii, s_tt = sims(gen, n_img=15)
    K, C = 6, 4
    br = rerank.make_branch(s_it, s_ii, s_tt, k=K, pillars=4, neighbours=C)
    graph = rerank.neighbour_graph(br, torch.arange(15))
    for i in range(15):
        nodes = [("a", i)] + [("b", c) for c in topk_list(s_it[i], K)]

        def nbrs(node, modality):
            kind, x = node
            if kind == "a":
                row = s_ii[x] if modality == "a" else s_it[x]
            else:
                row = s_it[:, x] if modality == "a" else s_tt[x]
            return set(topk_list(row, C))

        a = torch.tensor([[len(nbrs(u, "a") & nbrs(v, "a")) + len(nbrs(u, "b") & nbrs(v, "b")) for v in nodes]
                          for u in nodes], dtype=torch.float64)
        a = a / a.sum(1, keepdim=True)
        a[a < 0.8 / K] = 0
        a = a / a.sum(1, keepdim=True)
        torch.testing.assert_close(graph[i].double(), a, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(graph[i].sum(1).double(), torch.ones(K + 1, dtype=torch.float64))


def test_only_the_top_k_move(gen):
    s_it, s_ii, s_tt = sims(gen, n_img=10, m=3)
    K = 7
    br = rerank.make_branch(s_it, s_ii, s_tt, k=K, pillars=5, neighbours=3)
    model = rerank.PillarReranker(pillars=5, dim=16, depth=2, heads=2)
    new = rerank.apply(model, br, s_it)
    for i in range(10):
        top = set(topk_list(s_it[i], K))
        rest = [j for j in range(30) if j not in top]
        assert set(topk_list(new[i], K)) == top                      # the same K stay on top
        assert torch.equal(new[i, rest], s_it[i, rest])              # everything else untouched
        scores = model.eval().score(br, torch.tensor([i]))[0]
        order = [br.cand[i, r].item() for r in torch.argsort(scores, descending=True, stable=True)]
        assert topk_list(new[i], K) == order                         # re-ordered by the re-ranker


def test_training_reduces_loss(gen):
    # A base model that ranks the positives 2nd-3rd: pillar features carry the signal to fix it.
    n_img, m = 64, 2
    img = torch.nn.functional.normalize(torch.randn(n_img, 16, generator=gen), dim=1)
    txt = torch.nn.functional.normalize(img.repeat_interleave(m, 0) + 0.35 * torch.randn(n_img * m, 16, generator=gen),
                                        dim=1)
    s = {"i2t": img @ txt.T, "i2i": img @ img.T, "t2t": txt @ txt.T}
    owner = torch.arange(n_img * m) // m
    cfg = dict(k_i2t=8, k_t2i=4, pillars=8, neighbours=4, dim=32, depth=1, heads=2, dropout=0.0, lr=0.05,
               weight_decay=0.0, batch_size=32, epochs=15, nce_temperature=0.5, margin=0.2, align_weight=1.0, seed=0)
    _, history = rerank.train_rerankers(s, owner, cfg, log=lambda *_: None)
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.8 * history[0], history


def test_structure_alignment_is_zero_when_branches_agree(gen):
    s_it, s_ii, s_tt = sims(gen, n_img=8, m=1)
    i2t = rerank.make_branch(s_it, s_ii, s_tt, k=8, pillars=4, neighbours=3)
    t2i = rerank.make_branch(s_it.T, s_tt, s_ii, k=8, pillars=4, neighbours=3)
    q = torch.arange(8)
    # both branches score every pair with the base similarity: identical distributions
    s_i = s_it.gather(1, i2t.cand).float()
    s_t = s_it.T.gather(1, t2i.cand).float()
    kl = rerank.structure_alignment(s_i, q, i2t, s_t, q, t2i, 8, 0.5)
    assert kl.item() == pytest.approx(0, abs=1e-6)
    kl2 = rerank.structure_alignment(s_i, q, i2t, -s_t, q, t2i, 8, 0.5)
    assert kl2.item() > 0.01


def test_bad_inputs(gen):
    s_it, s_ii, s_tt = sims(gen, n_img=6, m=2)
    with pytest.raises(ValueError, match="k = 20 is larger than the 12 candidates"):
        rerank.make_branch(s_it, s_ii, s_tt, k=20)
    with pytest.raises(ValueError, match="s_aa: expected \\(6, 6\\)"):
        rerank.make_branch(s_it, s_tt, s_tt, k=3)
    with pytest.raises(ValueError, match="s_bb: expected \\(12, 12\\)"):
        rerank.make_branch(s_it, s_ii, s_ii, k=3)
    with pytest.raises(ValueError, match="pillars"):
        rerank.make_branch(s_it, s_ii, s_tt, k=3, pillars=7)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        rerank.make_branch(s_it, s_ii, s_tt, k=0)
    with pytest.raises(ValueError, match="s_ab"):
        rerank.make_branch(s_it[0], s_ii, s_tt)


@pytest.mark.parametrize("train_split", ["train", "dev"])
def test_command_end_to_end_on_a_trained_model(tmp_path, train_split):
    import json

    from itr_kernels.app import train
    from itr_kernels.app.config import CONFIG_DIR, load_config
    from test_train import cfg_for, make_tiny_data
    data = make_tiny_data(tmp_path)
    train.run(cfg_for(data, tmp_path / "run", epochs=2), log=lambda *_: None)
    cfg = load_config(None, ["k_i2t=8", "k_t2i=4", "pillars=8", "neighbours=4", "dim=16", "epochs=2",
                             "batch_size=32", f"train_split={train_split}"],
                      defaults=f"{CONFIG_DIR}/rerank.yaml")
    report = rerank.run(str(tmp_path / "run" / "best.pt"), cfg, log=lambda *_: None)
    saved = json.loads((tmp_path / "run" / "rerank_report.json").read_text())
    assert saved["after"]["rsum"] == pytest.approx(report["after"]["rsum"])
    for key in ("rsum", "ndcg@10", "i2t_r1", "t2i_r10"):
        assert 0 <= report["before"][key] and 0 <= report["after"][key]
    # Only the top k_i2t = 8 are re-ordered, so the top 10 hold the same captions: R@10 is unchanged.
    assert report["after"]["i2t_r10"] == pytest.approx(report["before"]["i2t_r10"])
    with pytest.raises(SystemExit, match="train_split"):
        rerank.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "train_split=test"])
