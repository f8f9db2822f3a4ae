"""itr_kernels: fused CPU/CUDA ranking losses for image-text retrieval, as torch custom ops.

The math and conventions of every public name are in the repository's docs/ (docs/README.md lists
them). Every loss function and score-matrix module has a pure-PyTorch twin in `itr_kernels.reference`."""
from . import distributed, metrics, reference
from ._ops import build_info
from .bcls import kendall_loss, listnet_loss, ranknet_loss, smooth_ap_loss, triplet_sn_loss
from .distributed import GlobalReduction
from .embedding import EmbeddingLoss, GlobalBatchLoss
from .losses import Reducer, infonce_loss, smooth_ndcg_loss, smooth_rank, triplet_loss
from .modules import (BCLSLoss, InfoNCELoss, KendallRankLoss, ListwiseITRLoss, SmoothNDCGLoss, TripletLoss,
                      TripletSNLoss)
from .composed import ContinuousLabelLoss, TripletSNITRLoss

__version__ = "0.1.0"
__all__ = [
    "build_info",
    "smooth_rank",
    "smooth_ndcg_loss",
    "triplet_loss",
    "infonce_loss",
    "SmoothNDCGLoss",
    "ListwiseITRLoss",
    "TripletLoss",
    "InfoNCELoss",
    "triplet_sn_loss",
    "kendall_loss",
    "ranknet_loss",
    "smooth_ap_loss",
    "listnet_loss",
    "TripletSNLoss",
    "KendallRankLoss",
    "BCLSLoss",
    "EmbeddingLoss",
    "GlobalBatchLoss",
    "GlobalReduction",
    "Reducer",
    "TripletSNITRLoss",
    "ContinuousLabelLoss",
    "reference",
    "distributed",
    "metrics",
]
