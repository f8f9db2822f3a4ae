"""Global-batch losses across processes (torch.distributed: NCCL on GPUs, gloo on CPUs).

Each process embeds its local batch; `gather_with_grad` all-gathers the embeddings, so each
process scores its local queries against the global candidate list (local rows x global columns,
as open_clip's local loss does), and its backward hands every process exactly the gradient of its
own shard. `GlobalBatchLoss` wraps the project's losses so that the losses of all processes add up
to the single-process loss on the concatenated batch, and so do the gradients:

    loss = GlobalBatchLoss(ik.ListwiseITRLoss())(img_local, txt_local, rel_i2t_rows, rel_t2i_rows)
    (loss * world_size).backward()    # under DistributedDataParallel, which averages gradients

What it buys: list length = global batch (8 x 128 = 1024 candidates per query on 8 GPUs). What it
costs: one all-gather of B x D embeddings per modality per step, one all-reduce of their gradient,
and one of each loss's normaliser (a scalar). Nothing of size B^2 or B^3 is communicated.
"""
import contextlib

import torch
import torch.distributed as dist

from . import losses


def is_distributed():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_and_rank():
    return (dist.get_world_size(), dist.get_rank()) if is_distributed() else (1, 0)


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        world, rank = world_and_rank()
        ctx.rank, ctx.rows = rank, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        # Every process's loss reads every shard: the gradient of shard r is the sum over processes
        # of their gradients with respect to it (a reduce-scatter; all-reduce + slice runs on gloo too).
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_with_grad(x):
    """All-gather (rows of) `x` from every process, in rank order; differentiable. Every process
    must pass the same number of rows. Without an initialised process group it returns `x`."""
    if not is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"gather_with_grad: every process must pass the same number of rows, got "
                         f"{[int(s) for s in sizes]} (use drop_last batches)")
    return _GatherWithGrad.apply(x)


@contextlib.contextmanager
def global_mean():
    """Inside, every loss's "mean" divides by the count summed over all processes (rows, pairs,
    rows with gain), so the processes' losses add up to the mean over the global batch."""
    def all_reduce_count(count):
        count = count.detach().clone().to(torch.float64)
        dist.all_reduce(count)
        return count
    previous = losses.set_denominator_hook(all_reduce_count if is_distributed() else None)
    try:
        yield
    finally:
        losses.set_denominator_hook(previous)


class GlobalBatchLoss(torch.nn.Module):
    """Any of the project's in-batch ITR losses on local rows x global columns.

    `loss` is a module taking (scores, relevance_i2t, relevance_t2i, positives=, scores_t2i=):
    ListwiseITRLoss, BCLSLoss, or `triplet`/`triplet_sn` via TripletLoss-like wrappers with that
    signature. forward(img, txt, relevance_i2t, relevance_t2i) takes this process's embeddings
    (B_local, D) and the relevance of its rows against the global batch: (B_local, B_global) for
    local images x global captions and local captions x global images. Returns this process's part
    of the global loss; the parts add up to the single-process loss on the concatenated batch."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, img, txt, relevance_i2t=None, relevance_t2i=None):
        world, rank = world_and_rank()
        img_all, txt_all = gather_with_grad(img), gather_with_grad(txt)
        scores_i2t, scores_t2i = img @ txt_all.T, txt @ img_all.T
        positives = torch.arange(rank * img.shape[0], (rank + 1) * img.shape[0], device=img.device)
        with global_mean():
            return self.loss(scores_i2t, relevance_i2t, relevance_t2i, positives=positives, scores_t2i=scores_t2i)
