"""DPPO (Ren et al., "Diffusion Policy Policy Optimization"): the denoising chain as an inner
MDP inside the environment's. Every transition of the chain is a Gaussian policy step, so
PPO applies to each (decision, denoising step) pair with the advantage of the decision.

- The last ``finetune_steps`` (K') transitions run a trainable copy of the denoiser
  (``model.start_finetuning``), the first K - K' the frozen BC one; the copy is part of the
  fine-tuned checkpoint, so ``load_model`` and every sampler run the fine-tuned chain.
- Rollouts sample with ``eta`` (1: DDPM-like, also for a few-step DDIM chain) and a floor
  ``min_std`` on every transition's std, which is the exploration noise; likelihoods floor
  the std at ``min_logprob_std``. Per-element log-probs are clamped to ``LOGPROB_CLAMP`` and
  averaged over the executed actions (the rest of the chunk never reaches the env).
- The PPO clip grows from ``clip_first`` at the noisiest fine-tuned step to ``clip`` at the
  last (exponentially, as the paper's 0.001 -> 0.01), and the advantage is discounted by
  ``gamma_denoising`` per step away from the clean one.
- ``bc_coef`` > 0 adds the negative log-likelihood, under the fine-tuned steps, of chains
  the frozen BC denoiser draws for the same observations: a pull toward the base policy.

Streaming diffusion is fine-tuned over every transition (K' = K): a call's transitions move
elements at all noise levels, so "the last K' steps" has no meaning there. Rollouts sample
each decision's chunk from a fresh buffer, so the policy is a function of the observation
window alone, which the PPO ratio and the critic need (a carried buffer would be hidden
state); the fine-tuned denoiser is the one the steady-state streaming calls then run.
"""

from __future__ import annotations

import math

import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel, expand_step
from robopolicy.rl.shared import clipped_surrogate

LOGPROB_CLAMP = (-5.0, 2.0)  # per element, as DPPO: one outlier dimension cannot swamp a ratio


