"""Reference training loop: a VSE model trained with the fused ranking losses, evaluated with
R@K, rsum, NDCG@k (RSC relevance), mAP@R and Kendall tau.

    python train.py                                   # configs/default.yaml: listwise, emoji data
    python train.py --config configs/bcls.yaml seed=1 epochs=20 loss_args.mu=0.5
    python train.py --config configs/triplet.yaml --resume runs/triplet/last.pt
    python train.py --config configs/infonce_kendall.yaml loss_args.weight=0.5   # InfoNCE + Kendall
    torchrun --nproc_per_node=8 train.py --config configs/listwise.yaml   # global batch 8 x batch_size

Writes to out_dir: last.pt (every epoch, for --resume), best.pt (best dev rsum), log.csv,
TensorBoard events, test_report.json and curves.png.
"""
import argparse
import csv
import functools
import inspect
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

import itr_kernels as ik
from itr_kernels import metrics
from itr_kernels.distributed import GlobalBatchLoss, world_and_rank

from . import checkpoint
from .config import load_config
from .data import rsc_relevance
from .data.loading import load_data, pick_device
from .vse import VSEModel

# A continuous-label term on a pairwise base, "<base>_<term>" (ik.ContinuousLabelLoss); two of them
# have their own names: listwise = triplet + S-NDCG, bcls = triplet_sn + Kendall.
COMBINATIONS = {f"{base}_{term}": (base, term) for base in ik.composed.BASES for term in ik.composed.TERMS
                if (base, term) not in (("triplet", "sndcg"), ("triplet_sn", "kendall"))}
LOSSES = {"triplet": ik.TripletLoss, "listwise": ik.ListwiseITRLoss, "bcls": ik.BCLSLoss, "infonce": ik.InfoNCELoss,
          "triplet_sn": ik.TripletSNITRLoss,
          **{name: functools.partial(ik.ContinuousLabelLoss, *pair) for name, pair in COMBINATIONS.items()}}


def loss_arguments(name):
    """The loss_args keys that loss `name` takes."""
    if name in COMBINATIONS:
        return ["weight", "mix"] + ik.ContinuousLabelLoss.accepted_arguments(*COMBINATIONS[name])
    return [p for p in inspect.signature(LOSSES[name].__init__).parameters if p != "self"]


def make_loss(name, args):
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {sorted(LOSSES)}, got {name!r}")
    cls = LOSSES[name]
    accepted = loss_arguments(name)
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ValueError(f"loss_args: unknown argument(s) {unknown} for loss {name!r}; it takes {accepted}")
    return cls(**args)


def init_distributed(device):
    """Under torchrun (WORLD_SIZE > 1): NCCL on GPUs, gloo on CPUs. Returns (world, rank)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world_and_rank()


def max_violation_triplets(loss_fn):
    """The loss's VSE++ triplets configured with max violation (TripletLoss, ListwiseITRLoss and the
    triplet base of a ContinuousLabelLoss): the ones the max-violation warm-up switches."""
    return [m for m in loss_fn.modules() if getattr(m, "max_violation", None) is True]


def set_max_violation(triplets, epoch, cfg):
    """VSE++ practice: the sum of hinges for the first `max_violation_warmup_epochs` epochs, the
    hardest negative after. A function of the epoch alone, so that a resumed run does the same."""
    for m in triplets:
        m.max_violation = epoch > cfg["max_violation_warmup_epochs"]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step, steps_per_epoch, cfg):
    warm = cfg["warmup_epochs"] * steps_per_epoch
    total = cfg["epochs"] * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def evaluate(model, split, k, full=False):
    model.eval()
    scores = model.similarity(split.images, split.texts)
    # per epoch (not full): recall and NDCG, what picks the best checkpoint and shows progress, cheaply
    out = metrics.evaluate(scores, split.owner, split.relevance(), k, rank_metrics=full)
    model.train()
    return out


def train_epoch(model, loss_fn, opt, sched, split, cfg, epoch, device, bar):
    """One pass over the training images in a permutation fixed by (seed, epoch), one random
    caption per image, so every batch is a square in-batch matrix with positives on the diagonal.

    Under torchrun the global batch is world x batch_size images of that permutation; each process
    embeds its slice and scores it against the gathered global batch (GlobalBatchLoss), so the
    run computes the single-process loss and gradient of the global batch."""
    world, rank = world_and_rank()
    gen = torch.Generator().manual_seed(cfg["seed"] * 100003 + epoch)
    perm = torch.randperm(split.n_images, generator=gen)
    pick = torch.randint(split.m, (split.n_images,), generator=gen)
    bs, gbs = cfg["batch_size"], cfg["batch_size"] * world
    global_loss = GlobalBatchLoss(loss_fn) if world > 1 else None
    use_amp = cfg["amp"] and device.type == "cuda"
    total, grad_norm, steps = 0.0, 0.0, 0
    for s in range(0, split.n_images - gbs + 1, gbs):     # drop_last: every batch is B x B
        img_all = perm[s:s + gbs].to(device)
        cap_all = img_all * split.m + pick[perm[s:s + gbs]].to(device)
        img, cap = img_all[rank * bs:(rank + 1) * bs], cap_all[rank * bs:(rank + 1) * bs]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            img_emb, txt_emb = model(split.images[img], split.texts[cap])
        if global_loss is None:
            loss = loss_fn((img_emb @ txt_emb.T).float(), rsc_relevance(split.texts, split.m, img, cap))
        else:
            rel_i2t = rsc_relevance(split.texts, split.m, img, cap_all)
            rel_t2i = rsc_relevance(split.texts, split.m, img_all, cap).T.contiguous()
            # this process's estimate of the global-batch loss: DDP's gradient averaging gives the
            # single-process gradient of the global batch, with no scaling here
            loss = global_loss(img_emb.float(), txt_emb.float(), rel_i2t, rel_t2i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = list(model.parameters()) + list(loss_fn.parameters())   # a learned temperature too
        if world > 1:
            for p in loss_fn.parameters():     # DDP averages the model's gradients only
                dist.all_reduce(p.grad)
                p.grad /= world
        clip = cfg["grad_clip"] if cfg["grad_clip"] > 0 else float("inf")
        grad_norm += torch.nn.utils.clip_grad_norm_(params, clip).item()   # before clipping
        opt.step()
        sched.step()
        value = loss.detach()
        if world > 1:
            dist.all_reduce(value)             # the processes' estimates average to the global loss
            value /= world
        total += value.item()
        steps += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{total / steps:.4f}")
    return total / max(1, steps), grad_norm / max(1, steps)


def write_curves(history, path, k):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ep = [h["epoch"] for h in history]
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].plot(ep, [h["train_loss"] for h in history], marker="o")
    ax[0].set(title="training loss", xlabel="epoch")
    ax[1].plot(ep, [h["dev_rsum"] for h in history], marker="o", color="C1")
    ax[1].set(title="dev rsum", xlabel="epoch")
    ax[2].plot(ep, [h[f"dev_ndcg@{k}"] for h in history], marker="o", color="C2")
    ax[2].set(title=f"dev NDCG@{k} (RSC)", xlabel="epoch")
    for a in ax:
        a.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rng_states(world):
    """Every process's RNG state (each draws its own dropout masks), gathered for rank 0 to save."""
    mine = checkpoint.rng_state()
    if world == 1:
        return [mine]
    states = [None] * world
    dist.all_gather_object(states, mine)
    return states


