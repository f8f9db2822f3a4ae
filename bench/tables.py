"""The CSV and the Markdown mean ± std table shared by bench/train_table.py and bench/rerank_table.py."""
import csv
import os
import statistics


def write_csv(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def print_mean_std_table(corner, columns, groups, signed=()):
    """One row per group (label -> list of per-run dicts), one "mean ± std" cell per (key, name)
    column; NDCG and Kendall tau with 4 decimals, the rest with 1; a group named in `signed` shows
    a + on non-negative means (differences)."""
    print(f"\n| {corner} | " + " | ".join(name for _, name in columns) + " |")
    print("| --- |" + " ---: |" * len(columns))
    for label, runs in groups.items():
        cells = []
        for key, _ in columns:
            v = [r[key] for r in runs]
            digits = 4 if key.startswith(("ndcg", "kendall")) else 1
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            sign = "+" if label in signed and statistics.mean(v) >= 0 else ""
            cells.append(f"{sign}{statistics.mean(v):.{digits}f} ± {sd:.{digits}f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
