"""Tune LeaPRR on the dev split, never on the test split: a small coordinate search over the
InfoNCE temperature, K (k_i2t, k_t2i) and the loss weights (STAGES: extend it for a larger budget,
e.g. the margin), each stage
keeping the setting with the best mean dev rsum (ties: dev NDCG@10) over the given seeds' base
models. The training similarities follow the protocol of the overrides (e.g. folds=5), prepared once
per seed (out-of-fold similarities come from their cache). Writes every trial to a CSV and the
chosen keys to bench/results/rerank_tuned_<base-name>.yaml, which rerank_table.py reads with --config.

    python bench/rerank_tune.py folds=5                      # listwise base, seed 0
    python bench/rerank_tune.py --base-config configs/triplet.yaml --base-set loss_args.max_violation=false \\
        --base-name triplet_sum folds=5
"""
import argparse
import csv
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import rerank  # noqa: E402
from rerank_table import add_base_args, base_checkpoint, base_name, parse, protocol_tag, rerank_config  # noqa: E402

# Each stage: the values tried for its keys, besides the incumbent.
# A small budget (one re-ranker fit takes minutes on a 2-core CPU): 6 fits from the defaults
# (t 2, K 32 / 8, align_weight 1, margin 0.2). K 10 for i2t cannot move a match out of the top 10.
STAGES = [
    ("nce_temperature", [{"nce_temperature": t} for t in (0.1, 0.05)]),
    ("K", [{"k_i2t": a, "k_t2i": b} for a, b in ((10, 10), (10, 5))]),
    ("loss weights", [{"align_weight": 0.0}]),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_base_args(p)
    p.add_argument("--seeds", nargs="+", default=["0"], help="base models whose mean dev rsum decides")
    p.add_argument("overrides", nargs="*", help="key=value of configs/rerank.yaml (the protocol: folds, train_split)")
    a = parse(p)
    name = base_name(a)
    base = {s: rerank_config(a, s) for s in a.seeds}
    ctx = {s: rerank.prepare(base_checkpoint(a, s), base[s], log=lambda *_: None) for s in a.seeds}
    tried, rows = {}, []

    def score(setting):
        key = tuple(sorted(setting.items()))
        if key not in tried:
            res = [rerank.fit_and_evaluate(ctx[s], dict(base[s], **setting), "dev", log=lambda *_: None)
                   for s in a.seeds]
            mean = lambda when, k: statistics.mean(r[when][k] for r in res)  # noqa: E731
            tried[key] = (mean("after", "rsum"), mean("after", "ndcg@10"))
            rows.append({**setting, **{f"{w}_{k}": mean(w, k) for w in ("before", "after", "ceiling")
                                       for k in ("rsum", "ndcg@10")}})
            r = rows[-1]
            print(f"{setting}: dev rsum {r['before_rsum']:.1f} -> {r['after_rsum']:.1f} (ceiling "
                  f"{r['ceiling_rsum']:.1f}), NDCG@10 {r['before_ndcg@10']:.4f} -> {r['after_ndcg@10']:.4f}",
                  flush=True)
        return tried[key]

    best = {k: base[a.seeds[0]][k] for k in ("nce_temperature", "k_i2t", "k_t2i", "align_weight", "margin")}
    for stage, candidates in STAGES:
        best = max([best] + [{**best, **c} for c in candidates], key=score)   # max keeps the first of ties
        print(f"after the {stage} stage: {best}", flush=True)
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    tag = protocol_tag(base[a.seeds[0]])
    out_csv = os.path.join(ROOT, "bench", "results", f"rerank_tune_{name}_{tag}.csv")
    fields = sorted({k for r in rows for k in r}, key=lambda k: (k.startswith(("before", "after", "ceiling")), k))
    with open(out_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    out_yaml = os.path.join(ROOT, "bench", "results", f"rerank_tuned_{name}.yaml")
    protocol = {k: base[a.seeds[0]][k] for k in ("folds", "train_split")}
    with open(out_yaml, "w") as f:
        f.write(f"# chosen on dev rsum by bench/rerank_tune.py (base {name}, seeds {a.seeds}, "
                f"{len(rows)} trials: {os.path.relpath(out_csv, ROOT)})\n")
        for k, v in {**protocol, **best}.items():
            f.write(f"{k}: {v}\n")
    print(f"\nchosen: {best} (dev rsum {tried[tuple(sorted(best.items()))][0]:.1f})\nwrote {out_csv} and {out_yaml}")


if __name__ == "__main__":
    main()
