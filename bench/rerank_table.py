"""LeaPRR on base models trained by train.py: R@K, rsum and NDCG@10 on the test split before and
after re-ranking, and the ceiling (the best re-ordering of the same top-K), mean ± std over seeds,
with the per-seed differences. Writes one CSV row per (seed, row) and prints a Markdown table (the
README's). A base model missing from runs/table/<base-name>_seed<s>/ is trained first (its config:
--base-config plus --base-set overrides, seed = s); the re-ranker's seed is the base model's seed.

    python bench/rerank_table.py                                   # listwise bases, public protocol
    python bench/rerank_table.py folds=5                           # cross-fit (out-of-fold) training sims
    python bench/rerank_table.py --config bench/results/rerank_tuned_listwise.yaml   # dev-tuned (rerank_tune.py)
    python bench/rerank_table.py --base-config configs/triplet.yaml --base-set loss_args.max_violation=false \\
        --base-name triplet_sum folds=5
    python bench/rerank_table.py train_split=dev                   # the re-ranker fit on the dev split
"""
import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import rerank  # noqa: E402
from itr_kernels.app.config import CONFIG_DIR, load_config  # noqa: E402
from tables import print_mean_std_table, write_csv  # noqa: E402

KEYS = [("i2t_r1", "R@1 i2t"), ("i2t_r5", "R@5 i2t"), ("i2t_r10", "R@10 i2t"), ("t2i_r1", "R@1 t2i"),
        ("t2i_r5", "R@5 t2i"), ("t2i_r10", "R@10 t2i"), ("rsum", "rsum"), ("ndcg@10", "NDCG@10")]
WHEN = ("before", "after", "ceiling")


def add_base_args(p):
    p.add_argument("--base-config", default=os.path.join(CONFIG_DIR, "listwise.yaml"),
                   help="train.py config of the base models (default configs/listwise.yaml)")
    p.add_argument("--base-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of the base config (repeatable), e.g. loss_args.max_violation=false")
    p.add_argument("--base-name", default=None,
                   help="runs/table/<base-name>_seed<s>/ (default: the config's name, plus the overrides)")
    p.add_argument("--config", default=None, help="YAML overriding configs/rerank.yaml (e.g. rerank_tune.py's)")


def parse(p):
    """Arguments, with key=value items written after --seeds moved to the overrides."""
    a = p.parse_args()
    a.overrides = a.overrides + [s for s in a.seeds if "=" in s]
    try:
        a.seeds = [int(s) for s in a.seeds if "=" not in s]
    except ValueError as e:
        p.error(f"--seeds: {e}")
    return a


def base_name(a):
    if a.base_name:
        return a.base_name
    name = os.path.splitext(os.path.basename(a.base_config))[0]
    return "_".join([name] + [re.sub(r"[^A-Za-z0-9.]+", "-", s.split(".")[-1]) for s in a.base_set])


def base_checkpoint(a, seed, log=print):
    """runs/table/<name>_seed<seed>/best.pt, trained first when missing; an existing one must come
    from the same config (checkpoint.load refuses another)."""
    from itr_kernels.app import checkpoint, train
    out_dir = os.path.join("runs", "table", f"{base_name(a)}_seed{seed}")
    cfg = load_config(a.base_config, a.base_set + [f"seed={seed}", f"out_dir={out_dir}", "progress=false"])
    path = os.path.join(out_dir, "best.pt")
    if os.path.isfile(path):
        checkpoint.load(path, cfg)
    else:
        log(f"training the base model {out_dir} ...")
        train.run(cfg, log=lambda *_: None)
    return path


def rerank_config(a, seed):
    return load_config(a.config, a.overrides + [f"seed={seed}"], defaults=os.path.join(CONFIG_DIR, "rerank.yaml"))


def protocol_tag(cfg):
    return cfg["train_split"] + (f"_folds{cfg['folds']}" if cfg["folds"] else "")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_base_args(p)
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"])
    p.add_argument("--label", default="", help="appended to the CSV name (a variant of the same protocol)")
    p.add_argument("overrides", nargs="*", help="key=value of configs/rerank.yaml")
    a = parse(p)
    name = base_name(a)
    rows = []
    for seed in a.seeds:
        ckpt = base_checkpoint(a, seed)
        cfg = rerank_config(a, seed)
        tag = protocol_tag(cfg) + (f"_{a.label}" if a.label else "")
        cfg["out"] = os.path.join(os.path.dirname(ckpt), f"rerank_{tag}.json")
        rep = rerank.run(ckpt, cfg, log=lambda *_: None)
        for when in WHEN:
            rows.append({"base": name, "seed": seed, "protocol": tag, "when": when,
                         **{k: rep[when][k] for k, _ in KEYS}})
        b, af, c = (rep[w] for w in WHEN)
        print(f"seed {seed}: rsum {b['rsum']:.1f} -> {af['rsum']:.1f} ({af['rsum'] - b['rsum']:+.1f}; ceiling "
              f"{c['rsum']:.1f}), NDCG@10 {b['ndcg@10']:.4f} -> {af['ndcg@10']:.4f} "
              f"({af['ndcg@10'] - b['ndcg@10']:+.4f}; ceiling {c['ndcg@10']:.4f})", flush=True)
    out = os.path.join(ROOT, "bench", "results", f"rerank_emoji_cpu_{name}_{rows[0]['protocol']}.csv")
    write_csv(out, rows)
    by = {when: [r for r in rows if r["when"] == when] for when in WHEN}
    by["change"] = [{k: a_[k] - b_[k] for k, _ in KEYS} for a_, b_ in zip(by["after"], by["before"])]
    print_mean_std_table(f"{name}, {rows[0]['protocol']}", KEYS, by, signed=("change",))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
