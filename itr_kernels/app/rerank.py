"""Learnable pillar-based re-ranking (LeaPRR; Qu et al., SIGIR 2023) on a frozen base model's similarities.

A *branch* re-ranks one direction: queries of modality A against candidates of modality B
(image-to-text: A = images, B = texts; text-to-image the other way round). It needs the base
model's similarities `S_ab` (queries x candidates), `S_aa` and `S_bb`. Per query q:

- candidates: the top-K of `S_ab[q]`; pillars: the top-L of `S_ab[q]` (inter-modal) and of
  `S_aa[q]` (intra-modal);
- pillar-space vectors (2L-d): the query `[S_ab[q, P_inter], S_aa[q, P_intra]]`, a candidate c
  `[S_bb[c, P_inter], S_ab[P_intra, c]]`: only similarities, so any base model works;
- a graph over the K + 1 nodes (query and candidates): `A[i, j] = |N_C^a(i) ∩ N_C^a(j)| +
  |N_C^b(i) ∩ N_C^b(j)|` with `N_C^m(x)` the top-C neighbours of x in modality m, row-normalised,
  entries below 0.8 / K dropped, re-normalised;
- a Transformer whose attention is `(softmax(QKᵀ/√d) + A) / 2`; the new score of a candidate is
  the cosine between its output and the query's.

Only the top-K are re-ordered; everything below stays where the base model put it. Everything is
vectorised over queries (the public code intersects neighbour lists per query in NumPy).

Losses (per branch): multi-positive InfoNCE (temperature t), a triplet hinge (the hardest
negative against every positive, margin 0.2), and a structure-alignment KL: for the pairs (image,
text) that both branches score in a step, the i2t distribution over an image's candidates and the
t2i scores of the same pairs (renormalised over those pairs) are pulled together (symmetric KL).

Training similarities (`folds`): by default the base model's own similarities of its training split
(the public protocol), which it fits far better than unseen data. With `folds >= 2`, cross-fitting
(as in stacking): the training images are cut into folds, one base model per fold is trained on the
other folds with the checkpoint's config, and each fold is scored, within itself, by the model that
never saw it; the re-ranker fits on these out-of-fold similarities (cached next to the checkpoint)
and is applied to the checkpoint's model on the test split. The report adds a `ceiling`: the
metrics of the best re-ordering of the same top-K (true matches first, then by true relevance).
"""
import argparse
import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F


def _check_sims(s_ab, s_aa, s_bb):
    for name, s in (("s_ab", s_ab), ("s_aa", s_aa), ("s_bb", s_bb)):
        if not isinstance(s, torch.Tensor) or s.dim() != 2 or not s.is_floating_point():
            raise ValueError(f"{name}: expected a 2-D floating tensor of similarities, got "
                             f"{getattr(s, 'shape', type(s).__name__)}")
    na, nb = s_ab.shape
    if s_aa.shape != (na, na):
        raise ValueError(f"s_aa: expected ({na}, {na}) (queries x queries, as s_ab has {na} rows), got {tuple(s_aa.shape)}")
    if s_bb.shape != (nb, nb):
        raise ValueError(f"s_bb: expected ({nb}, {nb}) (candidates x candidates, as s_ab has {nb} columns), "
                         f"got {tuple(s_bb.shape)}")


def _check_k(value, name, limit, what):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if value > limit:
        raise ValueError(f"{name} = {value} is larger than the {limit} {what}")


@dataclass
class Branch:
    """The base model's view of one direction, with everything the re-ranker reads precomputed."""
    s_ab: torch.Tensor     # (na, nb)
    s_aa: torch.Tensor     # (na, na)
    s_bb: torch.Tensor     # (nb, nb)
    cand: torch.Tensor     # (na, K) top-K candidates per query
    p_inter: torch.Tensor  # (na, L) pillars in modality b
    p_intra: torch.Tensor  # (na, L) pillars in modality a
    nbr_a_of_a: torch.Tensor   # (na, C) top-C neighbours: of queries in a, in b; of candidates in a, in b
    nbr_b_of_a: torch.Tensor
    nbr_a_of_b: torch.Tensor
    nbr_b_of_b: torch.Tensor

    @property
    def k(self):
        return self.cand.shape[1]


