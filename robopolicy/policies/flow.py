"""Conditional flow matching on the linear path, sampled by the ODE (Euler or midpoint) or by
an SDE with the same marginals.

Convention: t = 0 is noise, t = 1 is data; x_t = (1 - t) noise + t x1 and the target velocity
is x1 - noise. Step i of K runs from t_i = i / K to t_{i+1}. The backbone sees ``1000 t``, the
scale diffusion timesteps use. No library covers this small piece of math, so it is written
here, once.

Stochastic transitions (eta > 0), for likelihood-based RL (DPPO) on flow models. The choice is
the SDE whose marginals equal the ODE's (the Flow-SDE line of work), not a fixed-std Gaussian
around the Euler step: noise added around the ODE's path widens every marginal step by step,
so the policy RL starts from would no longer be the BC policy (on the two-mode toy, a fixed
std of 0.25 per step puts most samples between the modes; the SDE at the same average std
keeps them on the modes); the SDE keeps the distribution the model was trained to produce at
any eta, and eta = 0 is exactly the ODE. With diffusion coefficient g(t) = sqrt(2) eta (1 - t)
and the score of the linear path, ``grad log p_t(x) = -(x - t v) / (1 - t)``, Euler-Maruyama
gives

    mean = x + dt * v_step - eta^2 (1 - t) dt * (x - t v),   std = eta (1 - t) sqrt(2 dt)

(``v_step`` the integrator's velocity, ``v`` the one at (x, t)). g vanishes at the data end
like the noise left in x_t does, so the correction stays finite where the score does not and
the last steps add little noise (g proportional to sqrt(1 - t) instead leaves the last step's
noise, 0.14 at K = 10, in every sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, ModelConfig, expand_step

INTEGRATORS = ("euler", "midpoint")
TIME_SAMPLING = ("uniform", "beta", "logit_normal")
TIME_SCALE = 1000.0
BETA_A = 1.5  # "beta" time sampling: 1 - t ~ Beta(1.5, 1), more weight near the noise (pi0)


@dataclass
class FlowConfig(ModelConfig):
    family: ClassVar[str] = "flow"
    integrator: str = "euler"
    time_sampling: str = "uniform"

    def validate(self) -> None:
        super().validate()
        for name, value, known in (("integrator", self.integrator, INTEGRATORS),
                                   ("time_sampling", self.time_sampling, TIME_SAMPLING)):
            if value not in known:
                raise ConfigError(f"flow: unknown {name} {value!r}; known: {list(known)}")


class FlowModel(ActionModel):
    config_class = FlowConfig
    config: FlowConfig

    def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                 net: nn.Module | None = None) -> torch.Tensor:
        """Predicted velocity at x (B, T, Da), times t (), (B,) or (B, T) in [0, 1]."""
        return (self.backbone if net is None else net)(x, TIME_SCALE * t, cond)

    @staticmethod
    def interpolate(naction: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t on the linear path from noise (t = 0) to the action (t = 1)."""
        t = expand_step(t)  # (1|B, 1, 1)
        return (1 - t) * noise + t * naction

    # ------------------------------------------------------------------ the chain
    def step_times(self, num_steps: int) -> torch.Tensor:
        """(K + 1,) time of each visited state: i / K."""
        return torch.arange(num_steps + 1, device=self.device) / num_steps

    def noise_levels(self, num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        return 1 - self.step_times(num_steps)  # (K + 1,)

    def noised(self, naction: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, *,
               num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        return self.interpolate(naction, noise, i / num_steps)

    def step_table(self, num_steps: int, eta: float) -> torch.Tensor:
        """(K, 4) per step: t, dt, the score correction's weight eta^2 (1 - t) dt, and std
        (0 at eta = 0: the ODE)."""
        t = self.step_times(num_steps)[:-1]  # (K,)
        dt = torch.full_like(t, 1.0 / num_steps)
        std = eta * (1 - t) * (2 * dt).sqrt()
        return torch.stack([t, dt, eta ** 2 * (1 - t) * dt, std], dim=-1)  # (K, 4)

    def transition(self, x: torch.Tensor, i: torch.Tensor, coef: tuple[torch.Tensor, ...],
                   cond: torch.Tensor, *, min_std: float, net: nn.Module | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The integrator's step, minus the score correction of the SDE (zero at eta = 0)."""
        t, dt, w_score, std = coef
        t_net = t.reshape(i.shape)
        v = self.velocity(x, t_net, cond, net)  # (B, T, Da)
        v_step = v
        if self.config.integrator == "midpoint":
            v_step = self.velocity(x + 0.5 * dt * v, t_net + 0.5 * dt.reshape(i.shape), cond,
                                   net)
        mean = x + dt * v_step - w_score * (x - t * v)
        return mean, std.clamp(min=min_std).expand_as(mean)

    # ------------------------------------------------------------------ the loss
    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """Training times t (B,) in [0, 1] from the configured distribution."""
        kind = self.config.time_sampling
        if kind == "logit_normal":
            return torch.sigmoid(torch.randn(batch_size, generator=generator,
                                             device=self.device))
        u = torch.rand(batch_size, generator=generator, device=self.device)
        if kind == "uniform":
            return u
        return 1.0 - u ** (1.0 / BETA_A)  # Beta(a, 1) by its inverse CDF, u^(1/a)

    def loss_terms(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """Per-sample flow-matching loss (B,) at given noise and times (B,)."""
        x_t = self.interpolate(naction, noise, t)  # (B, T, Da)
        return (self.velocity(x_t, t, cond) - (naction - noise)).square().mean(dim=(1, 2))

