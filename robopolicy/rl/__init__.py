"""RL fine-tuning of action models in simulation (issue #12). This package holds the math
every algorithm shares, written once: advantages (GAE), running reward scaling and the
clipped PPO surrogate. The algorithms (DPPO, FPO, Gaussian PPO) wrap a model through the
action-model protocol and are one file each."""

from robopolicy.rl.shared import RewardScaler, RunningMeanStd, clipped_surrogate, gae

__all__ = ["RewardScaler", "RunningMeanStd", "clipped_surrogate", "gae"]
