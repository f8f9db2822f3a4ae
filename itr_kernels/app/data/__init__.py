"""Data for the reference training loop: the field's precomputed format (SCAN / VSE++), a builder
that makes it from a folder of images and a captions file, the embedded emoji default, caption
encoders and RSC relevance (Li et al., arXiv:2305.16566)."""
from .precomp import PrecompSplit, load_split, write_split
from .text import caption_encoder, encode_captions, rsc_relevance

__all__ = ["PrecompSplit", "load_split", "write_split", "caption_encoder", "encode_captions", "rsc_relevance"]