def make_branch(s_ab, s_aa, s_bb, k=32, pillars=64, neighbours=10):
    _check_sims(s_ab, s_aa, s_bb)
    na, nb = s_ab.shape
    _check_k(k, "k", nb, "candidates")
    _check_k(pillars, "pillars", min(na, nb), "items of the smaller modality")
    _check_k(neighbours, "neighbours", min(na, nb), "items of the smaller modality")
    top = lambda s, n: torch.topk(s, n, dim=1).indices  # noqa: E731
    return Branch(s_ab, s_aa, s_bb, top(s_ab, k), top(s_ab, pillars), top(s_aa, pillars),
                  top(s_aa, neighbours), top(s_ab, neighbours), top(s_ab.T, neighbours), top(s_bb, neighbours))


def pillar_features(br, queries):
    """(n, K + 1, 2L): node 0 is the query, nodes 1..K its candidates, in pillar space."""
    cand, pi, pa = br.cand[queries], br.p_inter[queries], br.p_intra[queries]
    q_vec = torch.cat([br.s_ab[queries[:, None], pi], br.s_aa[queries[:, None], pa]], dim=1)      # (n, 2L)
    c_vec = torch.cat([br.s_bb[cand[:, :, None], pi[:, None, :]],                                 # (n, K, L)
                       br.s_ab[pa[:, None, :], cand[:, :, None]]], dim=2)                         # (n, K, L)
    return torch.cat([q_vec[:, None, :], c_vec], dim=1)


def _overlap(sets):
    """(n, M, C) index sets -> (n, M, M) sizes of pairwise intersections (a set holds distinct ids).

    Per query the ids are renumbered densely (sort, mark first occurrences, cumsum), each node
    becomes a multi-hot row over at most M*C local ids, and all intersections are one batched
    matmul, instead of an (n, M, M, C, C) comparison."""
    n, m, c = sets.shape
    flat = sets.reshape(n, m * c)
    ids, order = flat.sort(dim=1)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[:, 1:] = ids[:, 1:] != ids[:, :-1]
    local = torch.empty_like(flat).scatter_(1, order, first.cumsum(1) - 1)
    hot = torch.zeros(n, m, m * c, device=sets.device).scatter_(2, local.view(n, m, c), 1.0)
    return hot @ hot.transpose(1, 2)


def neighbour_graph(br, queries, threshold=0.8):
    """(n, K + 1, K + 1) row-stochastic adjacency from shared top-C neighbours (LeaPRR, Qu et al., 2023)."""
    cand = br.cand[queries]
    sets_a = torch.cat([br.nbr_a_of_a[queries][:, None], br.nbr_a_of_b[cand]], dim=1)   # (n, K+1, C)
    sets_b = torch.cat([br.nbr_b_of_a[queries][:, None], br.nbr_b_of_b[cand]], dim=1)
    a = (_overlap(sets_a) + _overlap(sets_b)).float()
    a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
    a = torch.where(a < threshold / br.k, torch.zeros_like(a), a)
    return a / a.sum(-1, keepdim=True).clamp_min(1e-12)


class GraphAttentionLayer(nn.Module):
    """Pre-norm Transformer layer whose attention averages the learned softmax with the graph."""

    def __init__(self, dim, heads, dropout):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} must be a multiple of heads {heads}")
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, graph):
        n, m, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, m, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // self.heads), -1) + graph[:, None]) / 2
        x = x + self.drop(self.out((attn @ v).transpose(1, 2).reshape(n, m, d)))
        return x + self.drop(self.ffn(self.norm2(x)))


