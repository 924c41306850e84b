"""Many copies of one task stepped together: subprocess workers, or in-process for one env.

gymnasium's vector envs do the heavy lifting (worker processes, observations through shared
memory, autoreset, per-worker seeds ``seed + i``). This wrapper adds what they lack for us:
a worker that dies (killed, segfault in the simulator) becomes one clear :class:`SimError`
naming the worker and its exit code instead of a bare ``EOFError``, and Ctrl-C or any error
terminates the workers instead of leaving them behind.
"""

from __future__ import annotations

import functools
import multiprocessing

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from robopolicy.sim.core import SimError, make_env

_PIPE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)


class VectorEnv:
    """``n_envs`` copies of a registered task.

    ``autoreset=True`` resets a finished env within the same ``step`` call (its final
    observation and info go in ``info["final_obs"]`` / ``info["final_info"]``), for RL
    rollouts. ``autoreset=False`` leaves resets to the caller (``reset(seed=..., mask=...)``),
    which evaluation uses to give every episode its own seed. ``subprocess=False`` steps the
    envs in this process (no start-up cost; for one env or for tests).
    """

    def __init__(self, task: str, n_envs: int, autoreset: bool = True,
                 subprocess: bool = True, **overrides):
        if n_envs < 1:
            raise SimError(f"{task}: n_envs must be >= 1, got {n_envs}")
        self.task, self.n_envs = task, n_envs
        make = functools.partial(make_env, task, **overrides)
        mode = AutoresetMode.SAME_STEP if autoreset else AutoresetMode.DISABLED
        if subprocess:
            # spawn: workers must not inherit the parent's simulator or GL state.
            self.env: gym.vector.VectorEnv = AsyncVectorEnv(
                [make] * n_envs, shared_memory=True, context="spawn", autoreset_mode=mode)
        else:
            self.env = SyncVectorEnv([make] * n_envs, autoreset_mode=mode)
        self.single_observation_space = self.env.single_observation_space
        self.single_action_space = self.env.single_action_space
        self.fps = float(self.env.get_attr("fps")[0])  # control rate, Hz
        self.robot = str(self.env.get_attr("robot")[0])
        self._closed = False

    def _guard(self, fn, *args, **kwargs):
        """Run a vector-env call; turn a dead worker or Ctrl-C into a clean shutdown."""
        try:
            return fn(*args, **kwargs)
        except _PIPE_ERRORS:
            dead = [f"worker {i} (pid {p.pid}, exit code {p.exitcode})"
                    for i, p in enumerate(getattr(self.env, "processes", []))
                    if not p.is_alive()]
            self.close(terminate=True)
            raise SimError(f"{self.task}: vector env lost {', '.join(dead) or 'a worker'}; "
                           "all workers were stopped") from None
        except BaseException:
            self.close(terminate=True)
            raise

    def reset(self, seed: int | list[int | None] | None = None,
              mask: np.ndarray | None = None) -> tuple[dict, dict]:
        """Reset all envs (worker i seeded ``seed + i``), or only those in ``mask``
        (``seed`` then a list with one entry per env)."""
        options = None if mask is None else {"reset_mask": np.asarray(mask, dtype=bool)}
        return self._guard(self.env.reset, seed=seed, options=options)

    def step(self, actions: np.ndarray):
        """Step every env: (obs, reward, terminated, truncated, info), each batched."""
        return self._guard(self.env.step, np.asarray(actions))

    def render(self) -> tuple[np.ndarray, ...]:
        """One video frame per env."""
        return self._guard(self.env.call, "render")

    def close(self, terminate: bool = False) -> None:
        if self._closed:
            return
        self._closed = True
        if isinstance(self.env, AsyncVectorEnv):
            self.env.close(terminate=terminate)
        else:
            self.env.close()

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close(terminate=exc[0] is not None)

    def __del__(self):  # a forgotten close must not leave workers behind
        if not getattr(self, "_closed", True):
            self.close(terminate=True)


def worker_processes(env: VectorEnv) -> list[multiprocessing.process.BaseProcess]:
    """The worker processes (empty for in-process envs)."""
    return list(getattr(env.env, "processes", []))
