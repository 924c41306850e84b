"""Timestep embeddings shared by every denoiser backbone.

A timestep is a float in [0, 1000]: diffusion passes the step index k, flow matching passes
1000 * t. It comes either one per sample, shape (B,), or one per horizon element, shape (B, T)
(streaming diffusion gives each action of the chunk its own noise level).
"""

import math

import torch
from torch import nn


class SinusoidalPosEmb(nn.Module):
    """Transformer-style sinusoidal embedding of a float timestep: (...,) -> (..., dim)."""

    def __init__(self, dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"SinusoidalPosEmb dim must be even, got {dim}")
        self.dim = dim
        self.max_period = max_period

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(self.max_period)
                          * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        args = t.float().unsqueeze(-1) * freqs  # (..., dim/2)
        return torch.cat([args.sin(), args.cos()], dim=-1)  # (..., dim)


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding followed by a two-layer Mish MLP: (...,) -> (..., out_dim)."""

    def __init__(self, dim: int, out_dim: int | None = None, hidden_mult: int = 4):
        super().__init__()
        out_dim = out_dim or dim
        self.net = nn.Sequential(
            SinusoidalPosEmb(dim),
            nn.Linear(dim, dim * hidden_mult),
            nn.Mish(),
            nn.Linear(dim * hidden_mult, out_dim),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.net(t)


def timesteps_per_element(t: torch.Tensor | float, batch: int, horizon: int) -> torch.Tensor:
    """Bring a timestep of shape (), (B,) or (B, T) to float (B, T); any other shape is an error.

    A 0-d tensor or Python number is taken as the same step for every sample.
    """
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.dim() == 0:
        return t.expand(batch, horizon)  # (B, T)
    if t.shape == (batch,):
        return t.float().unsqueeze(1).expand(batch, horizon)  # (B, T)
    if t.shape == (batch, horizon):
        return t.float()
    raise ValueError(f"timestep must have shape (B,)=({batch},) or (B, T)=({batch}, {horizon}), "
                     f"got {tuple(t.shape)}")


def is_per_element(t: torch.Tensor | float, batch: int, horizon: int) -> bool:
    """True when t holds one timestep per horizon element (B, T); validates the shape."""
    t = torch.as_tensor(t)
    timesteps_per_element(t, batch, horizon)  # raises on a bad shape
    return t.dim() == 2
