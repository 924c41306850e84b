"""Diffusion (DDPM training; DDPM or DDIM sampling) over action chunks.

Training noise and sampling use diffusers' schedulers. :meth:`DiffusionModel.denoise_step`
writes the same transition out as (mean, std) per sample, because DPPO needs the Gaussian of
each step with one step index per sample (diffusers' ``step`` takes one scalar timestep and
draws the noise itself); tests pin it to diffusers' ``step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from diffusers import DDIMScheduler, DDPMScheduler

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, ModelConfig

SAMPLERS = ("ddpm", "ddim")
PREDICTIONS = ("epsilon", "sample")


@dataclass
class DiffusionConfig(ModelConfig):
    family: ClassVar[str] = "diffusion"
    num_train_timesteps: int = 100
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "epsilon"  # or "sample"
    sampler: str = "ddim"  # or "ddpm"
    num_inference_steps: int = 10  # K
    ddim_eta: float = 0.0  # 0: deterministic DDIM; > 0 adds noise (DPPO fine-tuning)
    clip_sample: bool = True  # actions are normalized to [-1, 1]

    def validate(self) -> None:
        super().validate()
        if self.sampler not in SAMPLERS or self.prediction_type not in PREDICTIONS:
            raise ConfigError(f"diffusion: sampler must be one of {SAMPLERS} and "
                              f"prediction_type one of {PREDICTIONS}; got {self.sampler!r}, "
                              f"{self.prediction_type!r}")
        if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
            raise ConfigError(f"diffusion: num_inference_steps={self.num_inference_steps} must "
                              f"be in [1, num_train_timesteps={self.num_train_timesteps}]")


class DiffusionModel(ActionModel):
    config_class = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps, beta_schedule=config.beta_schedule,
            clip_sample=config.clip_sample, prediction_type=config.prediction_type)
        kind = DDIMScheduler if config.sampler == "ddim" else DDPMScheduler
        self.sampler = kind.from_config(self.noise_scheduler.config)
        alphas = self.noise_scheduler.alphas_cumprod.clone()
        self.register_buffer("alphas_cumprod", alphas, persistent=False)

    # ------------------------------------------------------------------ training
    def training_steps(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """Train steps to noise each sample to: (B,), uniform (streaming: one per element)."""
        return torch.randint(0, self.config.num_train_timesteps, (batch_size,), device=device)

    def compute_loss(self, batch: dict, reduction: str = "mean"):
        naction = self.normalized_actions(batch)  # (B, T, Da)
        cond = self.encode_obs(batch["obs"])  # (B, Dc)
        noise = torch.randn_like(naction)
        k = self.training_steps(len(naction), naction.device)  # (B,) or (B, T)
        a = self.alpha_bar(k)  # the forward process q(x_k | x_0), as diffusers' add_noise
        noisy = a.sqrt() * naction + (1 - a).sqrt() * noise
        pred = self.backbone(noisy, k.float(), cond)
        target = noise if self.config.prediction_type == "epsilon" else naction
        per_sample = (pred - target).square().mean(dim=(1, 2))  # (B,)
        loss = self.reduce(per_sample, reduction)
        return loss, {"loss": per_sample.mean().item()}

    # ------------------------------------------------------------------ sampling
    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None,
               steps: int | None = None, generator: torch.Generator | None = None):
        """K denoising steps with diffusers' scheduler, from ``noise`` (B, T, Da)."""
        x = self.noise_like_actions(len(cond), generator) if noise is None else noise
        self.sampler.set_timesteps(steps or self.config.num_inference_steps)
        for k in self.sampler.timesteps:
            out = self.backbone(x, k.float().expand(len(x)).to(x.device), cond)
            kwargs = {"eta": self.config.ddim_eta} if self.config.sampler == "ddim" else {}
            x = self.sampler.step(out, k, x, generator=generator, **kwargs).prev_sample
        return x

    def step_ratio(self, steps: int | None = None) -> int:
        """Train timesteps skipped per sampling step ("leading" spacing, as diffusers)."""
        return self.config.num_train_timesteps // (steps or self.config.num_inference_steps)

    def alpha_bar(self, k: torch.Tensor) -> torch.Tensor:
        """Cumulative alpha at train steps ``k`` (B,) or (B, T), shaped to broadcast over
        (B, T, Da); steps below 0 mean "clean" (alpha bar 1)."""
        a = torch.where(k >= 0, self.alphas_cumprod[k.clamp(min=0)],
                        torch.ones_like(k, dtype=self.alphas_cumprod.dtype))
        return a.view(-1, 1, 1) if k.ndim == 1 else a.unsqueeze(-1)  # (B, 1, 1) or (B, T, 1)

    def denoise_step(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor,
                     steps: int | None = None):
        """One sampling transition from train step ``k`` (B,), or one per horizon element
        (B, T), as a Gaussian: (mean, std), each (B, T, Da); std is 0 at the last step (and for
        DDIM with eta = 0)."""
        out = self.backbone(x, k.float(), cond)
        prev = k - self.step_ratio(steps)
        a_t, a_prev = self.alpha_bar(k), self.alpha_bar(prev)
        if self.config.prediction_type == "epsilon":
            eps, x0 = out, (x - (1 - a_t).sqrt() * out) / a_t.sqrt()
        else:
            x0, eps = out, (x - a_t.sqrt() * out) / (1 - a_t).sqrt()
        if self.config.clip_sample:
            x0 = x0.clamp(-1.0, 1.0)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # DDPM posterior variance
        if self.config.sampler == "ddpm":
            mean = (a_prev.sqrt() * (1 - a_t / a_prev) * x0
                    + (a_t / a_prev).sqrt() * (1 - a_prev) * x) / (1 - a_t)
            std = variance.clamp(min=1e-20).sqrt()
        else:
            std = self.config.ddim_eta * variance.sqrt()
            mean = a_prev.sqrt() * x0 + (1 - a_prev - std.square()).sqrt() * eps
        std = torch.where(a_prev < 1, std, torch.zeros_like(std))  # the last step is exact
        return mean, std.expand_as(mean)
