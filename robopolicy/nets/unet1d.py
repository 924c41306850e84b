"""Conditional 1-D UNet denoiser over the action horizon (diffusion-policy style).

Conv1d residual blocks (GroupNorm + Mish) with FiLM conditioning in every block, two resolution
changes per level (stride-2 conv down, transposed conv up) and skip connections.

Conditioning vector: c = [timestep embedding (E), cond (Dc)].
- t of shape (B,): c is (B, E + Dc) and every FiLM scale/bias is constant along T.
- t of shape (B, T): c is per position, (B, T, E + Dc). At a level of length L = T / 2**i the
  conditioning is average-pooled along T over windows of 2**i positions (the window a
  downsampled position covers) and the FiLM layer is applied per position, so each block gets a
  (B, C, L) scale and bias. With all-equal per-element timesteps this is the per-sample case.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from robopolicy.nets.embeddings import TimestepEmbedding, is_per_element


class Conv1dBlock(nn.Sequential):
    """Conv1d -> GroupNorm -> Mish, length-preserving."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, n_groups: int = 8):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(n_groups, out_ch),
            nn.Mish(),
        )


class ConditionalResidualBlock1D(nn.Module):
    """Two Conv1dBlocks with a FiLM (scale, bias) from the conditioning between them."""

    def __init__(self, in_ch: int, out_ch: int, cond_dim: int, kernel_size: int = 5,
                 n_groups: int = 8):
        super().__init__()
        self.blocks = nn.ModuleList([Conv1dBlock(in_ch, out_ch, kernel_size, n_groups),
                                     Conv1dBlock(out_ch, out_ch, kernel_size, n_groups)])
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * out_ch))
        self.residual = nn.Conv1d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, L); c (B, Dcond) or per position (B, L, Dcond) -> (B, C_out, L)."""
        out = self.blocks[0](x)  # (B, C, L)
        film = self.film(c)  # (B, 2C) or (B, L, 2C)
        if film.dim() == 2:
            film = rearrange(film, "b c -> b c 1")
        else:
            film = rearrange(film, "b l c -> b c l")
        scale, bias = film.chunk(2, dim=1)  # (B, C, 1|L) each
        out = self.blocks[1](scale * out + bias)  # (B, C, L)
        return out + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Denoiser (B, T, Da), t (B,) | (B, T), cond (B, Dc) -> (B, T, Da).

    T must be divisible by 2**(len(down_dims) - 1): every level but the last halves it.
    """

    def __init__(self, action_dim: int, cond_dim: int, horizon: int,
                 down_dims: tuple[int, ...] = (64, 128, 256), kernel_size: int = 5,
                 n_groups: int = 8, diffusion_step_embed_dim: int = 128):
        super().__init__()
        self.horizon = horizon
        self.factor = 2 ** (len(down_dims) - 1)
        self._check_horizon(horizon)
        self.time_emb = TimestepEmbedding(diffusion_step_embed_dim)
        c_dim = diffusion_step_embed_dim + cond_dim

        def block(i, o):
            return ConditionalResidualBlock1D(i, o, c_dim, kernel_size, n_groups)

        dims = [action_dim, *down_dims]
        in_out = list(zip(dims[:-1], dims[1:], strict=True))
        self.down = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i == len(in_out) - 1
            resample = nn.Identity() if last else nn.Conv1d(d_out, d_out, 3, 2, 1)  # L -> L/2
            self.down.append(nn.ModuleList([block(d_in, d_out), block(d_out, d_out), resample]))
        mid = down_dims[-1]
        self.mid = nn.ModuleList([block(mid, mid), block(mid, mid)])
        self.up = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            self.up.append(nn.ModuleList([block(2 * d_out, d_in), block(d_in, d_in),
                                          nn.ConvTranspose1d(d_in, d_in, 4, 2, 1)]))  # L -> 2L
        self.final = nn.Sequential(Conv1dBlock(down_dims[0], down_dims[0], kernel_size, n_groups),
                                   nn.Conv1d(down_dims[0], action_dim, 1))

    def _check_horizon(self, horizon: int) -> None:
        if horizon % self.factor:
            raise ValueError(f"ConditionalUnet1D needs the horizon T divisible by {self.factor} "
                             f"(2**(len(down_dims)-1)), got T={horizon}; pick T as a multiple "
                             f"of {self.factor} or use fewer down_dims")

    def _conditioning(self, t: torch.Tensor, cond: torch.Tensor, horizon: int) -> torch.Tensor:
        """(B, E + Dc) for per-sample t, (B, T, E + Dc) for per-element t."""
        batch = cond.shape[0]
        if not is_per_element(t, batch, horizon):
            t = torch.as_tensor(t, dtype=torch.float32, device=cond.device).expand(batch)  # (B,)
            return torch.cat([self.time_emb(t), cond], dim=-1)  # (B, E + Dc)
        cond = cond.unsqueeze(1).expand(-1, horizon, -1)  # (B, T, Dc)
        return torch.cat([self.time_emb(t), cond], dim=-1)  # (B, T, E + Dc)

    @staticmethod
    def _at_length(c: torch.Tensor, length: int) -> torch.Tensor:
        """Average-pool per-position conditioning (B, T, D) to (B, L, D); global c passes."""
        if c.dim() == 2 or c.shape[1] == length:
            return c
        window = c.shape[1] // length
        pooled = F.avg_pool1d(rearrange(c, "b t d -> b d t"), window)  # (B, D, L)
        return rearrange(pooled, "b d l -> b l d")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x (B, T, Da), t (B,) or (B, T) in [0, 1000], cond (B, Dc) -> (B, T, Da)."""
        self._check_horizon(x.shape[1])
        c = self._conditioning(t, cond, x.shape[1])  # (B, Dcond) or (B, T, Dcond)
        h = rearrange(x, "b t a -> b a t")  # channels first for Conv1d
        skips = []
        for res1, res2, downsample in self.down:
            ci = self._at_length(c, h.shape[-1])
            h = res2(res1(h, ci), ci)  # (B, C, L)
            skips.append(h)
            h = downsample(h)  # (B, C, L/2), last level unchanged
        ci = self._at_length(c, h.shape[-1])
        for res in self.mid:
            h = res(h, ci)  # (B, C, L)
        for res1, res2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, 2C, L)
            ci = self._at_length(c, h.shape[-1])
            h = upsample(res2(res1(h, ci), ci))  # (B, C', 2L)
        return rearrange(self.final(h), "b a t -> b t a")
