"""The pieces of on-policy RL that DPPO, FPO and Gaussian PPO share.

Shapes follow cleanrl's rollout buffers: ``(n_steps, n_envs)`` for per-step quantities,
where a step is one decision of the policy (one executed action chunk).
"""

from __future__ import annotations

import numpy as np
import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor,
        terminated: torch.Tensor, truncated: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation over a rollout: (advantages, returns), each
    ``(n_steps, n_envs)``.

    ``next_values[t]`` is V of the state the step led to, *before* any reset: for a step that
    ended its episode by truncation (time limit) that is V(final_obs), so the return is
    bootstrapped from where the episode was cut; a terminated step's next value is ignored
    (no future after a terminal state). Either way the advantage trace stops at the episode
    boundary, since the next row of the rollout belongs to a new episode.
    """
    terminated, done = terminated.float(), (terminated | truncated).float()
    delta = rewards + gamma * next_values * (1.0 - terminated) - values  # (n_steps, n_envs)
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])  # (n_envs,)
    for t in reversed(range(rewards.shape[0])):
        running = delta[t] + gamma * lam * (1.0 - done[t]) * running
        advantages[t] = running
    return advantages, advantages + values


class RunningMeanStd:
    """Mean and variance of a stream of batches (Chan et al.'s parallel update)."""

    def __init__(self) -> None:
        self.mean, self.var, self.count = 0.0, 1.0, 1e-4

    def update(self, batch: np.ndarray) -> None:
        batch = np.asarray(batch, dtype=np.float64).ravel()
        if batch.size == 0:
            return
        b_mean, b_var, b_count = batch.mean(), batch.var(), batch.size
        delta, total = b_mean - self.mean, self.count + b_count
        self.mean += delta * b_count / total
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var, self.count = m2 / total, total


class RewardScaler:
    """Divides rewards by the running standard deviation of the discounted return, per env
    (the reward scaling DPPO and most PPO code use): the critic sees targets of unit scale
    whatever the task's reward magnitude, and the sign and ratios of rewards are kept."""

    def __init__(self, n_envs: int, gamma: float, epsilon: float = 1e-8) -> None:
        self.returns = np.zeros(n_envs)
        self.gamma, self.epsilon = gamma, epsilon
        self.stats = RunningMeanStd()

    def __call__(self, rewards: np.ndarray, done: np.ndarray) -> np.ndarray:
        """Scale one step's rewards ``(n_envs,)``; ``done`` ends each env's return."""
        self.returns = self.returns * self.gamma + rewards
        self.stats.update(self.returns)
        self.returns[np.asarray(done, bool)] = 0.0
        return rewards / np.sqrt(self.stats.var + self.epsilon)

    def state_dict(self) -> dict:
        return {"returns": self.returns.tolist(), "mean": float(self.stats.mean),
                "var": float(self.stats.var), "count": float(self.stats.count)}

    def load_state_dict(self, state: dict) -> None:
        self.returns = np.asarray(state["returns"], dtype=np.float64)
        self.stats.mean, self.stats.var = state["mean"], state["var"]
        self.stats.count = state["count"]


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, clip: float | torch.Tensor,
                      spo_negative: bool = False) -> tuple[torch.Tensor, dict]:
    """PPO's clipped policy loss, mean over the batch, and its diagnostics.

    The ratio ``exp(log_ratio)`` is kept within ``[1 - clip, 1 + clip]``. ``log_ratio`` and
    ``advantages`` broadcast, so per-sample clip values (DPPO's clip growing along the
    denoising chain) come in as tensors of the same shape. ``spo_negative`` is FPO++'s
    asymmetric trust region: samples with a negative advantage use SPO's penalty
    ``A r - |A| (r - 1)^2 / (2 clip)`` instead of the clip, which keeps pulling the ratio
    back toward the region rather than dropping its gradient once outside (lowering a
    likelihood without bound is what destabilizes flow policies), while positive
    advantages keep PPO's clip. At ratio 1 both have PPO's gradient.
    """
    ratio = log_ratio.exp()
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = torch.maximum(unclipped, clipped)
    if spo_negative:
        spo = unclipped + advantages.abs() * (ratio - 1.0).square() / (2 * clip)
        loss = torch.where(advantages < 0, spo, loss)
    with torch.no_grad():
        # Schulman's low-variance KL estimator, and how often the clip was active
        approx_kl = ((ratio - 1.0) - log_ratio).mean()
        clip_fraction = ((ratio - 1.0).abs() > clip).float().mean()
    return loss.mean(), {"approx_kl": approx_kl, "clip_fraction": clip_fraction}
