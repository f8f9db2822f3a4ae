"""Strong baselines and a fair comparison: every loss tuned with the same budget, then compared on
the test split over seeds.

    python bench/tune.py                                     # everything: 12 losses x 16 trials, 3 seeds
    python bench/tune.py --trials 2 --seeds 0 --losses infonce triplet epochs=2   # a smoke test
    OMP_NUM_THREADS=1 python bench/tune.py --jobs 2 num_threads=1   # 2 single-thread runs at once
    python bench/tune.py --from-csv                          # the tables again from the CSVs, no training

Protocol:
  1. Search, per loss, the same budget: `--trials` runs (default 16) of train.py at `--tune-seed`
     (default 100, none of the final seeds). Trial 0 is the config as shipped (configs/LOSS.yaml);
     trials 1.. are a fixed scrambled-Sobol sample (torch.quasirandom, seed 0: the same points on
     every re-run) over lr (log-uniform 1e-4 to 3e-3) and the loss's own knobs (SPACES below: margin,
     temperature, weight or mu, tau, k, the Kendall margin, the max-violation warm-up). A loss with
     more knobs gets the same number of trials, so a sparser search.
  2. Score each trial on the DEV split only: the dev rsum of its best epoch (the checkpoint train.py
     keeps). Dev NDCG@10 only breaks exact ties of dev rsum; the test split is never evaluated in
     a trial (train.run(test=False)).
  3. Run the chosen settings over `--seeds` (default 0 1 2) and report the test split; run each
     shipped config over the same seeds (the default-settings table). A run whose config equals one
     already done is not run again (the CPU runs are deterministic).
  4. For each continuous-label combination, the paired per-seed difference against its own base
     (same seed: same initialisation and batches) in test rsum, NDCG@10 and Kendall tau, mean ± std
     over seeds; and every loss against the strongest pairwise base, the one whose chosen trial has
     the best dev rsum (picked on dev, never on test). A difference is marked "(noise)" when
     |mean| < 2 x std of the paired differences (with 3 seeds, a two-sided paired t-test at
     p ~ 0.07 draws about the same line).

Writes bench/results/tune_trials_<data>_<device>.csv (one row per trial, dev metrics) and
tune_final_<data>_<device>.csv (one row per final run, test metrics, settings "tuned" or "default"),
and prints the Markdown tables: the chosen settings, the tuned table, the default-settings table
and the paired differences. `key=value` arguments apply to every run (e.g. epochs=2, data=PATH).
"""
import argparse
import csv
import concurrent.futures
import json
import multiprocessing
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import train  # noqa: E402
from itr_kernels.app.config import load_config  # noqa: E402
from tables import print_mean_std_table, write_csv  # noqa: E402
from train_table import COLUMNS  # noqa: E402

# loss -> (its base loss, for the paired differences; None for a pairwise loss)
LOSSES = {"triplet": None, "triplet_sum": None, "triplet_sn": None, "infonce": None,
          "listwise": "triplet", "triplet_kendall": "triplet",
          "triplet_sum_sndcg": "triplet_sum", "triplet_sum_kendall": "triplet_sum",
          "triplet_sn_sndcg": "triplet_sn", "bcls": "triplet_sn",
          "infonce_sndcg": "infonce", "infonce_kendall": "infonce"}
# Search dimensions: key (top-level config key, or loss_args.NAME) -> (kind, low, high | choices).
LR = {"lr": ("log", 1e-4, 3e-3)}
MARGIN = {"loss_args.margin": ("lin", 0.05, 0.4)}
WARMUP = {"max_violation_warmup_epochs": ("choice", [0, 1, 2, 3])}
SN = {"loss_args.margin": ("lin", 0.05, 0.4), "loss_args.temperature": ("log", 0.003, 0.1)}
NCE = {"loss_args.temperature": ("log", 0.01, 0.2)}
SNDCG = {"loss_args.weight": ("lin", 0.1, 0.9), "loss_args.tau": ("log", 0.003, 0.1),
         "loss_args.k": ("choice", [None, 10, 32])}
