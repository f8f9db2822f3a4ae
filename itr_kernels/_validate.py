"""Argument checks shared by the fused API and the reference, so both reject the same inputs with
the same message, before any work."""
import math
import numbers

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def tensor(x, name):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")


def scores(s, name="scores"):
    tensor(s, name)
    if s.dim() != 2:
        raise ValueError(f"{name} must be 2-D (queries, candidates), got shape {tuple(s.shape)}")
    if s.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float64, float32, float16 or bfloat16, got {s.dtype}")


def square(s, name="scores"):
    scores(s, name)
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"{name} must be a square in-batch matrix (B, B) with positives on the diagonal, "
                         f"got shape {tuple(s.shape)}")


def like_scores(t, s, name):
    tensor(t, name)
    if t.shape != s.shape:
        raise ValueError(f"{name} must have the shape of scores {tuple(s.shape)}, got {tuple(t.shape)}")
    if t.device != s.device:
        raise ValueError(f"{name} must be on the device of scores ({s.device}), got {t.device}")


def relevance(r, s, name="relevance"):
    like_scores(r, s, name)
    if r.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (values in [0, 1]), got {r.dtype}")
    if r.requires_grad:
        raise ValueError(f"{name} requires grad, but gradients with respect to relevance labels are not "
                         f"computed; pass {name}.detach()")


def valid(v, s):
    if v is None:
        return
    like_scores(v, s, "valid")
    if v.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor (True = real candidate), got {v.dtype}")


def _is_finite_number(x):
    """A real number (not a bool) that is neither infinite nor NaN. Comparisons, not math.isfinite:
    under torch.compile(dynamic=True) a float argument is a symbolic float, which math.isfinite
    cannot take (a comparison becomes a guard)."""
    return not isinstance(x, bool) and isinstance(x, numbers.Real) and -math.inf < x < math.inf


def positive(x, name):
    if not _is_finite_number(x) or x <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {x!r}")


def finite(x, name):
    if not _is_finite_number(x):
        raise ValueError(f"{name} must be a finite number, got {x!r}")


def rho(x):
    """Triplet-SN's relevance threshold: any number, +inf included (keeps every candidate but the
    positive), not NaN (no candidate would be a negative, silently)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real) or not x == x:   # x != x: NaN (symbolic-safe)
        raise ValueError(f"rho must be a number (not NaN; +inf keeps every candidate but the positive), got {x!r}")


def unit_interval(x, name):
    finite(x, name)
    if not 0 <= x <= 1:
        raise ValueError(f"{name} must be in [0, 1], got {x!r}")


def top_k(k):
    if k is None:
        return
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise ValueError(f"k must be None (every candidate carries gain) or an integer >= 1, got {k!r}")


def choice(x, name, options):
    if x not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}; got {x!r}")


def non_negative(x, name):
    finite(x, name)
    if x < 0:
        raise ValueError(f"{name} must be >= 0, got {x!r}")


def positive_int(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {x!r}")


def positive_columns(p, s, name="positives"):
    """The column of each row's positive in a rectangular (Q, N) score matrix."""
    tensor(p, name)
    if p.dim() != 1 or p.shape[0] != s.shape[0]:
        raise ValueError(f"{name} must be 1-D with one column index per row of scores ({s.shape[0]},), "
                         f"got shape {tuple(p.shape)}")
    if p.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer tensor of column indices, got {p.dtype}")
    if p.device != s.device:
        raise ValueError(f"{name} must be on the device of scores ({s.device}), got {p.device}")
    message = f"{name} must hold column indices in [0, {s.shape[1]})"
    if torch.compiler.is_compiling():   # no host sync in a graph: an asynchronous assert instead
        torch._assert_async(((p >= 0) & (p < s.shape[1])).all(), message)
    elif p.numel() and (int(p.min()) < 0 or int(p.max()) >= s.shape[1]):
        raise ValueError(message)
