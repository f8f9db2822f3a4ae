"""Time LeaPRR re-ranking at the MS-COCO 5K scale: 5,000 image queries against 25,000 captions,
K = 32, from given base similarities (i2t, i2i, t2t; random unit embeddings, 5 captions per image).
Reports the median of a few runs of: neighbour lists and pillars (make_branch), and re-scoring every
query's top-K (apply), with an untrained re-ranker of the default size.

    python bench/rerank_speed.py [--queries 5000] [--captions-per-image 5] [--k 32] [--repeats 3]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from itr_kernels.app import rerank  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=5000)
    p.add_argument("--captions-per-image", type=int, default=5)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(a.queries, 256, generator=g), dim=1)
    txt = img.repeat_interleave(a.captions_per_image, 0)
    txt = torch.nn.functional.normalize(txt + 0.8 * torch.randn(txt.shape, generator=g), dim=1)
    s_it, s_ii, s_tt = img @ txt.T, img @ img.T, txt @ txt.T
    model = rerank.PillarReranker()
    build, score = [], []
    for _ in range(a.repeats + 1):      # the first run warms up
        t0 = time.perf_counter()
        br = rerank.make_branch(s_it, s_ii, s_tt, k=a.k)
        t1 = time.perf_counter()
        rerank.apply(model, br, s_it)
        t2 = time.perf_counter()
        build.append(t1 - t0)
        score.append(t2 - t1)
    b, s = statistics.median(build[1:]), statistics.median(score[1:])
    print(f"{a.queries} queries x {txt.shape[0]} candidates, K = {a.k}, {torch.get_num_threads()} threads: "
          f"neighbour lists {b:.2f} s + re-scoring {s:.2f} s = {b + s:.2f} s (median of {a.repeats})")


if __name__ == "__main__":
    main()
