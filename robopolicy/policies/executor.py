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

from robopolicy.policies.base import ActionModel


class ChunkExecutor:
    """``reset(mask)`` when envs start an episode; ``act(obs)`` each step (batched, N envs)."""

    def __init__(self, model: ActionModel, n_envs: int, device: str | torch.device = "cpu"):
        self.model, self.n_envs, self.device = model.eval(), n_envs, torch.device(device)
        self.n_obs_steps = model.config.n_obs_steps  # To
        self.n_action_steps = model.config.n_action_steps  # Ta
        self.history: dict[str, np.ndarray] = {}  # key -> (N, To, ...)
        self.queue = np.zeros((n_envs, self.n_action_steps, model.action_dim), np.float32)
        self.left = np.zeros(n_envs, int)  # actions left in each queue
        self.fresh = np.ones(n_envs, bool)
        self.state = model.init_state(n_envs)  # streaming buffers; None for other families

    def reset(self, mask: np.ndarray) -> None:
        mask = np.asarray(mask, bool)
        self.fresh |= mask
        self.left[mask] = 0
        self.model.reset_state(self.state, mask)

    def replan(self, mask: np.ndarray | None = None) -> None:
        """Drop the queued actions (of the envs in ``mask``, default all) but keep the
        observation history: the next :meth:`act` plans a new chunk from the current
        observation, e.g. when a human operator hands control back to the model."""
        mask = np.ones(self.n_envs, bool) if mask is None else np.asarray(mask, bool)
        self.left[mask] = 0
        # streaming diffusion's buffer is a queue of partly denoised future actions, planned
        # from the old observations too: restart it as well
        self.model.reset_state(self.state, mask)

    def observe(self, obs: dict[str, np.ndarray]) -> None:
        """Add observations of N envs to their history without acting (what :meth:`act` does
        first; on its own while someone else drives, e.g. a human operator)."""
        for key in self.model.obs_encoder_keys:
            x = np.asarray(obs[key])  # (N, ...)
            h = self.history.get(key)
            if h is None:
                h = np.repeat(x[:, None], self.n_obs_steps, axis=1)  # (N, To, ...)
            else:
                h = np.roll(h, -1, axis=1)  # oldest first; the newest goes last
                h[:, -1] = x
            h[self.fresh] = x[self.fresh][:, None]  # episode start: repeat the first obs
            self.history[key] = h
        self.fresh[:] = False

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Observations of N envs -> their next actions (N, Da), raw units."""
        self.observe(obs)
        need = self.left == 0
        if need.any():
            batch = {k: torch.as_tensor(h[need], device=self.device)
                     for k, h in self.history.items()}
            ids = np.flatnonzero(need)
            out = self.model.predict_action(batch, state=self.state, env_ids=ids)
            chunk = out["action"]  # (B', Ta, Da)
            self.queue[need] = chunk.float().cpu().numpy()
            self.left[need] = self.n_action_steps
        taken = self.n_action_steps - self.left  # index of each env's next action
        action = self.queue[np.arange(self.n_envs), taken]  # (N, Da)
        self.left -= 1
        return action