KENDALL = {"loss_args.weight": ("log", 0.1, 10.0), "loss_args.kendall_margin": ("lin", 0.0, 0.2)}
BCLS_TERM = {"loss_args.mu": ("log", 0.1, 10.0), "loss_args.kendall_margin": ("lin", 0.0, 0.2)}
SPACES = {"triplet": {**LR, **MARGIN, **WARMUP}, "triplet_sum": {**LR, **MARGIN}, "triplet_sn": {**LR, **SN},
          "infonce": {**LR, **NCE},
          "listwise": {**LR, **MARGIN, **WARMUP, **SNDCG}, "triplet_kendall": {**LR, **MARGIN, **WARMUP, **KENDALL},
          "triplet_sum_sndcg": {**LR, **MARGIN, **SNDCG}, "triplet_sum_kendall": {**LR, **MARGIN, **KENDALL},
          "triplet_sn_sndcg": {**LR, **SN, **SNDCG}, "bcls": {**LR, **SN, **BCLS_TERM},
          "infonce_sndcg": {**LR, **NCE, **SNDCG}, "infonce_kendall": {**LR, **NCE, **KENDALL}}
DIFF_COLUMNS = [("rsum", "Δ rsum"), ("ndcg@10", "Δ NDCG@10"), ("kendall_tau", "Δ Kendall τ")]


def settings(space, u):
    """The point u in [0, 1)^d of the unit cube as config overrides {key: value}."""
    out = {}
    for (key, (kind, *rng)), x in zip(space.items(), u):
        if kind == "log":
            out[key] = float(f"{rng[0] * (rng[1] / rng[0]) ** x:.3g}")
        elif kind == "lin":
            out[key] = float(f"{rng[0] + (rng[1] - rng[0]) * x:.3g}")
        else:
            out[key] = rng[0][min(int(x * len(rng[0])), len(rng[0]) - 1)]
    return out


def trial_settings(loss, trials):
    """Trial 0: the config as shipped ({}); trials 1..: scrambled Sobol points, the same each run."""
    space = SPACES[loss]
    if trials == 1:
        return [{}]
    points = torch.quasirandom.SobolEngine(len(space), scramble=True, seed=0).draw(trials - 1, dtype=torch.float64)
    return [{}] + [settings(space, p.tolist()) for p in points]


def overrides(s):
    return [f"{k}={'null' if v is None else v}" for k, v in s.items()]


def _train(cfg, test):
    """One training run (module level: a worker process of --jobs calls it)."""
    t0 = time.perf_counter()
    report = train.run(cfg, log=lambda *_: None, test=test)
    return dict(report, seconds=time.perf_counter() - t0)


class Runner:
    """train.run with a memo over configs (out_dir aside): a config already run is not run again.
    `jobs` > 1 runs that many trainings at once in worker processes."""

    def __init__(self, common, jobs=1):
        self.common, self.memo, self.jobs = common, {}, jobs

    def config(self, loss, s, seed, out_dir):
        path = os.path.join(ROOT, "configs", f"{loss}.yaml")
        return load_config(path, self.common + overrides(s) + [f"seed={seed}", f"out_dir={out_dir}",
                                                               "progress=false", "tensorboard=false"])

    @staticmethod
    def key(cfg):
        return json.dumps({k: v for k, v in cfg.items() if k != "out_dir"}, sort_keys=True)

    def many(self, cfgs, test, done=lambda i, report: None):
        """The reports of cfgs, in order; done(i, report) is called as each one is known."""
        todo = {}   # memo key -> indices of cfgs that ask for it
        for i, cfg in enumerate(cfgs):
            k = self.key(cfg)
            if (k, test) in self.memo:
                done(i, self.memo[k, test])
            else:
                todo.setdefault(k, []).append(i)

        def finish(k, report):
            self.memo[k, test] = report
            if test:   # a test run also answers the dev question
                self.memo[k, False] = report
            for i in todo[k]:
                done(i, report)

        if self.jobs <= 1:
            for k, idx in todo.items():
                finish(k, _train(cfgs[idx[0]], test))
        else:
            # spawn: a fresh interpreter per worker (no forked OpenMP / torch thread state)
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(self.jobs, mp_context=ctx) as pool:
                futures = {pool.submit(_train, cfgs[idx[0]], test): k for k, idx in todo.items()}
                for f in concurrent.futures.as_completed(futures):
                    finish(futures[f], f.result())
        return [self.memo[self.key(cfg), test] for cfg in cfgs]


def choose(rows):
    """The best trial: highest dev rsum, then dev NDCG@10 on an exact tie, then the earlier trial."""
    return max(rows, key=lambda r: (r["dev_rsum"], r["dev_ndcg@10"], -r["trial"]))


