"""Shared building blocks of the networks: timestep embeddings, normalisation, attention (through
`F.scaled_dot_product_attention`), residual blocks, up/down-sampling and the LDM spatial transformer."""

from .attention import AttentionBlock, CrossAttention, heads_for, merge_heads, split_heads
from .embeddings import timestep_embedding
from .norm import GroupNorm32, zero_module
from .resblocks import Downsample, ResBlock, TimestepSequential, Upsample
from .transformer import GEGLU, BasicTransformerBlock, FeedForward, SpatialTransformer

__all__ = [
    "timestep_embedding",
    "GroupNorm32",
    "zero_module",
    "AttentionBlock",
    "CrossAttention",
    "heads_for",
    "split_heads",
    "merge_heads",
    "GEGLU",
    "FeedForward",
    "BasicTransformerBlock",
    "SpatialTransformer",
    "ResBlock",
    "Upsample",
    "Downsample",
    "TimestepSequential",
]
