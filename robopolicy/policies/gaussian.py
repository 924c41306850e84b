"""A Gaussian action-chunk policy: the chunk is drawn once, N(mean(obs), diag(std^2)), with the
mean from the backbone and a learned log-std per action dimension. It is the baseline of RL
fine-tuning (plain PPO) and a model family like the others, so BC, evaluation, checkpoints
and the RL loop treat it as one: a chain of K = 1 transition.

The chain. Each transition draws a fresh chunk, ``mean + std * eta * noise``; the state it
comes from does not enter (the backbone sees zeros), so with K = 1 the sample is exactly one
draw of the policy and the chain's log-likelihood is the policy's (DPPO on this family is
PPO). eta = 0 gives the mean, the deterministic evaluation policy. Noise levels follow the
flow family's, 1 - i / K, so ``noised`` has the same meaning.

The loss. BC maximizes the likelihood of the demonstrated chunk, per sample the negative
log-density averaged over (T, Da): the mean regresses onto the demonstrations and the std
onto the spread around them. FPO's per-sample loss difference is then the (averaged)
log-likelihood ratio, so FPO on this family is PPO too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, ModelConfig, expand_step

LOG_STD_RANGE = (-5.0, 2.0)  # std in [0.007, 7.4] normalized units: no collapse, no blow-up


@dataclass
class GaussianConfig(ModelConfig):
    family: ClassVar[str] = "gaussian"
    backbone: str = "mlp"
    num_inference_steps: int = 1  # K: one draw
    init_std: float = 0.3  # the std the learned log-std starts from (normalized units)

    def validate(self) -> None:
        super().validate()
        low, high = (math.exp(v) for v in LOG_STD_RANGE)
        if not low <= self.init_std <= high:
            raise ConfigError(f"gaussian: init_std={self.init_std} must be in "
                              f"[{low:.3g}, {high:.3g}]")


class GaussianModel(ActionModel):
    config_class = GaussianConfig
    config: GaussianConfig

    def __init__(self, config: GaussianConfig):
        super().__init__(config)
        self.log_std = nn.Parameter(torch.full((self.action_dim,), math.log(config.init_std)))

    def mean_action(self, cond: torch.Tensor, net: nn.Module | None = None) -> torch.Tensor:
        """The policy's mean chunk (B, T, Da) for conditioning (B, Dc)."""
        zeros = cond.new_zeros(self.chunk_shape(len(cond)))
        return (self.backbone if net is None else net)(zeros, cond.new_zeros(len(cond)), cond)

    def std(self) -> torch.Tensor:
        """(Da,) the policy's std in normalized units."""
        return self.log_std.clamp(*LOG_STD_RANGE).exp()

    # ------------------------------------------------------------------ the chain
    def noise_levels(self, num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        return 1 - torch.arange(num_steps + 1, device=self.device) / num_steps  # (K + 1,)

    def noised(self, naction: torch.Tensor, i: torch.Tensor, noise: torch.Tensor, *,
               num_steps: int | None = None) -> torch.Tensor:
        num_steps, _ = self.resolve(num_steps, None)
        t = expand_step(i / num_steps)  # (1|B, 1, 1)
        return (1 - t) * noise + t * naction

    def step_table(self, num_steps: int, eta: float) -> torch.Tensor:
        """(K, 1): eta, the fraction of the policy's std each draw uses."""
        return torch.full((num_steps, 1), eta, device=self.device)

    def transition(self, x: torch.Tensor, i: torch.Tensor, coef: tuple[torch.Tensor, ...],
                   cond: torch.Tensor, *, min_std: float, net: nn.Module | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        (eta,) = coef
        mean = self.mean_action(cond, net)  # (B, T, Da)
        return mean, (eta * self.std()).clamp(min=min_std).expand_as(mean)

    # ------------------------------------------------------------------ the loss
    def draw_train_time(self, batch_size: int, *, generator: torch.Generator | None = None
                        ) -> torch.Tensor:
        """No training time: (B,) zeros."""
        return torch.zeros(batch_size, device=self.device)

    def loss_terms(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                   t: torch.Tensor) -> torch.Tensor:
        """Per-sample negative log-likelihood of the chunk (B,), averaged over (T, Da);
        ``noise`` and ``t`` do not enter (a Gaussian needs no noising)."""
        log_std = self.log_std.clamp(*LOG_STD_RANGE)  # (Da,)
        z = (naction - self.mean_action(cond)) / log_std.exp()  # (B, T, Da)
        nll = 0.5 * z.square() + log_std + 0.5 * math.log(2 * math.pi)
        return nll.mean(dim=(1, 2))
