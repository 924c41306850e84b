"""Conditional flow matching on the linear path, sampled with Euler or midpoint steps.

Convention: t = 0 is noise, t = 1 is data; x_t = (1 - t) x0 + t x1 and the target velocity is
x1 - x0. The backbone sees ``1000 t``, the same timestep scale diffusion uses. No library
covers this small piece of math, so it is written here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, ModelConfig

INTEGRATORS = ("euler", "midpoint")
TIME_SAMPLING = ("uniform", "beta", "logit_normal")
TIME_SCALE = 1000.0


@dataclass
class FlowConfig(ModelConfig):
    family: ClassVar[str] = "flow"
    num_inference_steps: int = 10  # K
    integrator: str = "euler"
    time_sampling: str = "uniform"  # "beta": Beta(1.5, 1) on 1 - t (more weight near noise)

    def validate(self) -> None:
        super().validate()
        if self.integrator not in INTEGRATORS or self.time_sampling not in TIME_SAMPLING:
            raise ConfigError(f"flow: integrator must be one of {INTEGRATORS} and time_sampling "
                              f"one of {TIME_SAMPLING}; got {self.integrator!r}, "
                              f"{self.time_sampling!r}")


class FlowModel(ActionModel):
    config_class = FlowConfig
    config: FlowConfig

    def sample_time(self, n: int, device: torch.device) -> torch.Tensor:
        """Training times t (n,) in [0, 1] from the configured distribution."""
        kind = self.config.time_sampling
        if kind == "uniform":
            return torch.rand(n, device=device)
        if kind == "beta":  # pi0-style: emphasise the noisy end
            beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
            return 1.0 - beta.sample((n,)).to(device)
        return torch.sigmoid(torch.randn(n, device=device))  # logit-normal

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted velocity at x (B, T, Da), times t (B,) or (B, T) in [0, 1]."""
        return self.backbone(x, TIME_SCALE * t, cond)

    def flow_loss(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                  t: torch.Tensor) -> torch.Tensor:
        """Per-sample flow-matching loss (B,) for given noise and times (FPO reuses these)."""
        x_t = (1 - t.view(-1, 1, 1)) * noise + t.view(-1, 1, 1) * naction  # (B, T, Da)
        target = naction - noise
        return (self.velocity(x_t, t, cond) - target).square().mean(dim=(1, 2))

    def compute_loss(self, batch: dict, reduction: str = "mean"):
        naction = self.normalized_actions(batch)  # (B, T, Da)
        cond = self.encode_obs(batch["obs"])
        per_sample = self.flow_loss(naction, cond, torch.randn_like(naction),
                                    self.sample_time(len(naction), naction.device))
        return self.reduce(per_sample, reduction), {"loss": per_sample.mean().item()}

    def denoise_step(self, x: torch.Tensor, k: torch.Tensor, cond: torch.Tensor,
                     steps: int | None = None):
        """Integration step ``k`` (B,) of K, from time k / K: (mean, std), std = 0 (the flow
        is deterministic)."""
        dt = 1.0 / (steps or self.config.num_inference_steps)
        t = k.float() * dt  # (B,)
        v = self.velocity(x, t, cond)
        if self.config.integrator == "midpoint":
            v = self.velocity(x + 0.5 * dt * v, t + 0.5 * dt, cond)
        mean = x + dt * v
        return mean, torch.zeros_like(mean)

    def sample(self, cond: torch.Tensor, noise: torch.Tensor | None = None,
               steps: int | None = None, generator: torch.Generator | None = None):
        """Integrate from noise (t = 0) to actions (t = 1) in K steps."""
        x = self.noise_like_actions(len(cond), generator) if noise is None else noise
        steps = steps or self.config.num_inference_steps
        for k in range(steps):
            x, _ = self.denoise_step(x, torch.full((len(x),), k, device=x.device), cond, steps)
        return x
