"""Step time of train.py's training step, one process vs several (torchrun), with the same
per-process batch: what the global list costs (the all-gather of embeddings, the larger
local x global loss, DDP's gradient all-reduce). Random features of the emoji data's sizes
(1280-d images, 384-d captions), the listwise loss.

    OMP_NUM_THREADS=1 python bench/distributed_step.py                        # 1 process
    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 bench/distributed_step.py
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from itr_kernels.app import train  # noqa: E402
from itr_kernels.app.vse import VSEModel  # noqa: E402


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kw):
        pass


class RandomSplit:
    def __init__(self, n_images, m, gen):
        self.n_images, self.m = n_images, m
        self.images = torch.randn(n_images, 1280, generator=gen)
        self.texts = torch.nn.functional.normalize(torch.randn(n_images * m, 384, generator=gen), dim=1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=128, help="per process")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after as many for warm-up)")
    p.add_argument("--loss", default="listwise")
    a = p.parse_args()
    device = torch.device("cpu")
    world, rank = train.init_distributed(device)
    cfg = {"seed": 0, "batch_size": a.batch_size, "amp": False, "grad_clip": 2.0}
    gen = torch.Generator().manual_seed(0)
    split = RandomSplit(a.batch_size * world * a.steps, 3, gen)
    torch.manual_seed(0)
    model = VSEModel(1280, 384)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    loss_fn = train.make_loss(a.loss, {})
    times = []
    for epoch in range(2):      # epoch 0 warms up
        if world > 1:
            torch.distributed.barrier()
        t0 = time.perf_counter()
        train.train_epoch(net, loss_fn, opt, sched, split, cfg, epoch, device, _NoBar())
        times.append((time.perf_counter() - t0) / a.steps)
    if rank == 0:
        print(f"{world} process(es) x {torch.get_num_threads()} thread(s), batch {a.batch_size} per process "
              f"(global {a.batch_size * world}), {a.loss}: {1e3 * times[-1]:.1f} ms per step")
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
