"""One decision of an action-chunk policy as one env step: what RL fine-tuning steps.

:class:`ChunkedEnv` wraps a task so that an observation is the model's window of the last
``To`` observations and an action is a chunk of ``Ta`` actions, executed in order until the
chunk is done or the episode ends inside it (the rest of the chunk is dropped: it was
planned for an episode that is over). Run inside the vector env's workers
(``VectorEnv(..., n_obs_steps=To, n_action_steps=Ta)``), a decision costs one round trip
to a worker instead of ``Ta``, and an episode boundary never falls inside a chunk, which is
what an RL algorithm's per-decision rewards and advantages need. DPPO's ``MultiStep``
wrapper has the same role; this one keeps the task contract's info.

Windows start as the executor's do (``ChunkExecutor``) and as training windows are padded:
the first observation repeated ``To`` times.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from robopolicy.sim.core import SimError, TaskEnv, make_env


class ChunkedEnv(gym.Wrapper):
    """``env`` stepped a chunk at a time.

    Observation: {key: (To, ...)}, oldest first. Action: (Ta, Da). Reward: the sum of the
    executed steps' rewards; ``info["reward_terms"]`` sums each term the same way,
    ``info["success"]`` is whether any executed step succeeded, ``info["failure"]`` the
    failure that ended the episode ('' if none) and ``info["env_steps"]`` how many of the
    chunk's actions ran.
    """

    def __init__(self, env: TaskEnv, n_obs_steps: int, n_action_steps: int):
        super().__init__(env)
        if n_obs_steps < 1 or n_action_steps < 1:
            raise SimError(f"{env.task}: n_obs_steps and n_action_steps must be >= 1, got "
                           f"{n_obs_steps} and {n_action_steps}")
        self.n_obs_steps, self.n_action_steps = n_obs_steps, n_action_steps
        single = env.action_space
        self.action_space = spaces.Box(np.repeat(single.low[None], n_action_steps, 0),
                                       np.repeat(single.high[None], n_action_steps, 0),
                                       dtype=single.dtype)  # (Ta, Da)
        self.observation_space = spaces.Dict({
            key: spaces.Box(np.repeat(s.low[None], n_obs_steps, 0),
                            np.repeat(s.high[None], n_obs_steps, 0), dtype=s.dtype)
            for key, s in env.observation_space.spaces.items()})  # (To, ...)
        self._window: dict[str, np.ndarray] = {}

    def _observe(self, obs: dict[str, np.ndarray]) -> None:
        """Shift each window by one (in place) and put the newest observation last."""
        for key, window in self._window.items():
            window[:-1] = window[1:]
            window[-1] = obs[key]

    def _windows(self) -> dict[str, np.ndarray]:
        return {key: window.copy() for key, window in self._window.items()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        self._window = {key: np.repeat(np.asarray(value)[None], self.n_obs_steps, 0)
                        for key, value in obs.items()}  # (To, ...): the first, repeated
        return self._windows(), info

    def step(self, chunk):
        chunk = np.asarray(chunk)
        if chunk.shape != self.action_space.shape:
            raise SimError(f"{self.env.task}: action chunk has shape {chunk.shape}, expected "
                           f"{self.action_space.shape} (Ta, Da)")
        total, terms, success, executed = 0.0, {}, False, 0
        for action in chunk:
            obs, reward, terminated, truncated, info = self.env.step(action)
            executed += 1
            self._observe(obs)
            total += reward
            for name, value in info["reward_terms"].items():
                terms[name] = terms.get(name, 0.0) + value
            success |= info["success"]
            if terminated or truncated:
                break
        info = {"success": success, "reward_terms": terms, "failure": info["failure"],
                "env_steps": executed}
        return self._windows(), total, terminated, truncated, info


def make_chunked_env(task: str, n_obs_steps: int, n_action_steps: int, **overrides
                     ) -> ChunkedEnv:
    """A registered task stepped a chunk at a time (picklable, for vector env workers)."""
    return ChunkedEnv(make_env(task, **overrides), n_obs_steps, n_action_steps)