def run(cfg, resume=None, log=print, test=True, splits=None, rank_metrics=True):
    """Train by `cfg`; returns the report (also written to test_report.json): the config, the best
    epoch by dev rsum and its dev metrics ("dev"), and, with `test`, the test metrics of that
    checkpoint ("test"). `test=False` (hyper-parameter search) never evaluates the test split.
    `splits` ({"train", "dev", "test"} Split objects) replaces loading cfg["data"] (the re-ranker's
    cross-fitting trains on part of the training split and tests on the rest); `rank_metrics=False`
    leaves the slow mAP@R and Kendall tau out of the test report."""
    from tqdm.auto import tqdm
    device = pick_device(cfg["device"])
    world, rank = init_distributed(device)
    main_process = rank == 0
    if not main_process:
        log = lambda *_: None  # noqa: E731   (rank 0 logs, saves and evaluates)
    if cfg["num_threads"] > 0:
        torch.set_num_threads(cfg["num_threads"])
    seed_everything(cfg["seed"])
    loss_fn = make_loss(cfg["loss"], cfg["loss_args"])
    hard_triplets = max_violation_triplets(loss_fn)
    warmup = cfg["max_violation_warmup_epochs"]
    if warmup < 0:
        raise ValueError(f"max_violation_warmup_epochs must be >= 0, got {warmup}")
    if warmup > 0 and not hard_triplets:
        raise ValueError(f"max_violation_warmup_epochs={warmup}: loss {cfg['loss']!r} has no max-violation "
                         f"triplet to warm up "
                         f"(triplet and triplet_kendall with max_violation, listwise)")
    if warmup > 0:
        log(f"max-violation warm-up: sum of hinges for epochs 1-{warmup}, the hardest negative after")
    out = cfg["out_dir"]
    os.makedirs(out, exist_ok=True)
    if splits is None:
        splits = load_data(cfg, device, log)
    train = splits["train"]
    if train.n_images < cfg["batch_size"] * world:
        raise ValueError(f"batch_size {cfg['batch_size']} x {world} processes exceeds the {train.n_images} "
                         f"training images")
    model = VSEModel(train.images.shape[-1], train.texts.shape[1], cfg["embed_dim"], cfg["hidden"],
                     cfg["dropout"]).to(device)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=cfg["lr"],
                           weight_decay=cfg["weight_decay"])
    steps_per_epoch = train.n_images // (cfg["batch_size"] * world)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps_per_epoch, cfg))
    start, best, history = 1, -1.0, []
    if resume:
        ckpt = checkpoint.load(resume, cfg)
        model.load_state_dict(ckpt["model"])
        loss_fn.load_state_dict(ckpt.get("loss", {}))
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if len(ckpt["rng"]) != world:
            raise ValueError(f"checkpoint {resume!r} was written by {len(ckpt['rng'])} process(es); resume it "
                             f"with as many (now {world}) for an exact continuation")
        checkpoint.set_rng_state(ckpt["rng"][rank])
        start, best, history = ckpt["epoch"] + 1, ckpt["best_rsum"], list(ckpt["history"])
        log(f"resumed from {resume} at epoch {ckpt['epoch']}")
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                        else None)
        log(f"distributed: {world} processes ({dist.get_backend()}), global batch {cfg['batch_size'] * world}")
    k = cfg["eval_k"]
    writer = None
    if cfg["tensorboard"] and main_process:
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(out, "tb"), purge_step=start)
        except ImportError:
            log("tensorboard is not installed (pip install tensorboard): no TensorBoard logs")
    bar = tqdm(total=(cfg["epochs"] - start + 1) * steps_per_epoch, unit="step",
               disable=not (cfg["progress"] and main_process), dynamic_ncols=True, desc=cfg["loss"])
    for epoch in range(start, cfg["epochs"] + 1):
        t0 = time.perf_counter()
        set_max_violation(hard_triplets, epoch, cfg)
        train_loss, grad_norm = train_epoch(net, loss_fn, opt, sched, train, cfg, epoch, device, bar)
        rng = _rng_states(world)
        if main_process:
            dev = evaluate(model, splits["dev"], k)
            row = {"epoch": epoch, "train_loss": train_loss, "grad_norm": grad_norm, "lr": sched.get_last_lr()[0],
                   "seconds": time.perf_counter() - t0, **{f"dev_{n}": v for n, v in dev.items()}}
            history.append(row)
            if writer:
                for n, v in row.items():
                    if n != "epoch":
                        writer.add_scalar(n, v, epoch)
            (bar.write if cfg["progress"] else log)(
                f"epoch {epoch}: loss {train_loss:.4f}  dev rsum {dev['rsum']:.1f}  "
                f"NDCG@{k} {dev[f'ndcg@{k}']:.4f}  ({row['seconds']:.1f} s)")
            state = dict(model=model.state_dict(), loss=loss_fn.state_dict(), optimizer=opt.state_dict(),
                         scheduler=sched.state_dict(), epoch=epoch, best_rsum=max(best, dev["rsum"]), history=history,
                         config=cfg, rng=rng)
            if dev["rsum"] > best:
                best = dev["rsum"]
                checkpoint.save(os.path.join(out, "best.pt"), **state)
            checkpoint.save(os.path.join(out, "last.pt"), **state)
            with open(os.path.join(out, "log.csv"), "w", newline="") as f:   # rewritten: a resume never duplicates rows
                w = csv.DictWriter(f, fieldnames=list(history[0]))
                w.writeheader()
                w.writerows(history)
        if world > 1:
            dist.barrier()
    bar.close()
    if writer:
        writer.close()
    report = None
    if main_process:
        best_ckpt = checkpoint.load(os.path.join(out, "best.pt"), cfg)
        dev = {n[len("dev_"):]: v for n, v in best_ckpt["history"][-1].items() if n.startswith("dev_")}
        report = {"config": cfg, "best_epoch": best_ckpt["epoch"], "dev": dev, "world_size": world,
                  "torch": torch.__version__, "device": str(device)}
        write_curves(history, os.path.join(out, "curves.png"), k)
        if test:
            model.load_state_dict(best_ckpt["model"])
            t = report["test"] = evaluate(model, splits["test"], k, full=rank_metrics)
            with open(os.path.join(out, "test_report.json"), "w") as f:
                json.dump(report, f, indent=2)
            log(f"test (best epoch {best_ckpt['epoch']}): "
                f"i2t R@1 {t['i2t_r1']:.1f} R@5 {t['i2t_r5']:.1f} R@10 {t['i2t_r10']:.1f} | "
                f"t2i R@1 {t['t2i_r1']:.1f} R@5 {t['t2i_r5']:.1f} R@10 {t['t2i_r10']:.1f} | "
                f"rsum {t['rsum']:.1f} | NDCG@{k} {t[f'ndcg@{k}']:.4f}"
                + (f" | Kendall tau {t['kendall_tau']:.4f}" if rank_metrics else ""))
            log(f"wrote {out}/test_report.json, curves.png, log.csv, best.pt, last.pt")
        else:
            log(f"dev (best epoch {best_ckpt['epoch']}): rsum {dev['rsum']:.1f} | NDCG@{k} {dev[f'ndcg@{k}']:.4f} "
                f"(test split not evaluated)")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return report


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    p.add_argument("--resume", default=None, help="checkpoint to resume exactly (e.g. OUT_DIR/last.pt)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of any config value")
    a = p.parse_args(argv)
    try:
        cfg = load_config(a.config, a.overrides)
        report = run(cfg, a.resume)
    except (ValueError, FileNotFoundError, ImportError) as e:
        sys.exit(f"train.py: error: {e}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun a finished run (outputs written, process group destroyed) could still abort
        # in the interpreter's teardown on gloo ("terminate called without an active exception",
        # rank 1, ITR_TEST_SEED=424242): nothing is left to do, so leave without the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return report


if __name__ == "__main__":
    main()
