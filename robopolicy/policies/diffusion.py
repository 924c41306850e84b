"""Diffusion (DDPM training; DDPM or DDIM sampling) over action chunks.

diffusers is the source of the noise schedule (``alphas_cumprod``) and the reference the tests
hold the chain to: ``denoise_step`` equals ``DDPMScheduler.step`` / ``DDIMScheduler.step``
over whole trajectories. The transition is written here rather than
called through diffusers because a scheduler's ``step`` takes one Python timestep for the
batch, draws its own noise, and ``set_timesteps`` mutates the scheduler: DPPO needs a step
index per sample (and per element for streaming), and graph capture needs every input,
noise included, to be a tensor.

Chain of K steps, "leading" spacing as diffusers: step i runs at train timestep
``t_i = (K - 1 - i) * (N // K)`` and lands on ``t_{i+1}``; the last lands below 0, the clean
chunk (alpha bar 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import DDPMScheduler
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, ModelConfig, expand_step, lookup

SAMPLERS = ("ddpm", "ddim")
PREDICTIONS = ("epsilon", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")


@dataclass
class DiffusionConfig(ModelConfig):
    family: ClassVar[str] = "diffusion"
    num_train_timesteps: int = 100  # N
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # or "sample"
    sampler: str = "ddim"  # or "ddpm" (always its posterior std; eta is DDIM's)
    clip_sample: bool = True  # actions are normalized to [-1, 1]

    def validate(self) -> None:
        super().validate()
        for name, value, known in (("sampler", self.sampler, SAMPLERS),
                                   ("prediction_type", self.prediction_type, PREDICTIONS),
                                   ("beta_schedule", self.beta_schedule, BETA_SCHEDULES)):
            if value not in known:
                raise ConfigError(f"{self.family}: unknown {name} {value!r}; known: {list(known)}")
        if self.sampler == "ddpm" and self.eta != 0.0:
            raise ConfigError(f"{self.family}: eta={self.eta} is DDIM's; the ddpm sampler always "
                              "draws with its posterior std (DDIM at eta=1 with K=N is DDPM)")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"{self.family}: num_inference_steps={self.num_inference_steps} "
                              f"must be in [1, num_train_timesteps={self.num_train_timesteps}]")


class DiffusionModel(ActionModel):
    config_class = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        # the schedule's source, never stepped; its config (clipping, prediction type) is what
        # the tests build diffusers' reference schedulers from
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample, prediction_type=config.prediction_type)
        alphas = self.noise_scheduler.alphas_cumprod.clone()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    # ------------------------------------------------------------------ the schedule
    def timesteps(self, num_steps: int) -> torch.Tensor:
        """(K + 1,) train timestep of each visited state; the last is below 0 (clean)."""
        ratio = self.config.num_train_timesteps // num_steps
        k = torch.arange(num_steps + 1, device=self.alphas_cumprod.device)
        return (num_steps - 1 - k) * ratio

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """Cumulative alpha at train timesteps ``t`` (any shape); 1 below 0 (clean)."""
        return torch.where(t >= 0, lookup(self.alphas_cumprod, t.clamp(min=0)), 1.0)

    def forward_process(self, naction: torch.Tensor, noise: torch.Tensor,
                        t: torch.Tensor) -> torch.Tensor:
        """q(x_t | x_0) at train timesteps t (B,) or (B, T), as diffusers' ``add_noise``."""
        a = expand_step(self.alpha_bar(t))  # (B, 1, 1) or (B, T, 1)
        return a.sqrt() * naction + (1 - a).sqrt() * noise

    def noise_levels(self, num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        return (1 - self.alpha_bar(self.timesteps(num_steps))).sqrt()  # (K + 1,)

    def noised(self, naction: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, *,
               num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        return self.forward_process(naction, noise, lookup(self.timesteps(num_steps), i))

    # ------------------------------------------------------------------ the transition
    def step_table(self, num_steps: int, eta: float) -> torch.Tensor:
        """(K, 6) per step: the train timestep t, sqrt(a_t), sqrt(1 - a_t), and the mean's
        weights of x0 and of eps (DDIM) or x (DDPM), and std. DDPM: the posterior
        q(x_prev | x_t, x0). DDIM: its mean with std = eta * (the posterior std), so eta = 1
        with K = N is DDPM again. std is exactly 0 on the last step (and everywhere for DDIM
        at eta = 0)."""
        ts = self.timesteps(num_steps)  # (K + 1,)
        a_t, a_prev = self.alpha_bar(ts[:-1]), self.alpha_bar(ts[1:])  # (K,) each
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # DDPM posterior variance
        if self.config.sampler == "ddpm":
            std = variance.sqrt()
            w_x0 = a_prev.sqrt() * (1 - a_t / a_prev) / (1 - a_t)
            w_other = (a_t / a_prev).sqrt() * (1 - a_prev) / (1 - a_t)  # weight of x
        else:
            std = eta * variance.sqrt()
            w_x0 = a_prev.sqrt()
            w_other = (1 - a_prev - std.square()).clamp(min=0).sqrt()  # weight of eps
        return torch.stack([ts[:-1].float(), a_t.sqrt(), (1 - a_t).sqrt(), w_x0, w_other, std],
                           dim=-1)  # (K, 6)

    def transition(self, x: torch.Tensor, i: torch.Tensor, coef: tuple[torch.Tensor, ...],
                   cond: torch.Tensor, *, min_std: float, net: nn.Module | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's prediction turned into (x0, eps), x0 clipped to the action range as
        diffusers does (a sample prediction's eps comes from the unclipped x0, as there),
        then the step's Gaussian."""
        t, sqrt_a, sqrt_1ma, w_x0, w_other, std = coef
        net = self.backbone if net is None else net
        out = net(x, t.reshape(i.shape), cond)  # (B, T, Da)
        if self.config.prediction_type == "epsilon":
            eps, x0 = out, (x - sqrt_1ma * out) / sqrt_a
        else:
            x0, eps = out, (x - sqrt_a * out) / sqrt_1ma
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        mean = w_x0 * x0 + w_other * (x if self.config.sampler == "ddpm" else eps)
        return mean, std.clamp(min=min_std).expand_as(mean)

    # ------------------------------------------------------------------ the loss
    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """Train timesteps (B,), uniform over [0, N)."""
        return torch.randint(0, self.config.num_train_timesteps, (batch_size,),
                             generator=generator, device=self.alphas_cumprod.device)

    def loss_terms(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """Per-sample DDPM loss (B,): the network's noise (or sample) prediction at x_t."""
        pred = self.backbone(self.forward_process(naction, noise, t), t.float(), cond)
        target = noise if self.config.prediction_type == "epsilon" else naction
        return (pred - target).square().mean(dim=(1, 2))  # (B,)
