"""The training device and the three splits of a configured data set on it, as train.py and
the re-ranker use them."""
import os

import torch

from .precomp import load_split
from .text import caption_encoder, encode_captions, rsc_relevance


def pick_device(name):
    """"auto", "cpu", "cuda" or "cuda:N"; under torchrun a process takes the GPU of its LOCAL_RANK."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here")
    if dev.type == "cuda" and "LOCAL_RANK" in os.environ:     # torchrun: one GPU per process
        dev = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(dev)
    return dev


class Split:
    """One split on the training device: image features, caption features, caption owners and
    (lazily, for evaluation) the full RSC relevance."""

    def __init__(self, data, text_feats, device):
        self.m = data.m
        self.images = torch.from_numpy(data.images).to(device)   # load_split made a contiguous copy
        self.texts = torch.from_numpy(text_feats).to(device)
        self.owner = torch.from_numpy(data.caption_owner()).to(device)
        self.n_images = data.n_images
        self._relevance = None

    def subset(self, image_idx):
        """The split of only the images `image_idx` (in that order) and their captions, renumbered
        as a split of its own: what cross-fitting trains on and scores."""
        idx = torch.as_tensor(image_idx, dtype=torch.long, device=self.images.device)
        out = Split.__new__(Split)
        out.m, out.n_images, out._relevance = self.m, len(idx), None
        out.images = self.images[idx]
        out.texts = self.texts[(idx[:, None] * self.m + torch.arange(self.m, device=idx.device)).reshape(-1)]
        out.owner = torch.arange(len(idx) * self.m, device=idx.device) // self.m
        return out

    def relevance(self):
        if self._relevance is None:
            self._relevance = rsc_relevance(self.texts, self.m)
        return self._relevance


def load_data(cfg, device, log):
    if cfg["data"] == "emoji":
        from .emoji import build_emoji
        root = build_emoji(cfg["data_root"], progress=cfg["progress"])
    else:
        root = cfg["data"]
    raw = {s: load_split(root, s) for s in ("train", "dev", "test")}
    if len({d.images.shape[1:] for d in raw.values()}) != 1:
        raise ValueError(f"{root}: the splits' image features differ in shape: "
                         f"{ {s: d.images.shape for s, d in raw.items()} }")
    encoder = caption_encoder(cfg["text_encoder"], raw["train"].captions)
    cache = os.path.join(root, "cache")
    splits = {s: Split(d, encode_captions(encoder, d.captions, cache, s), device) for s, d in raw.items()}
    log(f"data {root}: " + ", ".join(f"{s} {d.n_images} images x {d.m} captions" for s, d in splits.items())
        + f"; image features {tuple(raw['train'].images.shape[1:])}, text {cfg['text_encoder']} "
          f"{splits['train'].texts.shape[1]}-d")
    return splits