def print_differences(title, pairs, final, kind, seeds):
    """One row per (loss, base) pair: loss − base on the same seed, mean ± std over the seeds."""
    print(f"\n{title}: same seed, mean ± std over {len(seeds)} seed(s) of the {kind} settings; "
          f"(noise): |mean| < 2 × std of the differences")
    print("\n| loss | base | " + " | ".join(name for _, name in DIFF_COLUMNS) + " |")
    print("| --- | --- |" + " ---: |" * len(DIFF_COLUMNS))
    runs = {(r["loss"], r["seed"]): r for r in final if r["settings"] == kind}
    for loss, base in pairs:
        if any((base, s) not in runs for s in seeds):
            print(f"| {loss} | {base} | " + " | ".join("base not run" for _ in DIFF_COLUMNS) + " |")
            continue
        cells = []
        for key, _ in DIFF_COLUMNS:
            d = [runs[loss, s][key] - runs[base, s][key] for s in seeds]
            digits = 4 if key.startswith(("ndcg", "kendall")) else 1
            mean = statistics.mean(d)
            if len(d) < 2:
                cells.append(f"{mean:+.{digits}f} (1 seed)")
                continue
            sd = statistics.stdev(d)
            cells.append(f"{mean:+.{digits}f} ± {sd:.{digits}f}" + (" (noise)" if abs(mean) < 2 * sd else ""))
        print(f"| {loss} | {base} | " + " | ".join(cells) + " |")


