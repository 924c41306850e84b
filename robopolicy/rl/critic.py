"""The value function V(s) of the RL loop: an MLP on the low-dimensional observation window,
normalized by the policy's own normalizer (also for image policies: the state is what the
simulator gives, as DPPO's critic on the state)."""

from __future__ import annotations

import math

import torch
from torch import nn

from robopolicy.policies.base import ActionModel


class Critic(nn.Module):
    """V of the model's low-dim observation window {key: (B, To, ...)} -> (B,)."""

    def __init__(self, model: ActionModel, hidden: int = 256):
        super().__init__()
        self.keys = [k for k in model.obs_keys if k not in model.config.image_keys]
        # the model's statistics, read through a bound method: not a submodule of the critic
        self._normalize = model.normalizer.normalize
        width = model.config.n_obs_steps * sum(math.prod(model.config.shapes[k])
                                               for k in self.keys)
        self.net = nn.Sequential(nn.Linear(width, hidden), nn.Mish(),
                                 nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, 1))

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            state = torch.cat([self._normalize(k, obs[k].float()).flatten(1)
                               for k in self.keys], dim=-1)  # (B, To * D)
        return self.net(state).squeeze(-1)
