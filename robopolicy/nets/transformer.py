"""Transformer-encoder denoiser: one token per action plus one prefix token for cond.

Token i (action) = Linear(x_i) + learned position embedding_i + timestep embedding(t_i), with
t broadcast along T when it is per sample (B,). The observation conditioning enters as a prefix
token (Linear(cond) + its own learned embedding) that every action token attends to; a prefix
token is simpler and cheaper than cross-attention for a single global conditioning vector.
Attention is bidirectional (the whole chunk is denoised jointly).
"""

import torch
from torch import nn

from robopolicy.nets.embeddings import TimestepEmbedding, timesteps_per_element


class TransformerDenoiser(nn.Module):
    """Denoiser (B, T, Da), t (B,) | (B, T), cond (B, Dc) -> (B, T, Da); T <= horizon."""

    def __init__(self, action_dim: int, cond_dim: int, horizon: int, d_model: int = 128,
                 n_heads: int = 4, n_layers: int = 4, ff_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        self.horizon = horizon
        self.action_proj = nn.Linear(action_dim, d_model)
        self.cond_proj = nn.Linear(cond_dim, d_model)
        self.pos_emb = nn.Parameter(torch.randn(1, horizon + 1, d_model) * 0.02)  # cond + T
        self.time_emb = TimestepEmbedding(d_model)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, ff_mult * d_model, dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, n_layers, norm=nn.LayerNorm(d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(d_model, action_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, T, Da), t (B,) or (B, T) in [0, 1000], cond (B, Dc) -> (B, T, Da)."""
        batch, horizon, _ = x.shape
        if horizon > self.horizon:
            raise ValueError(f"TransformerDenoiser was built for horizon T<={self.horizon}, "
                             f"got T={horizon}")
        t = timesteps_per_element(t, batch, horizon).to(x.device)  # (B, T)
        tokens = self.action_proj(x) + self.time_emb(t)  # (B, T, d)
        prefix = self.cond_proj(cond).unsqueeze(1)  # (B, 1, d)
        h = torch.cat([prefix, tokens], dim=1) + self.pos_emb[:, : horizon + 1]  # (B, 1 + T, d)
        h = self.encoder(h)  # (B, 1 + T, d)
        return self.head(h[:, 1:])  # (B, T, Da)
