"""The field's precomputed format (SCAN / VSE++): `{split}_ims.npy` holds `N x D` (or
`N x regions x D`) image features and `{split}_caps.txt` one caption a line, `m` per image, in
image order. `m` is read from the data (captions / images), never assumed."""
import os
from dataclasses import dataclass

import numpy as np


@dataclass
class PrecompSplit:
    images: np.ndarray          # (N, D) or (N, regions, D) float32
    captions: list              # N * m strings; caption j belongs to image j // m
    m: int
    root: str = ""
    split: str = ""

    @property
    def n_images(self):
        return self.images.shape[0]

    def caption_owner(self):
        return np.arange(len(self.captions)) // self.m

    def pooled(self):
        """(N, D) features: regions averaged when there are regions."""
        return self.images.mean(axis=1) if self.images.ndim == 3 else self.images


def split_paths(root, split):
    return os.path.join(root, f"{split}_ims.npy"), os.path.join(root, f"{split}_caps.txt")


def load_split(root, split):
    """Load one split, checking everything a truncated or mismatched download gets wrong."""
    ims_path, caps_path = split_paths(root, split)
    for p in (ims_path, caps_path):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"{p}: missing; a precomputed split needs {split}_ims.npy and {split}_caps.txt "
                                    f"in {root!r}")
    try:
        images = np.load(ims_path, mmap_mode="r")
    except (ValueError, OSError, EOFError) as e:
        raise ValueError(f"{ims_path}: not a readable .npy file (truncated or corrupt?): {e}") from None
    if images.ndim not in (2, 3) or images.shape[0] == 0:
        raise ValueError(f"{ims_path}: expected N x D or N x regions x D features, got shape {images.shape}")
    expected = int(np.prod(images.shape)) * images.dtype.itemsize
    if os.path.getsize(ims_path) < expected:
        raise ValueError(f"{ims_path}: truncated ({os.path.getsize(ims_path)} bytes for shape {images.shape})")
    images = np.array(images, dtype=np.float32)   # a copy: read fully, writable
    if not np.isfinite(images).all():
        raise ValueError(f"{ims_path}: features contain NaN or infinity")
    with open(caps_path, encoding="utf-8") as f:
        captions = [line.rstrip("\n") for line in f]
    if captions and captions[-1] == "":
        captions.pop()
    n = images.shape[0]
    if len(captions) == 0 or len(captions) % n:
        raise ValueError(f"feature/caption count mismatch in {root!r} ({split}): {n} images in {ims_path} but "
                         f"{len(captions)} captions in {caps_path}; expected m captions per image (a multiple of {n})")
    empty = [i + 1 for i, c in enumerate(captions) if not c.strip()]
    if empty:
        raise ValueError(f"{caps_path}: empty caption on line(s) {empty[:5]}")
    return PrecompSplit(images, captions, len(captions) // n, root, split)


def write_split(root, split, images, captions):
    """Write one split in the standard format (atomically: a half-written split never loads)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim not in (2, 3) or len(captions) % images.shape[0]:
        raise ValueError(f"write_split: {len(captions)} captions is not a multiple of {images.shape[0]} images")
    if any("\n" in c or not c.strip() for c in captions):
        raise ValueError("write_split: captions must be non-empty single lines")
    os.makedirs(root, exist_ok=True)
    ims_path, caps_path = split_paths(root, split)
    with open(ims_path + ".tmp", "wb") as f:
        np.save(f, images)
    with open(caps_path + ".tmp", "w", encoding="utf-8") as f:
        f.write("".join(c + "\n" for c in captions))
    os.replace(ims_path + ".tmp", ims_path)
    os.replace(caps_path + ".tmp", caps_path)
