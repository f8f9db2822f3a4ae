"""The reference training loop: a VSE model trained with the fused ranking losses, evaluated with
R@K, rsum, NDCG@k (RSC relevance), mAP@R and Kendall tau.

    python train.py                                   # configs/default.yaml: listwise, emoji data
    python train.py --config configs/bcls.yaml seed=1 epochs=20 loss_args.mu=0.5
    python train.py --config configs/triplet.yaml --resume runs/triplet/last.pt
    torchrun --nproc_per_node=8 train.py --config configs/listwise.yaml   # global batch 8 x batch_size

The loop itself is itr_kernels/app/train.py (installed as the `itr-train` command with the
`train` extra); this file is its command line in a checkout.
"""
from itr_kernels.app import train_main

if __name__ == "__main__":
    train_main()
