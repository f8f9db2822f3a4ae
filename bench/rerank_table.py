"""LeaPRR on the models of bench/train_table.py: R@K, rsum and NDCG@10 on the test split before
and after re-ranking, mean ± std over seeds. Writes one CSV row per run and prints a Markdown
table (the README's).

    python bench/train_table.py --losses listwise      # the base models: runs/table/listwise_seed*/
    python bench/rerank_table.py                       # then re-rank them (train split)
    python bench/rerank_table.py train_split=dev       # or with a re-ranker fit on the dev split
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import rerank  # noqa: E402
from itr_kernels.app.config import CONFIG_DIR, load_config  # noqa: E402
from tables import print_mean_std_table, write_csv  # noqa: E402

KEYS = [("i2t_r1", "R@1 i2t"), ("i2t_r5", "R@5 i2t"), ("i2t_r10", "R@10 i2t"), ("t2i_r1", "R@1 t2i"),
        ("t2i_r5", "R@5 t2i"), ("t2i_r10", "R@10 t2i"), ("rsum", "rsum"), ("ndcg@10", "NDCG@10")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="listwise", help="runs/table/<base>_seed<s>/best.pt")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("overrides", nargs="*", help="key=value of configs/rerank.yaml")
    a = p.parse_args()
    rows = []
    for seed in a.seeds:
        run_dir = os.path.join("runs", "table", f"{a.base}_seed{seed}")
        cfg = load_config(None, a.overrides + [f"seed={seed}"], defaults=os.path.join(CONFIG_DIR, "rerank.yaml"))
        cfg["out"] = os.path.join(run_dir, f"rerank_{cfg['train_split']}.json")
        rep = rerank.run(os.path.join(run_dir, "best.pt"), cfg, log=lambda *_: None)
        for when in ("before", "after"):
            rows.append({"seed": seed, "train_split": cfg["train_split"], "when": when,
                         **{k: rep[when][k] for k, _ in KEYS}})
        print(f"seed {seed}: rsum {rep['before']['rsum']:.1f} -> {rep['after']['rsum']:.1f}", flush=True)
    split = rows[0]["train_split"]
    out = os.path.join(ROOT, "bench", "results", f"rerank_emoji_cpu_{split}.csv")
    write_csv(out, rows)
    by = {when: [r for r in rows if r["when"] == when] for when in ("before", "after")}
    by["change"] = [{k: a_[k] - b_[k] for k, _ in KEYS} for a_, b_ in zip(by["after"], by["before"])]
    print_mean_std_table("", KEYS, by, signed=("change",))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
