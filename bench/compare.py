"""Fused kernels vs the eager PyTorch reference vs torch.compile(reference), side by side in one run.

For every case, size and implementation: median time of the forward (no grad), of the backward
(on a retained graph) and of forward+backward, pair terms per second, and peak extra memory.
Prints a table and writes bench/results/<device>.csv. Out-of-memory is recorded as such.

    python bench/compare.py --quick               # CPU, a short sweep
    python bench/compare.py --device cuda         # the GPU sweep
"""
import argparse
import csv
import os
import platform
import re
import sys
import time

# Inductor compiles in a pool of worker processes that outlive the compiled case and keep CPU cores
# busy: the fused case measured next ran 15-25% slower on the 2-core box (Smooth-NDCG B = 512:
# 50.4 vs 43.3 ms). Compiling in this process leaves the cores to the measurement.
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

import torch  # noqa: E402
import torch.utils.benchmark as tbench  # noqa: E402
from torch._functorch import config as functorch_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import itr_kernels as ik  # noqa: E402
from itr_kernels import reference as ref  # noqa: E402
from memory import peak_extra_bytes  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# The backward is timed on a retained graph, which a compiled backward with donated buffers refuses.
functorch_config.donated_buffer = False
IMPLS = ("fused", "eager", "compiled")
PASSES = ("fwd", "bwd", "fwd+bwd")


# ---- cases: each maps (namespace of functions, B, dtype, device, tau) to a loss closure ----

def make_inputs(b, dtype, device, gen_seed=0):
    """In-batch scores of an ITR model: cosine similarities of unit embeddings (S = img @ txt.T),
    and relevance in [0, 1]."""
    g = torch.Generator().manual_seed(gen_seed)
    img = torch.nn.functional.normalize(torch.randn(b, 256, generator=g), dim=1)
    txt = torch.nn.functional.normalize(img + 0.8 * torch.randn(b, 256, generator=g), dim=1)
    scores = (img @ txt.T).to(device, dtype)
    relevance = torch.rand(b, b, generator=g).to(device, dtype)
    return scores, relevance


class Case:
    """A benchmark case: the loss over a function namespace, its pair terms per pass (None where
    that is not the measure), and whether the reference materialises (B, B, B) tensors."""

    def __init__(self, build, pairs=None, cubic_reference=True, temperature=False):
        self.build, self.pairs, self.cubic_reference = build, pairs, cubic_reference
        self.temperature = temperature   # takes --temperature, not --tau (recorded in the tau column)


CASES = {
    "smooth_ndcg": Case(lambda F, tau: (lambda s, r: F.smooth_ndcg_loss(s, r, tau)), lambda b: b**3),
    "listwise": Case(lambda F, tau: F.ListwiseITRLoss(tau=tau), lambda b: 2 * b**3),
    "kendall_full": Case(lambda F, tau: (lambda s, r: F.kendall_loss(s, r)), lambda b: b**3),
    "kendall_swhs": Case(lambda F, tau: (lambda s, r: F.kendall_loss(s, r, sampling="swhs")), cubic_reference=False),
    "triplet_sn": Case(lambda F, tau: (lambda s, r: F.triplet_sn_loss(s)), lambda b: 2 * b**2, cubic_reference=False),
    # The fused VSE++ kernel against the plain tensor code of itr_kernels.reference.
    "triplet": Case(lambda F, tau: (lambda s, r: F.triplet_loss(s)), lambda b: 2 * b**2, cubic_reference=False),
    "triplet_sum": Case(lambda F, tau: (lambda s, r: F.triplet_loss(s, max_violation=False)), lambda b: 2 * b**2,
                        cubic_reference=False),
    # The fused InfoNCE kernel against F.cross_entropy over both directions (reference.infonce_loss),
    # at the loss's default temperature (--temperature).
    "infonce": Case(lambda F, t: (lambda s, r: F.infonce_loss(s, t)), lambda b: 2 * b**2, cubic_reference=False,
                    temperature=True),
}


