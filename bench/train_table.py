"""Triplet vs listwise vs BCLS with train.py on the same data, mean ± std over seeds: the test
split's R@1/5/10 both ways, rsum, NDCG@10 and Kendall tau. Writes one CSV row per run and prints a
Markdown table (the README's).

    python bench/train_table.py                       # embedded emoji data, seeds 0 1 2
    python bench/train_table.py --seeds 0 1 2 3 4 data=/path/to/f30k_precomp
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import train  # noqa: E402
from itr_kernels.app.config import load_config  # noqa: E402
from tables import print_mean_std_table, write_csv  # noqa: E402

COLUMNS = [("i2t_r1", "R@1 i2t"), ("i2t_r5", "R@5 i2t"), ("i2t_r10", "R@10 i2t"), ("t2i_r1", "R@1 t2i"),
           ("t2i_r5", "R@5 t2i"), ("t2i_r10", "R@10 t2i"), ("rsum", "rsum"), ("ndcg@10", "NDCG@10"),
           ("kendall_tau", "Kendall τ")]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", default=["triplet", "listwise", "bcls"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_emoji_cpu.csv"))
    p.add_argument("overrides", nargs="*", help="key=value for every run")
    a = p.parse_args()
    rows = []
    for loss in a.losses:
        for seed in a.seeds:
            cfg = load_config(os.path.join(ROOT, "configs", f"{loss}.yaml"),
                              a.overrides + [f"seed={seed}", f"out_dir=runs/table/{loss}_seed{seed}", "progress=false"])
            test = train.run(cfg, log=lambda *_: None)["test"]
            rows.append({"loss": loss, "seed": seed, **{k: test[k] for k, _ in COLUMNS}})
            print(f"{loss} seed {seed}: rsum {test['rsum']:.1f}  NDCG@10 {test['ndcg@10']:.4f}", flush=True)
    write_csv(a.out, rows)
    print_mean_std_table("loss", COLUMNS, {loss: [r for r in rows if r["loss"] == loss] for loss in a.losses})
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
