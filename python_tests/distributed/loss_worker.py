"""Run by test_distributed.py under torchrun (gloo, loopback): every loss on local rows x global
columns, through EmbeddingLoss / GlobalBatchLoss inside DistributedDataParallel and WITHOUT any
manual scaling, must give the single-process loss on the concatenated batch (as the mean of the
processes' values) and, after DDP's gradient averaging, its parameter gradients (float64, to 1e-6)."""
import copy
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.functional import normalize

import itr_kernels as ik


class Model(nn.Module):
    """Two linear encoders and the loss (its learnable logit scale, if any, is averaged by DDP too)."""

    def __init__(self, loss_fn, d_in, dim, seed, normalize_first=False):
        super().__init__()
        self.normalize_first = normalize_first
        torch.manual_seed(seed)
        self.img = nn.Linear(d_in, dim, dtype=torch.float64)
        self.txt = nn.Linear(d_in, dim, dtype=torch.float64)
        self.loss_fn = loss_fn

    def forward(self, x, y, *relevance):
        img, txt = self.img(x), self.txt(y)
        if self.normalize_first:
            img, txt = normalize(img, dim=1), normalize(txt, dim=1)
        return self.loss_fn(img, txt, *relevance)


def rsc_like(img, txt):
    """A relevance computed from the (global, normalised) features, 1 on the diagonal."""
    r = ((txt @ txt.T + 1) / 2).clone()
    r.fill_diagonal_(1.0)
    return r


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    per, d_in, dim = 6, 5, 8
    seed = int(sys.argv[1])
    g = torch.Generator().manual_seed(seed)       # the same data on every process
    n = per * world
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    rel = torch.rand(n, n, generator=g, dtype=torch.float64)
    rel.fill_diagonal_(1.0)
    losses = {
        "triplet": ik.TripletLoss(),
        "triplet_sum": ik.TripletLoss(reduction="sum"),
        "triplet_vse0": ik.TripletLoss(max_violation=False),
        "infonce": ik.InfoNCELoss(temperature=0.1),
        "infonce_learned": ik.InfoNCELoss(learn_temperature=True),
        "listwise": ik.ListwiseITRLoss(tau=0.05),
        "listwise_top3": ik.ListwiseITRLoss(tau=0.05, k=3, gain="linear"),
        "triplet_sn": ik.TripletSNLoss(temperature=0.05, rho=0.9),
        "triplet_sn_sum": ik.TripletSNLoss(temperature=0.05, rho=0.9, reduction="sum"),
        "bcls_swhs": ik.BCLSLoss(temperature=0.05, window=2),
        "bcls_full": ik.BCLSLoss(temperature=0.05, sampling="full", gap=0.2, phi="logistic", kendall_temperature=0.1),
        "triplet_sn_itr": ik.TripletSNITRLoss(temperature=0.05, rho=0.9),
        "infonce_kendall": ik.ContinuousLabelLoss("infonce", "kendall", 0.5, temperature=0.1, window=2),
        "infonce_learned_sndcg": ik.ContinuousLabelLoss(ik.InfoNCELoss(learn_temperature=True), "sndcg", tau=0.05),
        "triplet_sum_sndcg": ik.ContinuousLabelLoss("triplet_sum", "sndcg", 0.3, tau=0.05, k=3),
        "triplet_sn_sndcg": ik.ContinuousLabelLoss("triplet_sn", "sndcg", temperature=0.05, tau=0.05),
        "triplet_kendall_full": ik.ContinuousLabelLoss("triplet", "kendall", sampling="full", gap=0.2),
    }
    mine = slice(rank * per, (rank + 1) * per)
    failures, checked = [], 0

    def compare(name, what, got, want):
        err = (got - want).abs().max().item()
        if not err <= 1e-6 * max(1.0, want.abs().max().item()):
            failures.append(f"rank {rank} {name} {what}: max error {err:.3g}")

    for i, (name, loss) in enumerate(losses.items()):
        # the truth: one process, the score-matrix loss on the whole batch
        truth = Model(copy.deepcopy(loss), d_in, dim, seed + i)
        a, b = normalize(truth.img(x), dim=1), normalize(truth.txt(y), dim=1)
        use_rel = not isinstance(loss, (ik.TripletLoss, ik.InfoNCELoss))
        relevance = rsc_like(a.detach(), b.detach()) if "listwise" in name else rel
        single = truth.loss_fn(a @ b.T, relevance) if use_rel else truth.loss_fn(a @ b.T)
        single.backward()
        # the same through each front end, 2 processes, DDP, no scaling; three ways to give relevance
        fronts = {
            "EmbeddingLoss": (ik.EmbeddingLoss(copy.deepcopy(loss), relevance=rsc_like if "listwise" in name else None),
                              () if "listwise" in name else (rel,)),
            "GlobalBatchLoss": (ik.GlobalBatchLoss(copy.deepcopy(loss)),
                                (relevance[mine], relevance.T[mine].contiguous())),
        }
        for front, (loss_fn, rel_args) in fronts.items():
            # GlobalBatchLoss does not normalise: the model does
            model = Model(loss_fn, d_in, dim, seed + i, normalize_first=isinstance(loss_fn, ik.GlobalBatchLoss))
            ddp = nn.parallel.DistributedDataParallel(model)
            part = ddp(x[mine], y[mine], *rel_args)
            part.backward()
            mean = part.detach().clone()
            dist.all_reduce(mean)
            compare(name, f"{front} loss", mean / world, single.detach())
            for (pname, p), (_, q) in zip(model.named_parameters(), truth.named_parameters()):
                compare(name, f"{front} grad {pname}", p.grad, q.grad)
            checked += 1
    # ddp_average=False: the processes' values add up to the global loss
    loss_fn = ik.EmbeddingLoss(ik.ListwiseITRLoss(tau=0.05), ddp_average=False)
    a, b = normalize(x, dim=1), normalize(y, dim=1)
    total = loss_fn(x[mine], y[mine], rel).detach().clone()
    dist.all_reduce(total)
    compare("listwise", "ddp_average=False sum", total, ik.ListwiseITRLoss(tau=0.05)(a @ b.T, rel))
    dist.barrier()
    dist.destroy_process_group()
    if failures:
        sys.exit("\n".join(failures))
    print(f"rank {rank}: {checked} losses equal the single-process ones", flush=True)
    # Skip the interpreter's teardown: with DDP on gloo it can abort ("terminate called without an
    # active exception", a worker thread destroyed while joinable) after every check has passed.
    os._exit(0)


if __name__ == "__main__":
    main()
