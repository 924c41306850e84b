"""The one environment interface every task implements, scripted experts, and the registry.

A task is a gymnasium ``Env`` (``reset(seed=...)``, ``step(action)``, ``observation_space``,
``action_space``) with what robopolicy adds on top:

- observations are a dict of named arrays: low-dim keys and, when built with ``images=True``,
  camera images ``(H, W, 3) uint8``, right side up;
- ``info["success"]`` on every step, and ``info["reward_terms"]``: the named reward terms,
  raw, which ``reward_weights`` combine into the scalar reward;
- ``info["failure"]``: '' or why the episode just ended as a failure (a joint limit, a
  self-collision, unstable physics), which terminates it;
- ``fps`` (control rate, Hz), ``max_episode_steps``, ``robot`` and ``task`` names, which the
  episode store records;
- deterministic seeding: the same seed gives the same initial state and, with the same
  actions, the same trajectory;
- ``teleop_mapping()``: how an operator's end-effector command becomes its action (teleop).

Every task has a scripted expert that acts from observations alone (so it runs beside the env,
in any process). ``make_env(name, **overrides)`` and ``make_expert(name, ...)`` build them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from robopolicy.errors import RobopolicyError

if TYPE_CHECKING:  # ee_command imports this module
    from robopolicy.sim.ee_command import TeleopMapping


class SimError(RobopolicyError):
    """A task name, override or action the simulator cannot take, or a failed worker."""


class TaskEnv(gym.Env):
    """Base class of every task. Subclasses set the class attributes and implement
    :meth:`_reset` and :meth:`_step`; this class does seeding, action checks, reward
    weighting, success termination and time limits, once for all tasks."""

    metadata = {"render_modes": ["rgb_array"]}
    fps: float = 20.0
    max_episode_steps: int = 500
    robot: str = ""
    task: str = ""
    reward_weights: Mapping[str, float] = {}  # a term missing here has weight 1
    terminate_on_success: bool = True
    failure: str = ""  # set by _step: why the episode ends as a failure now, or ''

    def __init__(self) -> None:
        self.render_mode = "rgb_array"
        self._t = 0

    # --- what a task implements ----------------------------------------------------------
    def _reset(self) -> dict[str, np.ndarray]:
        """Sample the initial state from ``self.np_random``; return the first observation."""
        raise NotImplementedError

    def _step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, float], bool]:
        """Apply one (clipped, checked) action; return (obs, reward terms, success)."""
        raise NotImplementedError

    def render(self) -> np.ndarray:
        """A frame (H, W, 3) uint8 for videos, right side up."""
        raise NotImplementedError

    def teleop_mapping(self) -> TeleopMapping | None:
        """A new mapping from an operator's end-effector command to this env's actions
        (``sim/ee_command.py``), or None: no device can drive this task."""
        return None

    # --- shared by all tasks --------------------------------------------------------------
    @property
    def image_keys(self) -> list[str]:
        return [k for k, s in self.observation_space.spaces.items() if s.dtype == np.uint8]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # seeds self.np_random; without a seed it continues
        self._t = 0
        return self._reset(), {"success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise SimError(f"{self.task}: action has shape {action.shape}, expected "
                           f"{self.action_space.shape}")
        if not np.isfinite(action).all():
            raise SimError(f"{self.task}: action contains NaN or Inf: {action.tolist()}")
        action = np.clip(action, self.action_space.low, self.action_space.high)
        self.failure = ""
        obs, terms, success = self._step(action)
        self._t += 1
        reward = float(sum(self.reward_weights.get(k, 1.0) * v for k, v in terms.items()))
        terminated = bool(success and self.terminate_on_success) or bool(self.failure)
        truncated = self._t >= self.max_episode_steps and not terminated
        return obs, reward, terminated, truncated, {"success": bool(success),
                                                    "reward_terms": dict(terms),
                                                    "failure": self.failure}


class ScriptedExpert:
    """Base class of scripted experts: ``reset(obs)`` at the start of an episode, then
    ``act(obs)`` each step, from observations alone.

    ``action_noise`` adds Gaussian noise (std, in action units) to every action;
    ``timing_jitter`` is the relative spread a subclass applies to its phase durations and
    thresholds, so demonstrations differ in timing and path.
    """

    def __init__(self, action_space: gym.spaces.Box, seed: int | None = None,
                 action_noise: float = 0.0, timing_jitter: float = 0.0):
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)
        self.action_noise = action_noise
        self.timing_jitter = timing_jitter

    def jitter(self, value: float) -> float:
        """``value`` scaled by a random factor in [1 - timing_jitter, 1 + timing_jitter]."""
        return value * (1.0 + self.timing_jitter * self.rng.uniform(-1.0, 1.0))

    def reset(self, obs: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def _act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        action = np.asarray(self._act(obs), dtype=np.float64)
        if self.action_noise:
            action = action + self.rng.normal(0.0, self.action_noise, action.shape)
        return np.clip(action, self.action_space.low, self.action_space.high)


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: how to build its env and its expert."""

    name: str
    make_env: Callable[..., TaskEnv]
    make_expert: Callable[..., ScriptedExpert]  # (action_space, seed, action_noise, jitter)
    description: str = ""


REGISTRY: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    REGISTRY[spec.name] = spec
    return spec


def _spec(name: str) -> TaskSpec:
    _load_builtin_tasks()
    if name not in REGISTRY:
        raise SimError(f"unknown task '{name}'; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def make_env(name: str, **overrides: Any) -> TaskEnv:
    """Build a registered task; ``overrides`` are its constructor's keyword arguments
    (e.g. ``images=True``, ``image_size=84``, ``max_episode_steps=300``)."""
    spec = _spec(name)
    try:
        return spec.make_env(**overrides)
    except TypeError as exc:  # an unknown keyword: say which task and which keyword
        raise SimError(f"task '{name}': bad override ({exc})") from None


def make_expert(name: str, action_space: gym.spaces.Box, seed: int | None = None,
                action_noise: float = 0.0, timing_jitter: float = 0.0) -> ScriptedExpert:
    """The scripted expert of a registered task (``action_space``: its env's, e.g. for the
    control mode the env was built with)."""
    return _spec(name).make_expert(action_space, seed=seed, action_noise=action_noise,
                                   timing_jitter=timing_jitter)


def task_names() -> list[str]:
    _load_builtin_tasks()
    return sorted(REGISTRY)


def _load_builtin_tasks() -> None:
    # Importing a task module registers it; robosuite is imported only when its tasks are made.
    from robopolicy.sim import native, robosuite_tasks  # noqa: F401
