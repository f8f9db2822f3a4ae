"""Bad input gets a clear error naming the argument, before any work; from the public API, the
reference and the raw ops alike."""
import math

import pytest
import torch

import itr_kernels as ik
from itr_kernels import reference as ref

S = torch.rand(4, 5)
R = torch.rand(4, 5)
IMPLS = [pytest.param(ik, id="fused"), pytest.param(ref, id="reference")]

CASES = [
    # (function name, args, kwargs, exception, message fragment)
    ("smooth_ndcg_loss", (torch.rand(5), torch.rand(5)), {}, ValueError, "scores must be 2-D"),
    ("smooth_ndcg_loss", (torch.rand(2, 3, 4), torch.rand(2, 3, 4)), {}, ValueError, "scores must be 2-D"),
    ("smooth_ndcg_loss", (S, torch.rand(4, 6)), {}, ValueError, "relevance must have the shape of scores"),
    ("smooth_ndcg_loss", (S, R), {"tau": 0}, ValueError, "tau must be a finite number > 0"),
    ("smooth_ndcg_loss", (S, R), {"tau": -0.1}, ValueError, "tau must be a finite number > 0"),
    ("smooth_ndcg_loss", (S, R), {"tau": math.nan}, ValueError, "tau must be a finite number > 0"),
    ("smooth_ndcg_loss", (S, R), {"k": 0}, ValueError, "k must be None"),
    ("smooth_ndcg_loss", (S, R), {"k": 2.5}, ValueError, "k must be None"),
    ("smooth_ndcg_loss", (S, R), {"gain": "log"}, ValueError, "gain must be one of"),
    ("smooth_ndcg_loss", (S, R), {"reduction": "avg"}, ValueError, "reduction must be one of"),
    ("smooth_ndcg_loss", (torch.ones(4, 5, dtype=torch.int64), R), {}, TypeError, "scores must be float64"),
    ("smooth_ndcg_loss", (S, torch.ones(4, 5, dtype=torch.int64)), {}, TypeError, "relevance must be a floating"),
    ("smooth_ndcg_loss", (S, R.to("meta")), {}, ValueError, "relevance must be on the device of scores"),
    ("smooth_ndcg_loss", (S, R), {"valid": torch.ones(4, 5)}, TypeError, "valid must be a bool tensor"),
    ("smooth_ndcg_loss", (S, R), {"valid": torch.ones(4, 6, dtype=torch.bool)}, ValueError, "valid must have the shape"),
    ("smooth_ndcg_loss", (S, R.clone().requires_grad_()), {}, ValueError, "relevance requires grad"),
    ("smooth_ndcg_loss", (S.tolist(), R), {}, TypeError, "scores must be a torch.Tensor"),
    ("smooth_rank", (torch.rand(5),), {}, ValueError, "scores must be 2-D"),
    ("smooth_rank", (S,), {"tau": 0.0}, ValueError, "tau must be a finite number > 0"),
    ("smooth_rank", (S,), {"valid": torch.ones(4, 5, dtype=torch.uint8)}, TypeError, "valid must be a bool tensor"),
    ("smooth_rank", (S,), {"valid": torch.ones(4, 5, dtype=torch.bool, device="meta")}, ValueError,
     "valid must be on the device of scores"),
    ("triplet_loss", (S,), {}, ValueError, "scores must be a square in-batch matrix"),
    ("triplet_loss", (torch.rand(3, 3),), {"margin": math.inf}, ValueError, "margin must be a finite number"),
    ("triplet_loss", (torch.rand(3, 3),), {"reduction": "max"}, ValueError, "reduction must be one of"),
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,args,kwargs,exc,msg", CASES)
def test_public_api_rejects(impl, name, args, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        getattr(impl, name)(*args, **kwargs)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(tau=0), "tau must be"), (dict(k=-1), "k must be"), (dict(gain="x"), "gain must be"),
    (dict(weight=1.5), "weight must be in"), (dict(triplet_reduction="none"), "triplet_reduction must be"),
    (dict(margin=math.nan), "margin must be"),
])
def test_modules_reject_at_construction(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ik.ListwiseITRLoss(**kwargs)


def test_listwise_needs_square_scores():
    with pytest.raises(ValueError, match="square"):
        ik.ListwiseITRLoss()(torch.rand(3, 4), torch.rand(3, 4))


@pytest.mark.parametrize("call,exc,msg", [
    (lambda: ik._ops.ops.smooth_rank(torch.rand(5), None, 0.1), ValueError, "scores must be 2-D"),
    (lambda: ik._ops.ops.smooth_rank(S, None, 0.0), ValueError, "tau must be a finite number > 0"),
    (lambda: ik._ops.ops.smooth_rank(S, torch.ones(4, 5), 0.1), TypeError, "valid must be a bool tensor"),
    (lambda: ik._ops.ops.smooth_rank_backward(torch.rand(4, 4), S, None, 0.1), ValueError, "grad must have the shape"),
    (lambda: ik._ops.ops.smooth_ndcg(S, torch.rand(3, 5), None, 0.1, 0, False, False), ValueError,
     "relevance must have the shape"),
    (lambda: ik._ops.ops.smooth_ndcg(S.long(), R, None, 0.1, 0, False, False), TypeError, "scores must be float64"),
])
def test_raw_ops_reject(call, exc, msg):
    """Direct torch.ops calls skip the Python checks; the C++ checks still name the argument."""
    with pytest.raises(exc, match=msg):
        call()


def test_backward_without_compute_grad_is_an_error():
    s = S.clone().requires_grad_()
    loss, _, _ = ik._ops.ops.smooth_ndcg(s, R, None, 0.1, 0, False, False)
    with pytest.raises(RuntimeError, match="compute_grad=False"):
        loss.sum().backward()
