"""Streaming diffusion (Streaming Diffusion Policy): noise levels rise along the action buffer.

The buffer (B, T, Da) is ``o = To - 1`` past steps, then ``h = (T - o) / Ta`` chunks of ``Ta``
actions (the past steps count as chunk 0). Between calls, chunk ``j`` has ``(j + 1) s`` of the
K transitions left (the staircase), ``s = K / h``. A steady-state call runs ``s`` transitions,
every element at its own step index, which makes chunk 0 clean; its ``Ta`` actions are
returned, the buffer shifts by ``Ta``, fresh noise fills the last chunk and the past steps are
re-noised to chunk 0's level. So a call costs ``s = K / h`` network evaluations instead of K.
An episode's first call starts from pure noise: ``K - s`` warm-up transitions, in which only the
elements above the staircase move, bring it there, then the ``s`` steady ones: K in total.

:meth:`StreamingDiffusionModel.stream` is one call as a pure function (buffer, steps left,
cond, noises) -> (chunk, new buffer, new steps left), with a fixed number of network calls
(``s``, or ``K`` with ``warmup``) and no data-dependent branch. :class:`StreamState` is the
bookkeeping around it: one buffer per environment and which of them start an episode.

Training mixes the two noise regimes the sampler meets: chunk-wise levels (chunk ``j`` at a
level in ``[j, j + 1) * N / h``) and one level for the whole chunk (as plain diffusion).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.policies.base import check_shape, expand_step, held_step
from robopolicy.policies.diffusion import DiffusionConfig, DiffusionModel
from robopolicy.policies.protocol import Chain


@dataclass
class StreamingConfig(DiffusionConfig):
    family: ClassVar[str] = "streaming"
    n_obs_steps: int = 1
    n_action_steps: int = 4
    num_inference_steps: int = 16  # K, a multiple of the number of chunks
    p_constant_noise: float = 0.5  # share of training samples with one level for all elements

    @property
    def n_past(self) -> int:  # o
        return self.n_obs_steps - 1

    @property
    def n_chunks(self) -> int:  # h
        return (self.horizon - self.n_past) // self.n_action_steps

    def validate(self) -> None:
        super().validate()
        future = self.horizon - self.n_past
        if future % self.n_action_steps or self.num_inference_steps % self.n_chunks:
            raise ConfigError(
                f"streaming: horizon - n_obs_steps + 1 = {future} must be a multiple of "
                f"n_action_steps = {self.n_action_steps}, and num_inference_steps = "
                f"{self.num_inference_steps} a multiple of the chunk count {future} // "
                f"{self.n_action_steps}")
        if self.n_past > self.n_action_steps:
            raise ConfigError(f"streaming: n_obs_steps - 1 = {self.n_past} must be <= "
                              f"n_action_steps = {self.n_action_steps} (the past kept after a "
                              "call comes from the chunk just executed)")
        if not 0.0 <= self.p_constant_noise <= 1.0:
            raise ConfigError(f"streaming: p_constant_noise={self.p_constant_noise} must be in "
                              "[0, 1]")


class StreamNoise(NamedTuple):
    """Every random draw of one streaming call."""

    transitions: torch.Tensor  # (B, n, T, Da): one per transition, n = s (steady) or K
    new_chunk: torch.Tensor  # (B, Ta, Da): the noise appended at the end after the shift
    past: torch.Tensor  # (B, o, Da): re-noises the kept past steps to chunk 0's level


class StreamCall(NamedTuple):
    """What one streaming call gives back."""

    chunk: torch.Tensor  # (B, T, Da) the denoised buffer: chunk 0 (and the past) clean
    buffer: torch.Tensor  # (B, T, Da) the buffer for the next call
    steps_left: torch.Tensor  # (B, T) the staircase, for the next call
    chain: Chain | None  # the call's transitions, with return_chain


@dataclass
class StreamState:
    """Per-environment bookkeeping around :meth:`StreamingDiffusionModel.stream`."""

    x: torch.Tensor  # (N, T, Da) buffers between calls
    steps_left: torch.Tensor  # (N, T) transitions each element has still to go
    new_episode: np.ndarray  # (N,) bool: start from pure noise at the next call


class StreamingDiffusionModel(DiffusionModel):
    config_class = StreamingConfig
    config: StreamingConfig

    def __init__(self, config: StreamingConfig):
        super().__init__(config)
        chunk = (torch.arange(config.horizon) - config.n_past).clamp(min=0)
        chunk = chunk // config.n_action_steps
        self.register_buffer("chunk_of", chunk, persistent=False)  # (T,) chunk of each element

    @property
    def steps_per_call(self) -> int:  # s
        return self.config.num_inference_steps // self.config.n_chunks

    @property
    def staircase(self) -> torch.Tensor:
        """(T,) transitions left per element between calls: (j + 1) s for chunk j."""
        return (self.chunk_of + 1) * self.steps_per_call

    def resolve(self, num_steps: int | None, eta: float | None) -> tuple[int, float]:
        if num_steps not in (None, self.config.num_inference_steps):
            raise ValueError(f"streaming: the chain has num_inference_steps = "
                             f"{self.config.num_inference_steps} transitions, got {num_steps}")
        return super().resolve(num_steps, eta)

    # ------------------------------------------------------------------ training
    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """One train timestep per element (B, T): the chunk-wise staircase, or one level for
        the whole chunk with probability ``p_constant_noise``."""
        n, device = self.config.num_train_timesteps, self.alphas_cumprod.device
        u = torch.rand(batch_size, 1, generator=generator, device=device)  # offset in a band
        chunkwise = ((self.chunk_of + u) * n / self.config.n_chunks).long()  # (B, T)
        constant = torch.randint(0, n, (batch_size, 1), generator=generator, device=device)
        pick = torch.rand(batch_size, 1, generator=generator, device=device)
        pick = pick < self.config.p_constant_noise  # (B, 1)
        return torch.where(pick, constant, chunkwise).clamp(max=n - 1)  # (B, T)

    # ------------------------------------------------------------------ the transition
    def transition(self, x: torch.Tensor, i: torch.Tensor, coef: tuple[torch.Tensor, ...],
                   cond: torch.Tensor, *, min_std: float, net: nn.Module | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion's transition with a step index per element (B, T); a held element
        (``held_step(i)``, negative) is seen by the network at its level and stays (mean x,
        std 0)."""
        mean, std = super().transition(x, i, coef, cond, min_std=min_std, net=net)
        held = expand_step(i < 0)  # (B, T, 1)
        return torch.where(held, x, mean), torch.where(held, 0.0, std)

    def call_schedule(self, steps_left: torch.Tensor, warmup: bool
                      ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Step index per element (B, T) of each transition of one call (``held_step`` of it
        where an element holds still), and the steps left after it. Warm-up moves only the
        elements above the staircase; each steady transition moves every element by one."""
        n_steps, s = self.config.num_inference_steps, self.steps_per_call
        staircase = self.staircase  # (T,)
        targets = [staircase] * (n_steps - s if warmup else 0)
        targets += [staircase - r - 1 for r in range(s)]
        schedule = []
        for target in targets:  # a fixed count: the loop never looks at the values
            moving = steps_left > target  # (B, T)
            at = n_steps - steps_left  # the step each element's state sits at
            schedule.append(torch.where(moving, at, held_step(at)))
            steps_left = steps_left - moving.long()
        return schedule, steps_left

    def step_schedule(self, x: torch.Tensor, num_steps: int) -> list[torch.Tensor]:
        """``sample``'s chain: an episode's first call on a buffer of pure noise."""
        all_left = torch.full(x.shape[:2], num_steps, device=x.device)  # (B, T)
        return self.call_schedule(all_left, warmup=True)[0]

    # ------------------------------------------------------------------ streaming
    def draw_stream_noise(self, batch_size: int, warmup: bool,
                          generator: torch.Generator | None = None) -> StreamNoise:
        return StreamNoise(*(torch.randn(shape, generator=generator,
                                         device=self.alphas_cumprod.device)
                             for shape in self.stream_noise_shapes(batch_size, warmup)))

    def stream_noise_shapes(self, batch_size: int, warmup: bool) -> list[tuple[int, ...]]:
        n = self.config.num_inference_steps if warmup else self.steps_per_call
        _, horizon, da = self.chunk_shape(batch_size)
        return [(batch_size, n, horizon, da), (batch_size, self.config.n_action_steps, da),
                (batch_size, self.config.n_past, da)]

    def stream(self, x: torch.Tensor, steps_left: torch.Tensor, cond: torch.Tensor,
               noise: StreamNoise, *, warmup: bool, eta: float | None = None,
               min_std: float = 0.0, return_chain: bool = False,
               finetuned: nn.Module | None = None, finetune_steps: int | None = None
               ) -> StreamCall:
        """One call: the chunk (B, T, Da) with chunk 0 clean, the next buffer and steps
        left. ``warmup`` for a batch with rows that start an episode (x pure noise, K steps
        left everywhere); steady rows pass through the warm-up untouched. ``finetuned`` runs
        the last ``finetune_steps`` transitions, as in ``sample``."""
        num_steps, eta = self.resolve(None, eta)
        for name, value, shape in zip(StreamNoise._fields, noise,
                                      self.stream_noise_shapes(len(x), warmup), strict=True):
            check_shape(f"noise.{name}", value, shape)
        schedule, next_left = self.call_schedule(steps_left, warmup)
        chunk, visited = self.run_chain(x, schedule, cond, noise.transitions,
                                        num_steps=num_steps, eta=eta, min_std=min_std,
                                        finetuned=finetuned, finetune_steps=finetune_steps)
        chain = Chain(torch.stack(visited, 1), torch.stack(schedule)) if return_chain else None
        return StreamCall(chunk, *self.shift(chunk, next_left, noise), chain)

    def shift(self, x: torch.Tensor, steps_left: torch.Tensor, noise: StreamNoise
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Drop the executed chunk, append fresh noise, re-noise the kept past steps to the
        level of chunk 0 (s transitions left)."""
        ta, o = self.config.n_action_steps, self.config.n_past
        n_steps, s = self.config.num_inference_steps, self.steps_per_call
        x = torch.cat([x[:, ta:], noise.new_chunk], dim=1)  # (B, T, Da)
        steps_left = torch.cat([steps_left[:, ta:],
                                torch.full_like(steps_left[:, :ta], n_steps)], 1)
        if o:
            level = torch.full((), n_steps - s, device=x.device)  # a fill, not a host copy
            past = self.noised(x[:, :o], level, noise.past)  # (B, o, Da)
            x = torch.cat([past, x[:, o:]], dim=1)
            steps_left = torch.cat([torch.full_like(steps_left[:, :o], s), steps_left[:, o:]], 1)
        return x, steps_left

    def init_state(self, n_envs: int) -> StreamState:
        shape = self.chunk_shape(n_envs)
        device = self.alphas_cumprod.device
        return StreamState(torch.zeros(shape, device=device),
                           torch.zeros(shape[:2], dtype=torch.long, device=device),
                           np.ones(n_envs, bool))

    def reset_state(self, state: StreamState, mask: np.ndarray) -> None:
        state.new_episode |= np.asarray(mask, bool)

    @torch.no_grad()
    def predict_action(self, obs: dict[str, torch.Tensor], noise: torch.Tensor | None = None,
                       state: StreamState | None = None, env_ids: np.ndarray | None = None
                       ) -> dict[str, torch.Tensor]:
        """Without ``state``: one fresh buffer (costs K). With it: continue the buffers of
        ``env_ids`` (all envs by default), costing K / h per call after each episode's first."""
        if state is None:
            return super().predict_action(obs, noise=noise)
        ids = np.arange(len(state.new_episode)) if env_ids is None else np.asarray(env_ids)
        cond = self.encode_obs(obs)
        starting = state.new_episode[ids]  # (B,) host bookkeeping, outside the pure core
        start = torch.as_tensor(starting, device=cond.device)
        if noise is None:
            noise = torch.randn(self.chunk_shape(len(ids)), device=cond.device)
        x = torch.where(start.view(-1, 1, 1), noise, state.x[ids])  # (B, T, Da)
        steps_left = torch.where(start.view(-1, 1), self.config.num_inference_steps,
                                 state.steps_left[ids])  # (B, T)
        warmup = bool(starting.any())
        call = self.stream(x, steps_left, cond, self.draw_stream_noise(len(ids), warmup),
                           warmup=warmup)
        state.x[ids], state.steps_left[ids] = call.buffer, call.steps_left
        state.new_episode[ids] = False
        return self.chunk_actions(call.chunk)
