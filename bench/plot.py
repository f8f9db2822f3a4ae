"""Plots a CSV of bench/compare.py: per loss, median time and peak extra memory against B (Q = N = B),
fused / eager / compiled, log-log. Sizes an implementation could not run (out of memory, skipped) are
marked on the top edge of the time panel with an x.

    python bench/plot.py bench/results/cpu_AMD_EPYC_2threads.csv      # writes the .png beside it
    python bench/plot.py results.csv --pass fwd --out fwd.png

Needs matplotlib (part of the `train` extra: requirements-train.txt).
"""
import argparse
import csv
import math
import os
from collections import defaultdict

# colour, marker, marker size: the later, smaller markers stay visible where points coincide
IMPL_STYLE = {"eager": ("tab:blue", "s", 8), "compiled": ("tab:orange", "^", 7), "fused": ("tab:green", "o", 5)}
# A peak of 0 MiB (nothing allocated beyond the outputs) has no place on a log axis: drawn here.
MEM_FLOOR_MIB = 0.01


def number(text):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def load(path, pass_, dtype):
    """{case: {impl: [(B, ms or None, MiB or None, status)]}} for one pass and dtype, sorted by B."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["pass_"] == pass_ and r["dtype"] == dtype]
    data = defaultdict(lambda: defaultdict(list))
    for r in rows:
        data[r["case"]][r["impl"]].append((int(r["B"]), number(r["median_ms"]), number(r["peak_extra_MiB"]),
                                           r["status"]))
    for impls in data.values():
        for points in impls.values():
            points.sort()
    return data


def plot(data, title, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(data)
    fig, axes = plt.subplots(len(cases), 2, figsize=(10, 2.8 * len(cases)), squeeze=False)
    for row, case in enumerate(cases):
        t_ax, m_ax = axes[row]
        sizes = sorted({b for points in data[case].values() for b, *_ in points})
        for impl in [i for i in IMPL_STYLE if i in data[case]] + [i for i in data[case] if i not in IMPL_STYLE]:
            color, marker, size = IMPL_STYLE.get(impl, ("tab:gray", "d", 5))
            points = data[case][impl]
            ok = [(b, ms, mib) for b, ms, mib, status in points if status == "ok" and ms is not None]
            if ok:
                t_ax.plot([p[0] for p in ok], [p[1] for p in ok], color=color, marker=marker, ms=size, label=impl)
                mem = [(b, max(mib, MEM_FLOOR_MIB)) for b, _, mib in ok if mib is not None]
                m_ax.plot([p[0] for p in mem], [p[1] for p in mem], color=color, marker=marker, ms=size, label=impl)
            failed = [b for b, ms, _, status in points if status != "ok" or ms is None]
            if failed:  # on the top edge, in axes coordinates vertically
                t_ax.plot(failed, [0.97] * len(failed), color=color, marker="x", linestyle="none",
                          transform=t_ax.get_xaxis_transform(), ms=8, label=f"{impl}: not run (memory)")
        for ax, what in ((t_ax, "median time (ms)"), (m_ax, "peak extra memory (MiB)")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(sizes, [str(b) for b in sizes])
            ax.minorticks_off()
            ax.set_xlabel("B (scores B x B)")
            ax.set_ylabel(what, fontsize=9)
            ax.grid(True, which="major", alpha=0.3)
            ax.set_title(case, fontsize=10)
    handles = {}
    for ax in axes[:, 0]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.suptitle(f"{title}; a peak of 0 MiB is drawn at {MEM_FLOOR_MIB}")
    fig.tight_layout(rect=(0, 0, 1, 0.97 - 0.12 / len(cases)))
    fig.legend(handles.values(), handles.keys(), loc="upper center", ncol=min(len(handles), 5), fontsize=8,
               bbox_to_anchor=(0.5, 0.985 - 0.08 / len(cases)))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", help="a CSV written by bench/compare.py")
    p.add_argument("--pass", dest="pass_", default="fwd+bwd", choices=["fwd", "bwd", "fwd+bwd"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--out", default=None, help="PNG path (default: the CSV's, with .png)")
    args = p.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("bench/plot.py needs matplotlib: pip install matplotlib (or the `train` extra)")
    data = load(args.csv, args.pass_, args.dtype)
    if not data:
        raise SystemExit(f"no {args.pass_} {args.dtype} rows in {args.csv}")
    out = args.out or os.path.splitext(args.csv)[0] + ".png"
    device = os.path.splitext(os.path.basename(args.csv))[0]
    plot(data, f"{device}: {args.pass_}, {args.dtype}", out)
    print(out)


if __name__ == "__main__":
    main()
