"""A visual-semantic embedding (VSE) model over precomputed features: an image projection (regions
averaged when there are regions) and a text projection over frozen sentence-encoder features, into
a shared unit-norm space. Scores are cosine similarities, images x captions."""
import torch
from torch import nn
from torch.nn import functional as F


def _projection(in_dim, embed_dim, hidden, dropout):
    if hidden <= 0:
        return nn.Linear(in_dim, embed_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, embed_dim))


class VSEModel(nn.Module):
    def __init__(self, image_dim, text_dim, embed_dim=256, hidden=1024, dropout=0.1):
        super().__init__()
        self.image_norm = nn.LayerNorm(image_dim)
        self.image_proj = _projection(image_dim, embed_dim, hidden, dropout)
        self.text_proj = _projection(text_dim, embed_dim, hidden, dropout)

    def embed_images(self, feats):
        if feats.dim() == 3:             # (N, regions, D): average the regions
            feats = feats.mean(1)
        return F.normalize(self.image_proj(self.image_norm(feats)), dim=-1)

    def embed_texts(self, feats):
        return F.normalize(self.text_proj(feats), dim=-1)

    def forward(self, image_feats, text_feats):
        """Unit-norm embeddings (image, text); their product is the (B_img, B_txt) cosine scores.
        Embeddings, not scores, so that a distributed run can gather them (itr_kernels.distributed)."""
        return self.embed_images(image_feats), self.embed_texts(text_feats)

    @torch.no_grad()
    def similarity(self, image_feats, text_feats, batch=4096):
        """Evaluation scores (n_images, n_captions), embedding in batches."""
        img = torch.cat([self.embed_images(image_feats[s:s + batch]) for s in range(0, len(image_feats), batch)])
        txt = torch.cat([self.embed_texts(text_feats[s:s + batch]) for s in range(0, len(text_feats), batch)])
        return img.float() @ txt.float().T