def estimated_reference_bytes(case, impl, b, dtype):
    """Peak of a reference at B: eager keeps about six (B, B, B) tensors alive, the compiled one
    about one (measured at B = 512: 1.67 GB and 0.52 GB in float32); O(B^2) cases, a few (B, B)."""
    per = (6 if impl == "eager" else 1.5) * torch.finfo(dtype).bits // 8
    return per * b**3 if CASES[case].cubic_reference else 8 * per * b**2


def available_bytes():
    with open("/proc/meminfo") as f:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024


def device_name(device):
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        cpu = platform.processor() or "cpu"
        try:
            with open("/proc/cpuinfo") as f:
                cpu = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
        except (OSError, AttributeError):
            pass
        name = f"cpu {cpu} {torch.get_num_threads()}threads"
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def sfu_pairs_per_second(device):
    """The special-function floor's rate: SMs x 16 special-function results per clock x clock."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "clock_rate", None)
    if not clock_khz:
        try:
            import subprocess
            out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits",
                                  "-i", str(device.index or 0)], capture_output=True, text=True, check=True)
            clock_khz = float(out.stdout.split()[0]) * 1000
        except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
            return None
    return props.multi_processor_count * 16 * clock_khz * 1e3


def is_oom(e):
    return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(e).lower() \
        or "can't allocate memory" in str(e).lower()


def median_seconds(fn, device, min_run_time):
    fn()  # warm-up: page faults, caches, compilation
    fn()
    # Timer synchronises CUDA around each block; it runs on one thread unless told otherwise.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def measure(case, impl, b, dtype, device, tau, min_run_time):
    build, pairs = CASES[case].build, CASES[case].pairs
    scores, relevance = make_inputs(b, dtype, device)
    # On the CPU an allocation past RAM can end in the kernel's OOM killer instead of an error.
    if impl != "fused" and device.type == "cpu" and estimated_reference_bytes(case, impl, b, dtype) > 0.7 * available_bytes():
        need = estimated_reference_bytes(case, impl, b, dtype) / 2**30
        return {p: dict(status=f"skipped: needs ~{need:.0f} GiB, {available_bytes() / 2**30:.0f} free") for p in PASSES}
    loss_fn = build(ik if impl == "fused" else ref, tau)
    if impl == "compiled":
        loss_fn = torch.compile(loss_fn, fullgraph=True, dynamic=False)
    leaf = scores.clone().requires_grad_()

    def fwd():
        with torch.no_grad():
            return loss_fn(scores, relevance)

    def fwd_bwd():
        leaf.grad = None
        loss_fn(leaf, relevance).backward()

    out = {}
    try:
        out["fwd"] = dict(t=median_seconds(fwd, device, min_run_time), mem=peak_extra_bytes(fwd, device))
        graph = loss_fn(leaf, relevance)
        out["bwd"] = dict(t=median_seconds(lambda: torch.autograd.grad(graph, leaf, retain_graph=True), device,
                                           min_run_time), mem=None)
        del graph
        out["fwd+bwd"] = dict(t=median_seconds(fwd_bwd, device, min_run_time), mem=peak_extra_bytes(fwd_bwd, device))
    except (RuntimeError, MemoryError) as e:
        if not is_oom(e):
            raise
        if device.type == "cuda":
            torch.cuda.empty_cache()
        for p in PASSES:
            out.setdefault(p, dict(status="OOM"))
    for p, r in out.items():
        r.setdefault("status", "ok")
        if "t" in r and p != "bwd" and pairs:  # pair terms per second and per pass (fwd+bwd is two passes)
            r["pairs_per_s"] = pairs(b) * (2 if p == "fwd+bwd" else 1) / r["t"]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true", help="a short sweep (B 128 and 512, smooth_ndcg only)")
    p.add_argument("--cases", default=None, help=f"comma list of {', '.join(CASES)}")
    p.add_argument("--sizes", default=None, help="comma list of B (Q = N = B)")
    p.add_argument("--impls", default=",".join(IMPLS))
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    p.add_argument("--tau", type=float, default=0.01)
    p.add_argument("--temperature", type=float, default=0.05, help="InfoNCE's temperature (the infonce case)")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per measurement")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    cases = args.cases.split(",") if args.cases else (["smooth_ndcg"] if args.quick else ["smooth_ndcg", "listwise"])
    default_sizes = [128, 512] if args.quick else ([128, 512, 1024, 2048] if device.type == "cpu"
                                                   else [128, 512, 1024, 2048, 4096, 8192])
    sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else default_sizes
    impls = args.impls.split(",")
    min_run_time = args.min_run_time or (0.3 if args.quick else 1.0)
    name = device_name(device)
    sfu_rate = sfu_pairs_per_second(device)
    print(f"# itr_kernels bench on {name}; torch {torch.__version__}; {args.dtype}; tau {args.tau}; "
          f"InfoNCE temperature {args.temperature}")
    if sfu_rate:
        print(f"# special-function floor: {sfu_rate:.3g} pair terms/s (SMs x 16/clock x max clock)")

    rows = []
    for case in cases:
        tau = args.temperature if CASES[case].temperature else args.tau
        for b in sizes:
            results = {}
            for impl in impls:
                t0 = time.perf_counter()
                results[impl] = measure(case, impl, b, dtype, device, tau, min_run_time)
                print(f"#   {case} B={b} {impl}: measured in {time.perf_counter() - t0:.0f} s", flush=True)
            for impl in impls:
                for pas in PASSES:
                    r = results[impl][pas]
                    row = dict(device=name, case=case, impl=impl, dtype=args.dtype, B=b, tau=tau, pass_=pas,
                               median_ms=r.get("t", float("nan")) * 1e3, pair_terms_per_s=r.get("pairs_per_s"),
                               peak_extra_MiB=None if r.get("mem") is None else r["mem"] / 2**20, status=r["status"])
                    # Fraction of the special-function floor reached (one special op per pair term).
                    row["sfu_floor_fraction"] = (r["pairs_per_s"] / sfu_rate if sfu_rate and r.get("pairs_per_s")
                                                 else None)
                    for other in ("eager", "compiled"):
                        o = results.get(other, {}).get(pas, {})
                        row[f"speedup_vs_{other}"] = o["t"] / r["t"] if "t" in o and "t" in r else None
                    rows.append(row)
    print_table(rows)
    path = write_csv(os.path.join(args.out, f"{name}.csv"), rows)
    print(f"# wrote {path}")


KEY = ("case", "impl", "dtype", "B", "tau", "pass_")


def write_csv(path, rows):
    """One CSV per device: rows of this run replace earlier rows with the same key, others stay."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fresh = {tuple(str(r[k]) for k in KEY) for r in rows}
    kept = []
    if os.path.exists(path):
        with open(path, newline="") as f:
            kept = [r for r in csv.DictReader(f) if tuple(r.get(k, "") for k in KEY) not in fresh]
    fields = list(rows[0])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(kept + rows)
    return path


def fmt(x, spec):
    width = int(re.match(r"\d+", spec).group())
    return f"{'-':>{width}}" if x is None or x != x else format(x, spec)


def print_table(rows):
    head = f"{'case':<12}{'B':>6} {'impl':<9}{'pass':<8}{'median ms':>11}{'pairs/s':>10}{'peak MiB':>10}" \
           f"{'x eager':>9}{'x compiled':>11}{'of SFU':>8}  status"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['case']:<12}{r['B']:>6} {r['impl']:<9}{r['pass_']:<8}{fmt(r['median_ms'], '11.2f')}"
              f"{fmt(r['pair_terms_per_s'], '10.2e')}{fmt(r['peak_extra_MiB'], '10.1f')}"
              f"{fmt(r['speedup_vs_eager'], '9.1f')}{fmt(r['speedup_vs_compiled'], '11.1f')}"
              f"{fmt(r['sfu_floor_fraction'], '8.2f')}  {r['status']}")


if __name__ == "__main__":
    main()
