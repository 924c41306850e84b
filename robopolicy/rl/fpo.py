"""FPO (McAllister et al., "Flow Matching Policy Gradients"): PPO whose ratio comes from the
model's own BC loss instead of a likelihood, so it fine-tunes any family, with any sampler
and any number of integration steps at rollout.

At rollout each chunk a is drawn by the model's sampler and ``n_mc`` (noise, time) pairs are
drawn and stored with it; l_old, the per-pair loss under the rollout parameters, is scored
by the learner before its first update step (:meth:`FPO.score`). An
update scores the same pairs under the current parameters, l_theta, and uses

    ratio = exp(mean_j l_old_j - mean_j l_theta_j)

in PPO's clipped surrogate (a lower loss on a chunk stands for a higher likelihood of it:
the loss is, up to constants and weights, the negative ELBO).

FPO++ (Yi et al., "Flow Policy Gradients for Robot Control") refinements, each an option:
``per_pair`` clips each pair's ratio on its own and averages the surrogate over pairs;
``spo_negative`` is the asymmetric trust region (SPO's penalty for negative advantages, see
:func:`robopolicy.rl.shared.clipped_surrogate`); ``max_log_ratio`` clamps each pair's loss
difference before the exp, so one badly fit pair cannot overflow a ratio; and evaluation
samples with zero noise (the loop's ``eval_eta = 0``).
"""

from __future__ import annotations

import torch
from einops import repeat

from robopolicy.policies.base import ActionModel
from robopolicy.rl.shared import clipped_surrogate


class FPO:
    samples_per_decision = 1

    def __init__(self, model: ActionModel, clip: float, n_mc: int = 8,
                 per_pair: bool = False, eta: float = 0.0, spo_negative: bool = False,
                 max_log_ratio: float | None = None):
        self.model, self.clip, self.n_mc, self.per_pair, self.eta = (model, clip, n_mc,
                                                                     per_pair, eta)
        self.spo_negative, self.max_log_ratio = spo_negative, max_log_ratio

    def parameters(self):
        return self.model.parameters()

    def _pair_losses(self, naction: torch.Tensor, cond: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
        """(B, n_mc) per-pair BC losses of chunks (B, T, Da) at noise (B, n_mc, T, Da) and
        times (B, n_mc[, T])."""
        n = self.n_mc
        flat = self.model.loss_terms(repeat(naction, "b t a -> (b n) t a", n=n),
                                     repeat(cond, "b c -> (b n) c", n=n),
                                     noise.flatten(0, 1), t.flatten(0, 1))  # (B n,)
        return flat.view(-1, n)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cond = self.model.encode_obs(obs)  # (B, Dc)
        naction = self.model.sample(cond, eta=self.eta, generator=generator)  # (B, T, Da)
        batch = len(naction)
        noise = torch.randn(batch, self.n_mc, *naction.shape[1:],
                            generator=generator)  # (B, n_mc, T, Da)
        t = self.model.draw_train_time(batch * self.n_mc, generator=generator)  # (B n_mc[, T])
        t = t.view(batch, self.n_mc, *t.shape[1:])
        return naction, {"naction": naction, "noise": noise, "t": t}

    @torch.no_grad()
    def score(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """l_old: the per-pair losses (B, n_mc) under the rollout's parameters."""
        cond = self.model.encode_obs(obs)
        return {"loss_old": self._pair_losses(record["naction"], cond, record["noise"],
                                              record["t"])}

    def policy_loss(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor],
                    advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
        cond = self.model.encode_obs(obs)
        loss = self._pair_losses(record["naction"], cond, record["noise"], record["t"])
        diff = record["loss_old"] - loss  # (B, n_mc)
        if self.max_log_ratio is not None:
            diff = diff.clamp(-self.max_log_ratio, self.max_log_ratio)
        if self.per_pair:  # FPO++: every pair's ratio clipped on its own
            return clipped_surrogate(diff, advantages[:, None], self.clip, self.spo_negative)
        return clipped_surrogate(diff.mean(dim=1), advantages, self.clip, self.spo_negative)