def report(losses, seeds, trials, tune_seed, chosen, final):
    """The Markdown tables of the README, from the trial rows' choices and the final runs."""
    print(f"\nChosen settings ({trials} trial(s) per loss, seed {tune_seed}, by dev rsum):")
    print("\n| loss | trial | dev rsum | dev NDCG@10 | lr | warm-up | loss_args |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for loss in losses:
        c = chosen[loss]
        print(f"| {loss} | {c['trial']} | {c['dev_rsum']:.1f} | {c['dev_ndcg@10']:.4f} | {c['lr']:.3g} | "
              f"{c['max_violation_warmup_epochs']} | `{c['loss_args']}` |")
    for kind, title in (("tuned", "Tuned settings"), ("default", "Settings as shipped (configs/LOSS.yaml)")):
        print(f"\n{title}: test split, mean ± std over seeds {' '.join(map(str, seeds))}")
        print_mean_std_table("loss", COLUMNS, {loss: [r for r in final if r["loss"] == loss and r["settings"] == kind]
                                               for loss in losses})
    own = [(loss, LOSSES[loss]) for loss in losses if LOSSES[loss] is not None]
    for kind in ("tuned", "default"):
        print_differences(f"Paired differences, each combination − its own base", own, final, kind, seeds)
    # The strongest pairwise base is picked on dev (its chosen trial's dev rsum), never on test.
    bases = [loss for loss in losses if LOSSES[loss] is None]
    if bases:
        best = max(bases, key=lambda b: (chosen[b]["dev_rsum"], chosen[b]["dev_ndcg@10"]))
        print_differences(f"Paired differences, each loss − the strongest pairwise base by dev rsum ({best})",
                          [(loss, best) for loss in losses if loss != best], final, "tuned", seeds)


def read_csv(path):
    """Rows of a CSV this script wrote, numbers as numbers."""
    def value(v):
        for t in (int, float):
            try:
                return t(v)
            except ValueError:
                pass
        return v
    with open(path, newline="") as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--losses", nargs="+", default=list(LOSSES), metavar="LOSS",
                   help=f"losses to tune (default: all): {' '.join(LOSSES)}")
    p.add_argument("--trials", type=int, default=16, help="trials per loss, the shipped config included")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], help="seeds of the final test runs")
    p.add_argument("--tune-seed", type=int, default=100, help="seed of every trial")
    p.add_argument("--results", default=os.path.join(ROOT, "bench", "results"))
    p.add_argument("--runs", default="runs/tune", help="out_dir root of the training runs")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings at once, each in its own process (give num_threads=1 with jobs = cores)")
    p.add_argument("--from-csv", action="store_true",
                   help="train nothing: print the tables again from the CSVs of an earlier run in --results")
    p.add_argument("overrides", nargs="*", help="key=value for every run (e.g. epochs=2)")
    a = p.parse_args()
    # key=value items right after --losses or --seeds are overrides (nargs="+" takes them)
    for name in ("losses", "seeds"):
        a.overrides += [x for x in getattr(a, name) if "=" in x]
        setattr(a, name, [x for x in getattr(a, name) if "=" not in x])
    unknown = [x for x in a.losses if x not in LOSSES]
    if unknown or not a.losses:
        p.error(f"--losses: unknown {unknown}; choose from {' '.join(LOSSES)}")
    try:
        a.seeds = [int(x) for x in a.seeds]
    except ValueError:
        p.error(f"--seeds must be integers, got {a.seeds}")
    if a.trials < 1:
        p.error("--trials must be >= 1")
    if a.jobs < 1:
        p.error("--jobs must be >= 1")
    run = Runner(a.overrides, a.jobs)
    probe = run.config(a.losses[0], {}, 0, a.runs)
    tag = f"{os.path.basename(str(probe['data']).rstrip('/'))}_{train.pick_device(probe['device']).type}"
    trials_csv = os.path.join(a.results, f"tune_trials_{tag}.csv")
    final_csv = os.path.join(a.results, f"tune_final_{tag}.csv")
    if a.from_csv:
        trial_rows, final = read_csv(trials_csv), read_csv(final_csv)
        losses = [loss for loss in LOSSES if any(r["loss"] == loss for r in trial_rows)]
        seeds = sorted({r["seed"] for r in final})
        trials = max(sum(r["loss"] == loss for r in trial_rows) for loss in losses)
        chosen = {loss: choose([r for r in trial_rows if r["loss"] == loss]) for loss in losses}
        report(losses, seeds, trials, trial_rows[0]["seed"], chosen, final)
        return

    # 1. every trial of every loss (dev only), 2. the chosen and the shipped settings over the seeds (test)
    todo = [(loss, t, s) for loss in a.losses for t, s in enumerate(trial_settings(loss, a.trials))]
    cfgs = [run.config(loss, s, a.tune_seed, f"{a.runs}/{loss}/trial{t}") for loss, t, s in todo]
    trial_rows = [None] * len(todo)

    def trial_done(i, rep):
        (loss, t, s), cfg = todo[i], cfgs[i]
        trial_rows[i] = {"loss": loss, "trial": t, "seed": a.tune_seed, "settings": json.dumps(s),
                         "lr": cfg["lr"], "loss_args": json.dumps(cfg["loss_args"]),
                         "max_violation_warmup_epochs": cfg["max_violation_warmup_epochs"],
                         "best_epoch": rep["best_epoch"], "dev_rsum": rep["dev"]["rsum"],
                         "dev_ndcg@10": rep["dev"]["ndcg@10"], "seconds": round(rep["seconds"], 1)}
        print(f"{loss} trial {t}: dev rsum {trial_rows[i]['dev_rsum']:.1f}  NDCG@10 "
              f"{trial_rows[i]['dev_ndcg@10']:.4f}  {s or '(as shipped)'}", flush=True)
        write_csv(trials_csv, [r for r in trial_rows if r])   # after each trial: an interrupted run keeps its rows

    run.many(cfgs, test=False, done=trial_done)
    chosen = {loss: choose([r for r in trial_rows if r["loss"] == loss]) for loss in a.losses}

    finals = [(kind, loss, seed) for kind in ("tuned", "default") for loss in a.losses for seed in a.seeds]
    cfgs = [run.config(loss, json.loads(chosen[loss]["settings"]) if kind == "tuned" else {}, seed,
                       f"{a.runs}/{loss}/{kind}_seed{seed}") for kind, loss, seed in finals]
    final = [None] * len(finals)

    def final_done(i, rep):
        (kind, loss, seed), cfg = finals[i], cfgs[i]
        final[i] = {"loss": loss, "settings": kind, "seed": seed, "lr": cfg["lr"],
                    "loss_args": json.dumps(cfg["loss_args"]),
                    "max_violation_warmup_epochs": cfg["max_violation_warmup_epochs"],
                    "best_epoch": rep["best_epoch"], **{k: rep["test"][k] for k, _ in COLUMNS}}
        print(f"{loss} {kind} seed {seed}: test rsum {final[i]['rsum']:.1f}  NDCG@10 {final[i]['ndcg@10']:.4f}",
              flush=True)
        write_csv(final_csv, [r for r in final if r])

    run.many(cfgs, test=True, done=final_done)

    report(a.losses, a.seeds, a.trials, a.tune_seed, chosen, final)
    print(f"\nwrote {trials_csv} and {final_csv}")


if __name__ == "__main__":
    main()
