"""Global-batch losses across processes (torch.distributed: NCCL on GPUs, gloo on CPUs);
docs/distributed.md.

Each process embeds its local batch; `gather_with_grad` all-gathers the embeddings, so each
process scores its local queries against the global candidate list (local rows x global columns,
as open_clip's local loss does), and its backward hands every process the gradient of its own
shard. `GlobalReduction` is the ``reducer`` that makes each process's ``"mean"`` divide by the
global count over the world size (and its ``"sum"`` count W times), so that under
DistributedDataParallel (which averages gradients over processes) the gradients are exactly the
single-process gradients on the concatenated batch, without any manual scaling. `itr_kernels.EmbeddingLoss` (and `GlobalBatchLoss`, its form with
relevance rows) does all of it:

    loss_fn = ik.EmbeddingLoss(ik.ListwiseITRLoss())
    loss = loss_fn(img_local, txt_local, relevance)   # relevance: (B_global, B_global), or a callable
    loss.backward()                                   # under DistributedDataParallel, as is

What it buys: list length = global batch (8 x 128 = 1024 candidates per query on 8 GPUs). What it
costs: one all-gather of B x D embeddings per modality per step, one all-reduce of their gradient,
and one of each loss's normaliser (a scalar). Nothing of size B^2 or B^3 is communicated.
"""
import torch
import torch.distributed as dist

__all__ = ["is_distributed", "world_and_rank", "gather_with_grad", "GlobalReduction", "GlobalBatchLoss"]


def is_distributed() -> bool:
    """Whether a torch.distributed process group with more than one process is initialised
    (docs/distributed.md).

    Returns:
        ``True`` under an initialised group of world size > 1, else ``False``.

    Example:
        >>> is_distributed()
        False
    """
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_and_rank() -> tuple[int, int]:
    """The world size and this process's rank, ``(1, 0)`` without a process group
    (docs/distributed.md).

    Returns:
        ``(world_size, rank)``.

    Example:
        >>> world_and_rank()
        (1, 0)
    """
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


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather the rows of ``x`` from every process, in rank order; differentiable
    (docs/distributed.md, "gather_with_grad").

    The backward sums the gathered tensor's gradient over the processes and returns this process's
    slice: the gradient of its shard with respect to every process's loss.

    Args:
        x: (b, ...) this process's rows; every process must pass the same number of rows.

    Shape:
        Output: (world_size * b, ...).

    Returns:
        The rows of every process, concatenated in rank order; ``x`` itself without an initialised
        process group (or with one process).

    Example:
        >>> x = torch.randn(4, 8)
        >>> gather_with_grad(x) is x   # no process group here
        True
    """
    if not is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.long, device=x.device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], device=x.device))
    if len({int(s) for s in sizes}) != 1:
        raise ValueError(f"gather_with_grad: every process must pass the same number of rows, got "
                         f"{[int(s) for s in sizes]} (use drop_last batches)")
    return _GatherWithGrad.apply(x)


class GlobalReduction:
    """The `itr_kernels.Reducer` of losses on local rows against a global batch
    (docs/distributed.md, "How the reductions are normalised").

    ``"mean"``: it all-reduces (sums) the loss's local count over the processes, in float64
    outside autograd, and returns ``max(1, global count) / world_size`` (``ddp_average=True``) or
    ``max(1, global count)`` (``False``). ``"sum"``: ``1 / world_size`` or 1, with no
    communication. With ``ddp_average=True`` each process's value is its local estimate of the
    global loss (the mean over processes of the values is the global-batch loss), and
    DistributedDataParallel's gradient averaging yields exactly the single-process gradient; with
    ``False`` the processes' values add up to the global-batch loss. Without a process group it is
    the default reduction. A ``"mean"`` is a collective: every process must make the same
    sequence of loss calls.

    Args:
        ddp_average: scale for DistributedDataParallel's gradient averaging (divide by the world size).

    Shape:
        ``count``: a scalar tensor; ``reduction``: ``"sum"`` or ``"mean"``. Output: a scalar
        float64 tensor.

    Returns:
        What this process's sum of local rows is divided by.

    Example:
        >>> from itr_kernels import smooth_ndcg_loss
        >>> s, r = torch.randn(4, 6), torch.rand(4, 6)
        >>> torch.allclose(smooth_ndcg_loss(s, r, reducer=GlobalReduction()), smooth_ndcg_loss(s, r))
        True
    """

    def __init__(self, ddp_average: bool = True) -> None:
        self.ddp_average = bool(ddp_average)

    def __call__(self, count: torch.Tensor, reduction: str) -> torch.Tensor:
        world = dist.get_world_size() if is_distributed() else 1
        scale = world if self.ddp_average else 1
        if reduction == "sum":
            return torch.tensor(1 / scale, dtype=torch.float64, device=count.device)
        total = count.detach().to(torch.float64).clone()
        if world > 1:
            dist.all_reduce(total)
        return total.clamp(min=1) / scale

    def __repr__(self) -> str:
        return f"GlobalReduction(ddp_average={self.ddp_average})"


def __getattr__(name):
    # GlobalBatchLoss lives with EmbeddingLoss, which builds on this module (no import cycle).
    if name == "GlobalBatchLoss":
        from .embedding import GlobalBatchLoss
        return GlobalBatchLoss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
