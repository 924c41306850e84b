"""Streaming diffusion (Streaming Diffusion Policy): noise levels rise along the action buffer.

The horizon after the ``o = To - 1`` past steps is cut into ``h = (T - o) / Ta`` chunks of
``Ta`` actions (the past steps belong to chunk 0). Between calls, chunk ``j`` has
``(j + 1) * s`` of the ``K`` sampling steps left, ``s = K / h``. A call runs ``s`` steps with
one timestep per element, which makes chunk 0 clean; its ``Ta`` actions are returned, the
buffer shifts by ``Ta``, fresh noise fills the last chunk, and the past steps are noised back
to chunk 0's level. So a call costs ``K / h`` network evaluations instead of ``K``; the first
call of an episode walks the all-noise buffer down to that staircase (``K`` in total).

Training mixes the two noise regimes the sampler meets: chunk-wise levels (chunk ``j`` at a
level in ``[j, j + 1) * N / h``) and one level for the whole chunk (as plain diffusion).
Buffers live in a :class:`StreamState`, one row per environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionModel


@dataclass
class StreamingConfig(DiffusionConfig):
    family: ClassVar[str] = "streaming"
    horizon: int = 16
    n_obs_steps: int = 1
    n_action_steps: int = 4
    num_inference_steps: int = 16  # K, a multiple of the number of chunks
    p_constant_noise: float = 0.5  # share of training samples with one level for all elements

    @property
    def n_chunks(self) -> int:  # h
        return (self.horizon - self.n_obs_steps + 1) // self.n_action_steps

    def validate(self) -> None:
        super().validate()
        future = self.horizon - self.n_obs_steps + 1
        if future % self.n_action_steps or self.num_inference_steps % self.n_chunks:
            raise ConfigError(
                f"streaming: horizon - n_obs_steps + 1 = {future} must be a multiple of "
                f"n_action_steps = {self.n_action_steps}, and num_inference_steps = "
                f"{self.num_inference_steps} a multiple of the chunk count {future} // "
                f"{self.n_action_steps}")


@dataclass
class StreamState:
    """Per-environment buffers: actions (N, T, Da), sampling steps left per element (N, T),
    and which environments start a new episode at their next call."""

    x: torch.Tensor
    left: torch.Tensor
    fresh: np.ndarray


class StreamingDiffusionModel(DiffusionModel):
    config_class = StreamingConfig
    config: StreamingConfig

    def __init__(self, config: StreamingConfig):
        super().__init__(config)
        past = config.n_obs_steps - 1
        chunk = (torch.arange(config.horizon) - past).clamp(min=0) // config.n_action_steps
        self.register_buffer("chunk_of", chunk, persistent=False)  # (T,) chunk of each element

    @property
    def steps_per_call(self) -> int:  # s
        return self.config.num_inference_steps // self.config.n_chunks

    # ------------------------------------------------------------------ training
    def training_steps(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """One train step per element (B, T): the chunk-wise staircase, or one level for the
        whole chunk with probability ``p_constant_noise``."""
        n = self.config.num_train_timesteps
        u = torch.rand(batch_size, 1, device=device)  # (B, 1) offset within a chunk's band
        chunkwise = ((self.chunk_of + u) * n / self.config.n_chunks).long()  # (B, T)
        constant = torch.randint(0, n, (batch_size, 1), device=device).expand_as(chunkwise)
        pick = torch.rand(batch_size, 1, device=device) < self.config.p_constant_noise
        return torch.where(pick, constant, chunkwise).clamp(max=n - 1)  # (B, T)

    # ------------------------------------------------------------------ streaming
    def init_state(self, n_envs: int) -> StreamState:
        device = self.alphas_cumprod.device
        shape = (n_envs, self.config.horizon, self.action_dim)
        return StreamState(torch.zeros(shape, device=device),
                           torch.zeros(shape[:2], dtype=torch.long, device=device),
                           np.ones(n_envs, bool))

    def reset_state(self, state: StreamState, mask: np.ndarray) -> None:
        state.fresh |= np.asarray(mask, bool)

    def _advance(self, x, left, target, cond, generator=None):
        """One step for the elements with more than ``target`` steps left (others stay)."""
        active = left > target  # (B, T)
        k = (left - 1).clamp(min=0) * self.step_ratio()  # (B, T) train step of each element
        mean, std = self.denoise_step(x, k, cond)
        noise = torch.randn(x.shape, generator=generator, device=x.device)
        stepped = mean + std * noise
        return torch.where(active.unsqueeze(-1), stepped, x), left - active.long()

    def stream(self, x, left, cond, generator=None):
        """Bring a buffer to the staircase if needed, then run one call's ``s`` steps."""
        s = self.steps_per_call
        staircase = ((self.chunk_of + 1) * s).expand_as(left)  # (B, T)
        while bool((left > staircase).any()):  # only at an episode's first call
            x, left = self._advance(x, left, staircase, cond, generator)
        for _ in range(s):
            x, left = self._advance(x, left, staircase - s, cond, generator)
        return x, left

    def shift(self, x, left, generator=None):
        """Drop the executed chunk, append fresh noise, noise the past back to chunk 0's level."""
        ta, past, s = self.config.n_action_steps, self.config.n_obs_steps - 1, self.steps_per_call
        fresh = torch.randn(x[:, :ta].shape, generator=generator, device=x.device)
        x = torch.cat([x[:, ta:], fresh], dim=1)  # (B, T, Da)
        left = torch.cat([left[:, ta:], torch.full_like(left[:, :ta],
                                                         self.config.num_inference_steps)], 1)
        if past:
            k = torch.full_like(left[:, :past], (s - 1) * self.step_ratio())  # (B, o)
            a = self.alpha_bar(k)  # (B, o, 1)
            noise = torch.randn(x[:, :past].shape, generator=generator, device=x.device)
            x[:, :past] = a.sqrt() * x[:, :past] + (1 - a).sqrt() * noise
            left[:, :past] = s
        return x, left

    def sample(self, cond, noise=None, steps=None, generator=None):
        """A fresh buffer streamed once: the first ``Ta`` actions (after the past) are clean;
        later chunks are still partly noisy (they are finished by later calls)."""
        if steps is not None and steps != self.config.num_inference_steps:
            raise ConfigError("streaming: the step count is fixed by num_inference_steps")
        x = self.noise_like_actions(len(cond), generator) if noise is None else noise
        left = torch.full(x.shape[:2], self.config.num_inference_steps, device=x.device)
        return self.stream(x, left.long(), cond, generator)[0]

    @torch.no_grad()
    def predict_action(self, obs, noise=None, state: StreamState | None = None,
                       env_ids: np.ndarray | None = None):
        """Without ``state``: one fresh buffer (costs K). With it: continue the buffers of
        ``env_ids`` (all envs by default), costing K / h per call after each episode's first."""
        if state is None:
            return super().predict_action(obs, noise=noise)
        ids = np.arange(len(state.fresh)) if env_ids is None else np.asarray(env_ids)
        cond = self.encode_obs(obs)
        x, left = state.x[ids], state.left[ids]
        new = torch.as_tensor(state.fresh[ids], device=x.device)
        start = self.noise_like_actions(len(ids)) if noise is None else noise
        x = torch.where(new.view(-1, 1, 1), start, x)
        left = torch.where(new.view(-1, 1), self.config.num_inference_steps, left)
        x, left = self.stream(x, left, cond)
        action = self.normalizer.unnormalize(self.config.action_key, x)
        state.x[ids], state.left[ids] = self.shift(x, left)
        state.fresh[ids] = False
        past = self.config.n_obs_steps - 1
        return {"action": action[:, past:past + self.config.n_action_steps],
                "action_pred": action}
