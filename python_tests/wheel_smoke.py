"""Smoke test of an installed itr_kernels wheel (run by .ci/wheel_check.sh in a fresh venv holding
torch, numpy and the wheel; not collected by pytest). Run it from outside the source tree:

    python wheel_smoke.py             # the library and the entry points without the `train` extra
    python wheel_smoke.py --with-yaml # after `pip install pyyaml`: itr-rerank --help finds its configs

Checks: the package is the installed one (not a checkout), its version is the wheel's, the kernels
load and build_info() names the CPU backend and instruction-set level; every loss forward and backward
on the CPU against its plain-PyTorch twin (itr_kernels.reference) in float64; the entry points
(itr-train, itr-rerank, python -m itr_kernels.app.rerank) print a message naming the `train` extra
without it, and with pyyaml itr-rerank --help runs and the packaged configs are found.
"""
import argparse
import importlib.metadata
import os
import subprocess
import sys
import sysconfig

import torch

import itr_kernels as ik
from itr_kernels import reference as ref

EXTRA = "itr_kernels[train]"


def check(cond, what):
    if not cond:
        raise SystemExit(f"wheel smoke test FAILED: {what}")
    print(f"ok: {what}")


def installed_package():
    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    where = os.path.realpath(os.path.dirname(ik.__file__))
    check(where.startswith(site + os.sep), f"itr_kernels imported from the environment's site-packages ({where})")
    check(ik.__version__ == importlib.metadata.version("itr_kernels"),
          f"itr_kernels.__version__ {ik.__version__} is the installed distribution's version")
    info = ik.build_info()
    check("CPU" in info["backends"], f"build_info() backends {info['backends']} include CPU")
    check(info.get("cpu_isa") in info.get("cpu_isa_compiled", []),
          f"build_info() names the CPU instruction set that runs: {info.get('cpu_isa')} of {info.get('cpu_isa_compiled')}")


def losses():
    g = torch.Generator().manual_seed(0)
    b = 8
    scores = torch.randn(b, b, generator=g, dtype=torch.float64)
    relevance = torch.rand(b, b, generator=g, dtype=torch.float64)
    relevance.fill_diagonal_(1.0)
    positives = torch.eye(b, dtype=torch.bool)
    cases = {
        "smooth_rank": lambda m, s: m.smooth_rank(s, tau=0.1).sum(),
        "smooth_ndcg_loss": lambda m, s: m.smooth_ndcg_loss(s, relevance, tau=0.1),
        "triplet_loss": lambda m, s: m.triplet_loss(s),
        "triplet_loss (sum of hinges)": lambda m, s: m.triplet_loss(s, max_violation=False),
        "infonce_loss": lambda m, s: m.infonce_loss(s),
        "triplet_sn_loss": lambda m, s: m.triplet_sn_loss(s, relevance, temperature=0.1),
        "kendall_loss": lambda m, s: m.kendall_loss(s, relevance, gap=0.1, phi="logistic"),
        "kendall_loss (sw-hs)": lambda m, s: m.kendall_loss(s, relevance, gap=0.1, sampling="swhs", window=2, stride=1),
        "ranknet_loss": lambda m, s: m.ranknet_loss(s, relevance),
        "smooth_ap_loss": lambda m, s: m.smooth_ap_loss(s, positives, tau=0.1),
        "listnet_loss": lambda m, s: m.listnet_loss(s, relevance),
    }
    for name, fn in cases.items():
        values, grads = [], []
        for module in (ik, ref):
            s = scores.clone().requires_grad_()
            loss = fn(module, s)
            loss.backward()
            values.append(loss.detach())
            grads.append(s.grad)
        ok = (torch.isfinite(values[0]).all() and torch.allclose(values[0], values[1], rtol=1e-6, atol=1e-9)
              and torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-9))
        check(bool(ok), f"{name}: forward and backward on the CPU match the reference "
                        f"({values[0].item():.6g} vs {values[1].item():.6g})")


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    return r.returncode, r.stdout + r.stderr


def commands():
    bindir = os.path.dirname(sys.executable)
    return {
        "itr-train --help": [os.path.join(bindir, "itr-train"), "--help"],
        "itr-rerank --help": [os.path.join(bindir, "itr-rerank"), "--help"],
        "python -m itr_kernels.app.rerank --help": [sys.executable, "-m", "itr_kernels.app.rerank", "--help"],
    }


def entry_points_without_extra():
    import importlib.util

    check(importlib.util.find_spec("yaml") is None, "the `train` extra is not installed (no yaml)")
    for name, cmd in commands().items():
        rc, out = run(cmd)
        check(rc != 0 and EXTRA in out and "pip install" in out and "Traceback" not in out,
              f"{name} without the extra: exit {rc}, a message naming `pip install {EXTRA}`")


def entry_points_with_yaml():
    from itr_kernels.app.config import CONFIG_DIR, load_config

    site = os.path.realpath(sysconfig.get_paths()["purelib"])
    check(os.path.realpath(CONFIG_DIR).startswith(site + os.sep)
          and {"default.yaml", "rerank.yaml"} <= set(os.listdir(CONFIG_DIR)),
          f"the configs are the packaged ones ({CONFIG_DIR})")
    cfg = load_config(None, [], defaults=os.path.join(CONFIG_DIR, "rerank.yaml"))
    check(bool(cfg), "configs/rerank.yaml loads")
    for name in ("itr-rerank --help", "python -m itr_kernels.app.rerank --help"):
        rc, out = run(commands()[name])
        check(rc == 0 and "--checkpoint" in out, f"{name} with pyyaml: exit 0 and the usage")
    # itr-train needs more of the extra (tqdm, matplotlib): its message names what is missing
    rc, out = run(commands()["itr-train --help"])
    check(rc == 0 or (EXTRA in out and "Traceback" not in out), f"itr-train --help: exit {rc}, usage or the extra")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--with-yaml", action="store_true", help="pyyaml is installed: check the configs")
    a = p.parse_args()
    installed_package()
    if a.with_yaml:
        entry_points_with_yaml()
    else:
        losses()
        entry_points_without_extra()
    print("wheel smoke test passed")


if __name__ == "__main__":
    main()
