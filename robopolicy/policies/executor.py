"""Runs an action model one control step at a time, for one or many environments.

Per environment it keeps the last ``To`` observations and a queue of the ``Ta`` actions of the
current chunk; a new chunk is predicted, in one batch, only for the environments whose queue
ran out. At an episode start the history is filled with the first observation repeated, which
is exactly how training windows pad the start of an episode (``pad_before = To - 1``).

It is the :class:`robopolicy.sim.rollout.Policy` the evaluator drives, and what the
deployment node will run.
"""

from __future__ import annotations

import numpy as np
import torch

from robopolicy.errors import ConfigError
from robopolicy.policies.base import ActionModel


def check_observation_keys(model: ActionModel, shapes: dict[str, tuple[int, ...]],
                           source: str) -> None:
    """Every observation key the model conditions on is among ``shapes`` (per-step shapes of
    what ``source`` observes), with the shape it was trained on; else one ConfigError line."""
    missing = [k for k in model.obs_keys if k not in shapes]
    if missing:
        raise ConfigError(f"the model needs observation key(s) {missing} that {source} does "
                          f"not give (it gives {sorted(shapes)})")
    for key in model.obs_keys:
        expected, got = tuple(model.config.shapes[key]), tuple(shapes[key])
        if got != expected:
            raise ConfigError(f"observation '{key}' from {source} has per-step shape {got}; "
                              f"the model was trained on {expected}")


class ChunkExecutor:
    """``reset(mask)`` when envs start an episode; ``act(obs)`` each step (batched, N envs)."""

    def __init__(self, model: ActionModel, n_envs: int, device: str | torch.device = "cpu",
                 source: str = "the environment", zero_noise: bool = False):
        self.model, self.n_envs, self.device = model.eval(), n_envs, torch.device(device)
        # every chain starts from the prior's mean instead of a draw (FPO++'s "zero
        # sampling" at evaluation): with a deterministic sampler, one chunk per observation
        self.zero_noise = zero_noise
        self.source = source  # who gives the observations, for error messages
        self.n_obs_steps = model.config.n_obs_steps  # To
        self.n_action_steps = model.config.n_action_steps  # Ta
        self.history: dict[str, np.ndarray] = {}  # key -> (N, To, ...)
        self.queue = np.zeros((n_envs, self.n_action_steps, model.action_dim), np.float32)
        self.n_queued = np.zeros(n_envs, int)  # actions not yet taken from each queue
        self.episode_start = np.ones(n_envs, bool)  # the next observation starts an episode
        self.state = model.init_state(n_envs)  # streaming buffers; None for other families

    def reset(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        self.episode_start |= mask
        self.n_queued[mask] = 0
        self.model.reset_state(self.state, mask)

    def replan(self, mask: np.ndarray | None = None) -> None:
        """Drop the queued actions (of the envs in ``mask``, default all) but keep the
        observation history: the next :meth:`act` plans a new chunk from the current
        observation, e.g. when a human operator hands control back to the model."""
        mask = np.ones(self.n_envs, bool) if mask is None else np.asarray(mask, bool)
        self.n_queued[mask] = 0
        # streaming diffusion's buffer is a queue of partly denoised future actions, planned
        # from the old observations too: restart it as well
        self.model.reset_state(self.state, mask)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add observations of N envs to their history without acting (what :meth:`act` does
        first; on its own while someone else drives, e.g. a human operator)."""
        if not self.history:
            check_observation_keys(self.model, {k: np.shape(v)[1:] for k, v in obs.items()},
                                   self.source)
        for key in self.model.obs_keys:
            x = np.asarray(obs[key])  # (N, ...)
            h = self.history.get(key)
            if h is None:
                h = np.repeat(x[:, None], self.n_obs_steps, axis=1)  # (N, To, ...)
            else:
                h = np.roll(h, -1, axis=1)  # oldest first; the newest goes last
                h[:, -1] = x
            h[self.episode_start] = x[self.episode_start][:, None]  # repeat the first obs
            self.history[key] = h
        self.episode_start[:] = False

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Observations of N envs -> their next actions (N, Da), raw units."""
        self.observe(obs)
        need = self.n_queued == 0
        if need.any():
            batch = {k: torch.as_tensor(h[need], device=self.device)
                     for k, h in self.history.items()}
            ids = np.flatnonzero(need)
            noise = (torch.zeros(self.model.chunk_shape(len(ids)), device=self.device)
                     if self.zero_noise else None)
            out = self.model.predict_action(batch, noise=noise, state=self.state, env_ids=ids)
            chunk = out["action"]  # (B', Ta, Da)
            self.queue[need] = chunk.float().cpu().numpy()
            self.n_queued[need] = self.n_action_steps
        taken = self.n_action_steps - self.n_queued  # index of each env's next action
        action = self.queue[np.arange(self.n_envs), taken]  # (N, Da)
        self.n_queued -= 1
        return action
