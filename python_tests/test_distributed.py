"""Global-batch losses and train.py across 2 processes (gloo on the CPU, loopback only, bounded in
time), against one process on the concatenated batch, with no manual world-size scaling."""
import os
import subprocess
import sys

import pytest
import torch

import itr_kernels as ik
from itr_kernels.distributed import GlobalBatchLoss, gather_with_grad
from test_train import cfg_for, make_tiny_data

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this torch build has no gloo backend")


def torchrun(*args, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([ROOT, HERE]))
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_loss_matches_one_process_on_the_global_batch():
    seed = int.from_bytes(os.urandom(3), "little")
    done = torchrun(os.path.join(HERE, "distributed", "loss_worker.py"), str(seed))
    assert done.returncode == 0, f"seed {seed}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.stdout.count("losses equal the single-process ones") == 2


def test_without_a_process_group_the_wrapper_is_the_square_loss(gen):
    img = torch.nn.functional.normalize(torch.randn(8, 5, generator=gen, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(8, 5, generator=gen, dtype=torch.float64), dim=1)
    rel = torch.rand(8, 8, generator=gen, dtype=torch.float64)
    rel.fill_diagonal_(1)
    assert gather_with_grad(img) is img
    for loss in (ik.TripletLoss(), ik.ListwiseITRLoss(), ik.BCLSLoss(), ik.InfoNCELoss(0.1)):
        torch.testing.assert_close(GlobalBatchLoss(loss)(img, txt, rel, rel.T.contiguous()), loss(img @ txt.T, rel))


@pytest.mark.parametrize("loss_kw", [{"loss": "listwise"}, {"loss": "infonce", "loss_args.learn_temperature": "true"}],
                         ids=["listwise", "infonce_learned_temperature"])
def test_two_process_training_matches_one_process_on_the_global_batch(tmp_path, loss_kw):
    # a learned temperature is a parameter of the loss, outside DistributedDataParallel
    data = make_tiny_data(tmp_path)
    common = dict(epochs=2, dropout=0.0, **loss_kw)
    single = cfg_for(data, tmp_path / "one", batch_size=32, **common)
    from itr_kernels.app import train
    train.run(single, log=lambda *_: None)
    overrides = [f"{k}={v}" for k, v in dict(single, batch_size=16, out_dir=tmp_path / "two").items()
                 if not isinstance(v, dict)] + [f"loss_args.{k}={v}" for k, v in single["loss_args"].items()]
    done = torchrun(os.path.join(ROOT, "train.py"), *overrides)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    a = torch.load(tmp_path / "one" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert len(b["rng"]) == 2 and a["epoch"] == b["epoch"] == 2
    for part in ("model", "loss"):
        for name in a[part]:
            torch.testing.assert_close(b[part][name], a[part][name], rtol=1e-4, atol=1e-5, msg=name)
    for ha, hb in zip(a["history"], b["history"]):
        assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-4)
        assert hb["grad_norm"] == pytest.approx(ha["grad_norm"], rel=1e-4)   # Adam alone would hide a scale error
