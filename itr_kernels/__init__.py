"""itr_kernels: fused CPU/CUDA ranking losses for image-text retrieval, as torch custom ops.

Every public function has a pure-PyTorch twin in `itr_kernels.reference`."""
from . import reference
from ._ops import build_info
from .bcls import kendall_loss, listnet_loss, ranknet_loss, smooth_ap_loss, triplet_sn_loss
from .losses import infonce_loss, smooth_ndcg_loss, smooth_rank, triplet_loss
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
    "TripletSNITRLoss",
    "ContinuousLabelLoss",
    "reference",
]
