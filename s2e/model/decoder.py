"""Anchor queries and THE anchor-to-context cross-attention block.

:class:`AnchorCrossAttention` is deliberately its own module with the signature
``forward(queries, context, context_padding_mask=None) -> queries``: the policy holds it under one
attribute (``S2EPolicy.cross_attention``), so the Residual Attention Module of RL post-training can
wrap it by replacing that attribute, leaving every pretrained weight elsewhere untouched.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class AnchorQueries(nn.Module):
    """One query per anchor: an MLP embedding of its intent point plus a learned per-anchor embedding
    (the point says *where* the anchor goes; the free embedding lets anchors with nearby endpoints
    but different shapes differ)."""

    def __init__(self, num_anchors: int, d_model: int) -> None:
        super().__init__()
        self.point_mlp = nn.Sequential(nn.Linear(2, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.anchor_embedding = nn.Parameter(torch.zeros(num_anchors, d_model))
        nn.init.normal_(self.anchor_embedding, std=0.02)

    def forward(self, anchor_points: Tensor, batch_size: int) -> Tensor:
        """anchor_points: [M, 2] -> queries [B, M, D]."""
        queries = self.point_mlp(anchor_points) + self.anchor_embedding
        return queries[None].expand(batch_size, -1, -1)


class _CrossAttentionLayer(nn.Module):
    """Pre-norm: queries attend to the context, then to each other (anchors compete), then an MLP."""

    def __init__(self, d_model: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_ctx = nn.LayerNorm(d_model)
        self.cross = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_self = nn.LayerNorm(d_model)
        self.self_attn = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, d_model * ff_mult), nn.GELU(), nn.Dropout(dropout), nn.Linear(d_model * ff_mult, d_model))

    def forward(self, queries: Tensor, context: Tensor, context_padding_mask: Optional[Tensor] = None) -> Tensor:
        ctx = self.norm_ctx(context)
        q = self.norm_q(queries)
        queries = queries + self.cross(q, ctx, ctx, key_padding_mask=context_padding_mask, need_weights=False)[0]
        q = self.norm_self(queries)
        queries = queries + self.self_attn(q, q, q, need_weights=False)[0]
        return queries + self.ff(self.norm_ff(queries))


class AnchorCrossAttention(nn.Module):
    """``depth`` cross-attention layers from anchor queries [B, M, D] to context tokens [B, N, D].

    ``context_padding_mask`` [B, N] is True at context tokens to ignore (as in nn.MultiheadAttention).
    """

    def __init__(self, d_model: int, heads: int, depth: int = 1, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList([_CrossAttentionLayer(d_model, heads, ff_mult, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(d_model)

    def forward(self, queries: Tensor, context: Tensor, context_padding_mask: Optional[Tensor] = None) -> Tensor:
        for layer in self.layers:
            queries = layer(queries, context, context_padding_mask)
        return self.norm(queries)
