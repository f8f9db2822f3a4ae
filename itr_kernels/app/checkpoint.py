"""Checkpoints that resume exactly and load with `torch.load(weights_only=True)`: model,
optimiser, scheduler, every RNG (Python, NumPy, torch CPU and CUDA), epoch, best score, history
and the config. Only tensors and plain Python values are stored."""
import os
import random

import numpy as np
import torch

from .config import differences


def rng_state():
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path, **payload):
    """Atomic: a run killed while saving leaves the previous checkpoint intact."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    torch.save(payload, path + ".tmp")
    os.replace(path + ".tmp", path)


def load(path, config=None):
    """Load a checkpoint; with `config`, refuse one written by a run of another config."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path!r} not found")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if config is not None:
        diff = differences(ckpt["config"], config)
        if diff:
            detail = "; ".join(f"{k}: checkpoint {ckpt['config'].get(k)!r}, now {config.get(k)!r}" for k in diff)
            raise ValueError(f"checkpoint {path!r} is from another config ({detail}); resume with the same "
                             f"config, or start a new run in another out_dir")
    return ckpt
