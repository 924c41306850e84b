"""PPO on the likelihood of a model's sampling chain: for the ``gaussian`` family (one
transition) this is plain PPO with a Gaussian action-chunk policy, the baseline the
diffusion and flow fine-tuners (DPPO, FPO) are measured against.

An algorithm is what the loop (:mod:`robopolicy.rl.loop`) calls: ``act`` draws the chunks of
a rollout and records how; ``score`` evaluates, under the rollout's parameters, what the
PPO ratio compares against (a likelihood, FPO's losses), once per iteration over the whole
batch before the update changes anything; ``policy_loss`` scores a minibatch under the
current parameters. It wraps the model and uses it only through the protocol.
"""

from __future__ import annotations

import math

import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel
from robopolicy.policies.protocol import Chain
from robopolicy.rl.shared import clipped_surrogate


class ChainPPO:
    """The chunk is the last state of the chain, its log-likelihood the sum over the chain's
    transitions and over (T, Da). ``min_std`` floors the std in that likelihood."""

    def __init__(self, model: ActionModel, clip: float, min_std: float,
                 std: float | None = None):
        if model.config.family != "gaussian":
            raise ConfigError(f"algo ppo fine-tunes the gaussian family; this checkpoint is "
                              f"'{model.config.family}'; use --algo dppo or fpo for it")
        self.model, self.clip, self.min_std = model, clip, min_std
        if std is not None:  # BC fits the std to the demos' spread, not to exploration
            with torch.no_grad():
                model.log_std.fill_(math.log(std))

    samples_per_decision = 1

    def parameters(self):
        return self.model.parameters()

    def _log_prob(self, chain: Chain, cond: torch.Tensor) -> torch.Tensor:
        logp = self.model.chain_log_prob(chain, cond, reduce="sum", eta=1.0,
                                         min_std=self.min_std)  # (B, K)
        return logp.sum(dim=1)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalized chunks (B, T, Da) for a batch of observation windows, and per sample
        the chain's visited states."""
        cond = self.model.encode_obs(obs)  # (B, Dc)
        chain = self.model.sample(cond, eta=1.0, min_std=self.min_std, return_chain=True,
                                  generator=generator)
        self.steps = chain.steps  # (K,): the same schedule for every sample
        return chain.x[:, -1], {"chain": chain.x}

    @torch.no_grad()
    def score(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """The chains' log-likelihoods (B,) under the rollout's parameters."""
        cond = self.model.encode_obs(obs)
        return {"logp": self._log_prob(Chain(record["chain"], self.steps), cond)}

    def policy_loss(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor],
                    advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cond = self.model.encode_obs(obs)
        logp = self._log_prob(Chain(record["chain"], self.steps), cond)  # (B,)
        return clipped_surrogate(logp - record["logp"], advantages, self.clip)