class PillarReranker(nn.Module):
    """Re-scores one branch's top-K from pillar-space features and the neighbour graph."""

    def __init__(self, pillars=64, dim=64, depth=2, heads=4, dropout=0.1):
        super().__init__()
        self.embed = nn.Linear(2 * pillars, dim)
        self.role = nn.Parameter(torch.zeros(2, dim))   # query node / candidate node
        self.layers = nn.ModuleList(GraphAttentionLayer(dim, heads, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(self, feats, graph):
        """(n, K + 1, 2L), (n, K + 1, K + 1) -> (n, K) cosine scores of the candidates."""
        role = torch.cat([self.role[:1], self.role[1:].expand(feats.shape[1] - 1, -1)])
        x = self.embed(feats) + role
        for layer in self.layers:
            x = layer(x, graph)
        x = F.normalize(self.norm(x), dim=-1)
        return (x[:, 1:] * x[:, :1]).sum(-1)

    def score(self, br, queries):
        dtype = self.embed.weight.dtype
        return self(pillar_features(br, queries).to(dtype), neighbour_graph(br, queries).to(dtype))


# Masked entries get a large finite logit, not -inf: rows left out of a mean still go through the
# backward, where -inf - (-inf) would turn their zero gradient into NaN.
_MASKED = -1e4


def multi_positive_infonce(scores, positives, temperature):
    logits = scores / temperature
    has = positives.any(1)
    pos = torch.logsumexp(logits.masked_fill(~positives, _MASKED), 1)
    loss = torch.logsumexp(logits, 1) - pos
    return loss[has].mean() if has.any() else scores.sum() * 0


def triplet_hinge(scores, positives, margin):
    has = positives.any(1) & (~positives).any(1)
    hardest_neg = scores.masked_fill(positives, _MASKED).amax(1, keepdim=True)
    hinge = (margin + hardest_neg - scores).clamp_min(0) * positives
    per_query = hinge.sum(1) / positives.sum(1).clamp_min(1)
    return per_query[has].mean() if has.any() else scores.sum() * 0


def structure_alignment(i2t_scores, i2t_queries, i2t, t2i_scores, t2i_queries, t2i, n_texts, temperature):
    """Symmetric KL between the two branches' distributions over the (image, text) pairs that both
    scored in this step: image q's i2t candidates c that are t2i queries with q among their own
    candidates."""
    row_of_text = torch.full((n_texts,), -1, dtype=torch.long, device=i2t_scores.device)
    row_of_text[t2i_queries] = torch.arange(len(t2i_queries), device=i2t_scores.device)
    cand = i2t.cand[i2t_queries]                               # (Bi, K) texts
    rows = row_of_text[cand]                                   # (Bi, K) row in the t2i batch or -1
    their = t2i.cand[t2i_queries][rows.clamp_min(0)]           # (Bi, K, Kt) images
    hit = (their == i2t_queries[:, None, None]) & (rows >= 0)[..., None]
    both = hit.any(-1)                                         # (Bi, K)
    other = (t2i_scores[rows.clamp_min(0)] * hit).sum(-1)      # t2i score of (text c, image q)
    keep = both.sum(1) >= 2
    if not keep.any():
        return i2t_scores.sum() * 0
    p = torch.log_softmax((i2t_scores / temperature).masked_fill(~both, _MASKED)[keep], 1)
    q = torch.log_softmax((other / temperature).masked_fill(~both, _MASKED)[keep], 1)
    m = both[keep]
    kl = lambda a, b: torch.where(m, a.exp() * (a - b), 0).sum(1)  # noqa: E731
    return (kl(p, q) + kl(q, p)).mean() / 2


def positives_of(br_queries, cand, owner_of_text, direction):
    """Ground-truth matches among the candidates: i2t, texts owned by the image; t2i, the text's image."""
    if direction == "i2t":
        return owner_of_text[cand] == br_queries[:, None]
    return cand == owner_of_text[br_queries][:, None]


def rerank_scores(base, br, scores):
    """Base scores with each query's top-K re-ordered by `scores` (n_queries, K) and kept above
    every other candidate; the rest untouched (their order and values)."""
    out = base.clone()
    lift = base.max() - base.min() + 1.0
    rows = torch.arange(base.shape[0], device=base.device)[:, None]
    out[rows, br.cand] = base.max() + lift + scores.to(base.dtype)
    return out


@torch.no_grad()
def apply(model, br, base, batch=2048):
    model.eval()
    q = torch.arange(base.shape[0], device=base.device)
    scores = torch.cat([model.score(br, q[s:s + batch]) for s in range(0, len(q), batch)])
    if not torch.isfinite(scores).all():
        raise FloatingPointError("the re-ranker produced non-finite scores (diverged training?)")
    return rerank_scores(base, br, scores)


def train_rerankers(groups, cfg, log=print):
    """Train the i2t and t2i re-rankers jointly on base similarities.

    groups: a list of (sims, owner), each one retrieval problem whose queries rank only its own
    candidates (today's protocol: one group, a whole split; cross-fitting: one per held-out fold);
    sims: dict with i2t (n_img, n_txt), i2i, t2t; owner: (n_txt,) image index of each caption.
    A step draws its batch from one group. With one group the batches and random draws are
    exactly those of a single split (the group order is only shuffled when there are several)."""
    if isinstance(groups, dict):
        raise TypeError("train_rerankers: groups must be a list of (sims, owner) pairs, got a dict")
    g = torch.Generator().manual_seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    branches = []
    for sims, owner in groups:
        i2t = make_branch(sims["i2t"], sims["i2i"], sims["t2t"], cfg["k_i2t"], cfg["pillars"], cfg["neighbours"])
        t2i = make_branch(sims["i2t"].T, sims["t2t"], sims["i2i"], cfg["k_t2i"], cfg["pillars"], cfg["neighbours"])
        n_img, n_txt = sims["i2t"].shape
        branches.append((i2t, t2i, owner, n_img, n_txt))
    models = nn.ModuleDict({d: PillarReranker(cfg["pillars"], cfg["dim"], cfg["depth"], cfg["heads"], cfg["dropout"])
                            for d in ("i2t", "t2i")})
    opt = torch.optim.SGD(models.parameters(), lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"])
    bs = cfg["batch_size"]
    per_epoch = sum(max(1, n_img // bs) for _, _, _, n_img, _ in branches)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, per_epoch * cfg["epochs"])
    history = []
    for epoch in range(1, cfg["epochs"] + 1):
        batches = []
        for gi, (_, _, _, n_img, _) in enumerate(branches):
            perm = torch.randperm(n_img, generator=g)
            batches += [(gi, perm[b * bs:(b + 1) * bs]) for b in range(max(1, n_img // bs))]
        if len(branches) > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        total = 0.0
        for step, (gi, imgs) in enumerate(batches):
            i2t, t2i, owner, n_img, n_txt = branches[gi]
            m = n_txt // n_img
            txts = (imgs[:, None] * m + torch.arange(m)).reshape(-1)     # the batch images' captions
            s_i = models["i2t"].score(i2t, imgs)
            s_t = models["t2i"].score(t2i, txts)
            loss = 0
            for s, br, qs, d in ((s_i, i2t, imgs, "i2t"), (s_t, t2i, txts, "t2i")):
                pos = positives_of(qs, br.cand[qs], owner, d)
                loss = loss + multi_positive_infonce(s, pos, cfg["nce_temperature"]) \
                    + triplet_hinge(s, pos, cfg["margin"])
            loss = loss + cfg["align_weight"] * structure_alignment(s_i, imgs, i2t, s_t, txts, t2i, n_txt,
                                                                    cfg["nce_temperature"])
            if not torch.isfinite(loss):
                raise FloatingPointError(f"re-ranker loss is {loss.item()} at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item()
        history.append(total / len(batches))
        log(f"rerank epoch {epoch}: loss {history[-1]:.4f}")
    return models, history


def base_similarities(model, split):
    """i2t, i2i and t2t cosine similarities of a trained VSE model on one split."""
    model.eval()
    with torch.no_grad():
        img = model.embed_images(split.images).float()
        txt = model.embed_texts(split.texts).float()
    return {"i2t": img @ txt.T, "i2i": img @ img.T, "t2t": txt @ txt.T}


def oracle_scores(br, positives, relevance):
    """Scores that put each query's top-K in the best order the truth allows: its true matches
    first (the best recall any re-ordering reaches), then by true relevance (the best NDCG: the
    matches have relevance 1, the most). positives / relevance: (n_queries, n_candidates) of this
    direction. Integer scores (K - position), so the order survives any float dtype exactly."""
    rows = torch.arange(br.cand.shape[0], device=br.cand.device)[:, None]
    key = relevance[rows, br.cand].double() + 2.0 * positives[rows, br.cand].double()
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    scores = torch.empty_like(key)
    scores.scatter_(1, order, torch.arange(br.k, 0, -1, dtype=key.dtype, device=key.device).expand_as(key))
    return scores


def evaluate_reranking(models, sims, split, cfg, k):
    """Metrics of one split before re-ranking, after it, and at the ceiling (oracle re-ordering of
    the same top-K), and the seconds the re-rankers took."""
    import time

    from itr_kernels import metrics
    t0 = time.perf_counter()
    i2t = make_branch(sims["i2t"], sims["i2i"], sims["t2t"], cfg["k_i2t"], cfg["pillars"], cfg["neighbours"])
    t2i = make_branch(sims["i2t"].T, sims["t2t"], sims["i2i"], cfg["k_t2i"], cfg["pillars"], cfg["neighbours"])
    new_i2t, new_t2i = apply(models["i2t"], i2t, sims["i2t"]), apply(models["t2i"], t2i, sims["i2t"].T)
    seconds = time.perf_counter() - t0
    rel = split.relevance()
    pos = split.owner[None, :] == torch.arange(sims["i2t"].shape[0], device=split.owner.device)[:, None]
    top_i2t = rerank_scores(sims["i2t"], i2t, oracle_scores(i2t, pos, rel))
    top_t2i = rerank_scores(sims["i2t"].T, t2i, oracle_scores(t2i, pos.T, rel.T))
    ev = lambda s, st=None: metrics.evaluate(s, split.owner, rel, k, scores_t2i=st, rank_metrics=False)  # noqa: E731
    return {"before": ev(sims["i2t"]), "after": ev(new_i2t, new_t2i), "ceiling": ev(top_i2t, top_t2i),
            "seconds": seconds, "n_queries": len(i2t.cand) + len(t2i.cand)}


# --------------------------------------------------------------------------------------------
# Cross-fitting: out-of-fold similarities of the training split


def fold_assignment(n_images, folds, seed):
    """(n_images,) fold of each training image: a seeded permutation cut into `folds` parts whose
    sizes differ by at most one."""
    perm = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))
    fold = torch.empty(n_images, dtype=torch.long)
    fold[perm] = torch.arange(n_images) % folds
    return fold


def _progress(total, desc, enabled, log):
    """tqdm when installed, else one log line per step (the app's plain progress style)."""
    try:
        from tqdm.auto import tqdm
        return tqdm(total=total, desc=desc, unit="model", disable=not enabled, dynamic_ncols=True)
    except ImportError:
        class Lines:
            n = 0

            def update(self, k=1):
                self.n += k
                if enabled:
                    log(f"{desc}: {self.n}/{total}")

            def set_postfix(self, **kw):
                pass

            def close(self):
                pass
        return Lines()


def oof_cache_key(base_cfg, n_train, folds, seed):
    """The cache key of a cross-fit: the base model's config (what every fold model is trained
    with, runtime keys aside), the training split's size, folds and the fold seed."""
    import hashlib
    import json

    from .config import RUNTIME_KEYS
    what = {"config": {k: v for k, v in sorted(base_cfg.items()) if k not in RUNTIME_KEYS},
            "n_train": int(n_train), "folds": int(folds), "seed": int(seed), "version": 1}
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:16]


def out_of_fold_similarities(base_cfg, splits, folds, seed, cache_dir, device, progress=True, log=print,
                             train_fn=None):
    """Cross-fitting (as in stacking): cut the training images into `folds` folds, train one base
    model per fold on the other folds (the base model's own config; best checkpoint on dev, as
    train.py picks it), and score the held-out fold with it, within itself: its images against its
    own captions (S_ab), images against images, captions against captions, as test queries rank
    test candidates. No similarity comes from a model that saw any of the fold's images or captions.

    Cached in cache_dir under oof_cache_key(...). Returns {"groups": [(sims, owner)] one per fold,
    "fold": (n_train,) fold of each training image, "heldout": per fold the fold model's held-out
    metrics, "path": the cache file, "cached": whether it was read back}."""
    import shutil

    from . import checkpoint
    from .vse import VSEModel
    if train_fn is None:
        from .train import run as train_fn
    train = splits["train"]
    key = oof_cache_key(base_cfg, train.n_images, folds, seed)
    path = os.path.join(cache_dir, f"oof_{key}.pt")
    if os.path.isfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        groups = [({n: s[n].to(device) for n in ("i2t", "i2i", "t2t")}, s["owner"].to(device))
                  for s in saved["folds"]]
        return {"groups": groups, "fold": saved["fold"], "heldout": saved["heldout"], "path": path, "cached": True}
    fold = fold_assignment(train.n_images, folds, seed)
    bar = _progress(folds, "out-of-fold base models", progress, log)
    groups, heldout, saved = [], [], []
    for f in range(folds):
        out_dir = os.path.join(cache_dir, f"oof_{key}_runs", f"fold{f}")
        held = train.subset(torch.nonzero(fold == f).squeeze(1))
        fit = train.subset(torch.nonzero(fold != f).squeeze(1))
        cfg_f = dict(base_cfg, out_dir=out_dir, progress=False, tensorboard=False)
        # the held-out fold stands in for the test split, so the fold model's report is its out-of-fold score
        report = train_fn(cfg_f, log=lambda *_: None, splits={"train": fit, "dev": splits["dev"], "test": held},
                          rank_metrics=False)
        ckpt = checkpoint.load(os.path.join(out_dir, "best.pt"))
        model = VSEModel(train.images.shape[-1], train.texts.shape[1], base_cfg["embed_dim"], base_cfg["hidden"],
                         base_cfg["dropout"])
        model.load_state_dict(ckpt["model"])
        sims = base_similarities(model.to(device), held)
        groups.append((sims, held.owner))
        heldout.append({n: float(v) for n, v in (report or {}).get("test", {}).items()})
        saved.append({**{n: v.cpu() for n, v in sims.items()}, "owner": held.owner.cpu()})
        shutil.rmtree(out_dir, ignore_errors=True)     # the checkpoints are 10s of MB each; the sims are kept
        bar.update(1)
        if heldout[-1]:
            bar.set_postfix(fold=f, heldout_rsum=f"{heldout[-1]['rsum']:.1f}")
    bar.close()
    shutil.rmtree(os.path.join(cache_dir, f"oof_{key}_runs"), ignore_errors=True)
    checkpoint.save(path, folds=saved, fold=fold, heldout=heldout, key=key)
    return {"groups": groups, "fold": fold, "heldout": heldout, "path": path, "cached": False}


# --------------------------------------------------------------------------------------------
# The command


def _check_protocol(cfg):
    if cfg["train_split"] not in ("train", "dev"):
        raise ValueError(f"train_split must be 'train' or 'dev', got {cfg['train_split']!r}")
    folds = cfg["folds"]
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 0 or folds == 1:
        raise ValueError(f"folds must be 0 (no cross-fitting) or an integer >= 2, got {folds!r}")
    if folds and cfg["train_split"] != "train":
        raise ValueError(f"folds = {folds} cross-fits the training split; it needs train_split=train, got "
                         f"{cfg['train_split']!r} (the dev split is already held out from the base model)")


def prepare(checkpoint_path, cfg, log=print):
    """Everything the re-ranker is fit to and evaluated on, for one checkpoint and protocol (the
    keys folds, seed, train_split of cfg): the base model, the splits, and the training groups."""
    from . import checkpoint
    from .data.loading import load_data, pick_device
    from .vse import VSEModel
    _check_protocol(cfg)
    if cfg["num_threads"] > 0:
        torch.set_num_threads(cfg["num_threads"])
    device = pick_device(cfg["device"])
    ckpt = checkpoint.load(checkpoint_path)
    tcfg = dict(ckpt["config"], progress=False)
    splits = load_data(tcfg, device, log)
    train = splits["train"]
    model = VSEModel(train.images.shape[-1], train.texts.shape[1], tcfg["embed_dim"], tcfg["hidden"], tcfg["dropout"])
    model.load_state_dict(ckpt["model"])
    model.to(device)
    ctx = {"checkpoint": checkpoint_path, "base_config": tcfg, "splits": splits, "model": model, "oof": None,
           "protocol": {"folds": cfg["folds"], "seed": cfg["seed"], "train_split": cfg["train_split"]}}
    if cfg["folds"]:
        cache = cfg["cache_dir"] or os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), "oof")
        oof = out_of_fold_similarities(dict(ckpt["config"]), splits, cfg["folds"], cfg["seed"], cache, device,
                                       cfg["progress"], log)
        log(("read" if oof["cached"] else "wrote") + f" out-of-fold similarities {oof['path']}")
        ctx["oof"], ctx["groups"] = oof, oof["groups"]
    else:
        fit = splits[cfg["train_split"]]
        ctx["groups"] = [(base_similarities(model, fit), fit.owner)]
    return ctx


def fit_and_evaluate(ctx, cfg, eval_split="test", log=print):
    """Train the re-rankers on ctx's groups with cfg and report eval_split before / after / ceiling."""
    if {k: cfg[k] for k in ctx["protocol"]} != ctx["protocol"]:
        raise ValueError(f"cfg's protocol {({k: cfg[k] for k in ctx['protocol']})} is not the prepared one "
                         f"{ctx['protocol']}; prepare() again")
    if eval_split not in ("dev", "test"):
        raise ValueError(f"eval_split must be 'dev' or 'test', got {eval_split!r}")
    if eval_split == cfg["train_split"] and not cfg["folds"]:
        raise ValueError("eval_split is the split the re-ranker is fit on")
    models, history = train_rerankers(ctx["groups"], cfg, log)
    split = ctx["splits"][eval_split]
    sims = base_similarities(ctx["model"], split)
    res = evaluate_reranking(models, sims, split, cfg, ctx["base_config"]["eval_k"])
    return dict(res, train_loss=history, eval_split=eval_split)


def run(checkpoint_path, cfg, log=print):
    """Train the re-rankers on a train.py checkpoint's model (today's protocol: its similarities on
    the train or dev split; folds >= 2: out-of-fold similarities of the training split) and report
    the test metrics before and after re-ranking, and the ceiling of re-ordering the same top-K."""
    import json
    ctx = prepare(checkpoint_path, cfg, log)
    res = fit_and_evaluate(ctx, cfg, "test", log)
    k = ctx["base_config"]["eval_k"]
    report = {"checkpoint": checkpoint_path, "config": cfg, "train_loss": res["train_loss"],
              "rerank_seconds": res["seconds"], "before": res["before"], "after": res["after"],
              "ceiling": res["ceiling"]}
    if ctx["oof"] is not None:
        report["oof_heldout"] = ctx["oof"]["heldout"]
        report["oof_cache"] = ctx["oof"]["path"]
    out = cfg["out"] or os.path.join(os.path.dirname(checkpoint_path), "rerank_report.json")
    with open(out, "w") as f:
        json.dump(report, f, indent=2)
    for name in ("before", "after", "ceiling"):
        m = report[name]
        log(f"test {name:7s}: i2t R@1 {m['i2t_r1']:.1f} R@5 {m['i2t_r5']:.1f} R@10 {m['i2t_r10']:.1f} | "
            f"t2i R@1 {m['t2i_r1']:.1f} R@5 {m['t2i_r5']:.1f} R@10 {m['t2i_r10']:.1f} | rsum {m['rsum']:.1f} | "
            f"NDCG@{k} {m[f'ndcg@{k}']:.4f}")
    log(f"re-ranked {res['n_queries']} queries in {res['seconds']:.2f} s; wrote {out}")
    return report


def main(argv=None):
    from .config import CONFIG_DIR, load_config
    p = argparse.ArgumentParser(prog="python -m itr_kernels.app.rerank", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a train.py checkpoint, e.g. runs/listwise/best.pt")
    p.add_argument("--config", default=None, help="YAML overriding configs/rerank.yaml")
    p.add_argument("overrides", nargs="*", help="key=value")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides, defaults=os.path.join(CONFIG_DIR, "rerank.yaml"))
        return run(a.checkpoint, cfg)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"rerank: error: {e}")


if __name__ == "__main__":
    from itr_kernels.app import rerank_main  # checks the `train` extra first: a message, not a traceback

    rerank_main()