class DPPO:
    def __init__(self, model: ActionModel, *, finetune_steps: int | None = None,
                 clip: float = 0.01, clip_first: float = 0.001, gamma_denoising: float = 0.99,
                 eta: float = 1.0, min_std: float = 0.1, min_logprob_std: float = 0.1,
                 bc_coef: float = 0.0):
        k = model.config.num_inference_steps
        k_ft = k if finetune_steps is None else finetune_steps
        if not 1 <= k_ft <= k:
            raise ConfigError(f"dppo: finetune_steps={finetune_steps} must be in [1, K={k}]")
        if model.config.family == "streaming" and k_ft != k:
            raise ConfigError(f"dppo: streaming diffusion is fine-tuned over all K={k} "
                              f"transitions of a call; drop finetune_steps={finetune_steps}")
        if min(min_std, min_logprob_std) <= 0:
            raise ConfigError("dppo: min_std and min_logprob_std must be > 0 (0.1 in the paper)")
        self.model, self.eta, self.min_std, self.min_logprob_std = model, eta, min_std, \
            min_logprob_std
        self.bc_coef, self.n_ft = bc_coef, k_ft
        self.net = model.start_finetuning(k_ft)
        for p in model.parameters():  # only the copy learns; encoder and base stay BC's
            p.requires_grad_(False)
        for p in self.net.parameters():
            p.requires_grad_(True)
        r = torch.arange(k_ft, dtype=torch.float32)  # fine-tuned step, noisiest first
        grow = (torch.exp(3 * r / max(k_ft - 1, 1)) - 1) / (math.exp(3) - 1)  # 0 .. 1
        self.clips = clip_first + (clip - clip_first) * grow if k_ft > 1 else torch.full(
            (1,), clip)  # (K',)
        self.discount = gamma_denoising ** (k_ft - 1 - r)  # (K',)
        start = model.config.n_obs_steps - 1  # the executed actions of a chunk
        window = torch.zeros(1, model.config.horizon, 1)
        window[:, start:start + model.config.n_action_steps] = 1.0
        self.window = window  # (1, T, 1)

    @property
    def samples_per_decision(self) -> int:
        """Minibatches are drawn over (decision, fine-tuned denoising step) pairs."""
        return self.n_ft

    def parameters(self):
        return self.net.parameters()

    def log_prob(self, x: torch.Tensor, i: torch.Tensor, x_next: torch.Tensor,
                 cond: torch.Tensor) -> torch.Tensor:
        """(B,) log-likelihood of one fine-tuned transition x -> x_next at step indices ``i``
        ((B,) or (B, T)): per element clamped, averaged over the executed moving elements."""
        logp = self.model.step_log_prob(x, i, x_next, cond, reduce="none", eta=self.eta,
                                        min_std=self.min_logprob_std, net=self.net)
        logp = logp.clamp(*LOGPROB_CLAMP)  # (B, T, Da)
        weight = (self.window * expand_step(i >= 0)).expand_as(logp)  # (B, T, Da)
        return (logp * weight).sum(dim=(1, 2)) / weight.sum(dim=(1, 2)).clamp(min=1)

    def _chain(self, cond: torch.Tensor, generator: torch.Generator | None,
               finetune_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A rollout chain's last K' + 1 states (B, K' + 1, T, Da) and the step index of each
        of its K' transitions per sample, (B, K') or (B, K', T)."""
        chain = self.model.sample(cond, eta=self.eta, min_std=self.min_std, return_chain=True,
                                  generator=generator, finetune_steps=finetune_steps,
                                  finetuned=self.net).last(self.n_ft)
        steps = chain.steps  # (K',) or, per element, (K', B, T)
        steps = steps.movedim(0, 1) if steps.dim() > 1 else steps.expand(len(cond), -1)
        return chain.x, steps

    def _chain_log_prob(self, x: torch.Tensor, steps: torch.Tensor, cond: torch.Tensor
                        ) -> torch.Tensor:
        """(B, K') log-probs of a chain's fine-tuned transitions, all K' in one batch: one
        denoiser call on B x K' rows costs about what one call on B rows does for the small
        RL networks, where K' calls cost K' times the per-call overhead."""
        b, k = len(x), self.n_ft
        logp = self.log_prob(x[:, :-1].flatten(0, 1), steps.flatten(0, 1),
                             x[:, 1:].flatten(0, 1), cond.repeat_interleave(k, dim=0))
        return logp.view(b, k)

    @torch.no_grad()
    def act(self, obs: dict[str, torch.Tensor], generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Chunks (B, T, Da) and the fine-tuned part of their chains."""
        cond = self.model.encode_obs(obs)  # (B, Dc)
        x, steps = self._chain(cond, generator)
        return x[:, -1], {"chain": x, "steps": steps}

    @torch.no_grad()
    def score(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor]
              ) -> dict[str, torch.Tensor]:
        """The log-probs (B, K') of the chains' fine-tuned transitions under the rollout's
        parameters."""
        cond = self.model.encode_obs(obs)
        return {"logp": self._chain_log_prob(record["chain"], record["steps"], cond)}

    def policy_loss(self, obs: dict[str, torch.Tensor], record: dict[str, torch.Tensor],
                    advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """PPO on a minibatch of (decision, denoising step) pairs: ``record["inner"]`` (B,)
        is the fine-tuned step r of each pair."""
        r = record["inner"]
        rows = torch.arange(len(r))
        cond = self.model.encode_obs(obs)
        logp = self.log_prob(record["chain"][rows, r], record["steps"][rows, r],
                             record["chain"][rows, r + 1], cond)  # (B,)
        loss, info = clipped_surrogate(logp - record["logp"][rows, r],
                                       advantages * self.discount[r], self.clips[r])
        if self.bc_coef:
            with torch.no_grad():  # the frozen BC chain for the same observations
                x, steps = self._chain(cond, None, finetune_steps=0)
            bc = -self._chain_log_prob(x, steps, cond).mean()
            loss = loss + self.bc_coef * bc
            info["bc_loss"] = bc.detach()
        return loss, info
