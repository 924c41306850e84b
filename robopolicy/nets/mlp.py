"""Residual MLP denoiser over the flattened action chunk.

Input: [x flattened (T * Da), per-element timestep embeddings flattened (T * E), cond (Dc)].
A per-sample t (B,) is broadcast to (B, T) first, so both timestep shapes take one path.
"""

import torch
from einops import rearrange
from torch import nn

from robopolicy.nets.embeddings import TimestepEmbedding, timesteps_per_element


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual block: x + Linear(Mish(Linear(LayerNorm(x))))."""

    def __init__(self, dim: int, expansion: int = 2):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim * expansion), nn.Mish(),
                                 nn.Linear(dim * expansion, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class MLPDenoiser(nn.Module):
    """Denoiser (B, T, Da), t (B,) | (B, T), cond (B, Dc) -> (B, T, Da); T fixed to horizon."""

    def __init__(self, action_dim: int, cond_dim: int, horizon: int, hidden_dim: int = 512,
                 n_layers: int = 3, time_embed_dim: int = 32):
        super().__init__()
        self.action_dim = action_dim
        self.horizon = horizon
        self.time_emb = TimestepEmbedding(time_embed_dim)
        in_dim = horizon * (action_dim + time_embed_dim) + cond_dim
        self.inp = nn.Linear(in_dim, hidden_dim)
        self.blocks = nn.Sequential(*[ResidualMLPBlock(hidden_dim) for _ in range(n_layers)])
        self.out = nn.Sequential(nn.LayerNorm(hidden_dim),
                                 nn.Linear(hidden_dim, horizon * action_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, T, Da), t (B,) or (B, T) in [0, 1000], cond (B, Dc) -> (B, T, Da)."""
        batch, horizon, _ = x.shape
        if horizon != self.horizon:
            raise ValueError(f"MLPDenoiser was built for horizon T={self.horizon}, got T={horizon}")
        t = timesteps_per_element(t, batch, horizon).to(x.device)  # (B, T)
        temb = rearrange(self.time_emb(t), "b t e -> b (t e)")
        h = torch.cat([rearrange(x, "b t a -> b (t a)"), temb, cond], dim=-1)  # (B, T(Da+E)+Dc)
        h = self.blocks(self.inp(h))  # (B, H)
        return rearrange(self.out(h), "b (t a) -> b t a", t=horizon)
