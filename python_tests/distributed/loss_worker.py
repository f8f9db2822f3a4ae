"""Run by test_distributed.py under torchrun (gloo, loopback): every loss on local rows x global
columns must give, summed over processes, the single-process loss on the concatenated batch, and
each process the single-process gradient of its shard (float64, to 1e-6)."""
import sys

import torch
import torch.distributed as dist

import itr_kernels as ik
from itr_kernels.distributed import GlobalBatchLoss


def main():
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    per, dim = 6, 8
    g = torch.Generator().manual_seed(int(sys.argv[1]))       # the same data on every process
    n = per * world
    img = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    txt = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
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
        "triplet_sn": ik.BCLSLoss(mu=0.0, temperature=0.05, rho=0.9),
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
    failures = []
    for name, loss in losses.items():
        a, b = img.clone().requires_grad_(), txt.clone().requires_grad_()
        single = loss(a @ b.T, rel)
        single.backward()
        x, y = img[mine].clone().requires_grad_(), txt[mine].clone().requires_grad_()
        part = GlobalBatchLoss(loss)(x, y, rel[mine], rel.T[mine].contiguous())
        part.backward()
        total = part.detach().clone()
        dist.all_reduce(total)
        checks = {"loss": (total, single.detach()), "grad img": (x.grad, a.grad[mine]),
                  "grad txt": (y.grad, b.grad[mine])}
        for what, (got, want) in checks.items():
            err = (got - want).abs().max().item()
            if not err <= 1e-6 * max(1.0, want.abs().max().item()):
                failures.append(f"rank {rank} {name} {what}: max error {err:.3g}")
    dist.barrier()
    dist.destroy_process_group()
    if failures:
        sys.exit("\n".join(failures))
    print(f"rank {rank}: {len(losses)} losses equal the single-process ones")


if __name__ == "__main__":
    main()
