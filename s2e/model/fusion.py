"""Self-attention fusion of the k frame tokens and the goal token into the policy's context."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ContextFusion(nn.Module):
    """A pre-norm Transformer encoder over [frame_1 .. frame_k, goal] tokens.

    Learned temporal embeddings tell the frames apart (they arrive in time order, oldest first) and
    a type embedding marks the goal token. The output is the context the anchor queries attend to.
    """

    def __init__(self, d_model: int, context_frames: int, depth: int, heads: int, ff_mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        self.time_embedding = nn.Parameter(torch.zeros(context_frames, d_model))
        self.goal_embedding = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.time_embedding, std=0.02)
        nn.init.normal_(self.goal_embedding, std=0.02)
        layer = nn.TransformerEncoderLayer(d_model, heads, d_model * ff_mult, dropout, activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)

    def forward(self, frame_tokens: Tensor, goal_token: Tensor) -> Tensor:
        """frame_tokens: [B, k, D]; goal_token: [B, D] -> context [B, k + 1, D]."""
        tokens = torch.cat([frame_tokens + self.time_embedding, (goal_token + self.goal_embedding)[:, None]], dim=1)
        return self.encoder(tokens)
