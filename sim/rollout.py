"""The episode loop shared by evaluation and demo collection.

A policy acts on batched observations from a :class:`VectorEnv`. Episode ``i`` always uses
seed ``seed + i``, whichever env runs it and however many envs there are, so results do not
depend on ``n_envs``. Envs are refilled with the next episode as soon as one finishes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from robopolicy.sim.core import ScriptedExpert, make_expert
from robopolicy.sim.vector import VectorEnv


class Policy(Protocol):
    """What the rollout loop drives: models (through the action-chunk executor) and experts."""

    def reset(self, mask: np.ndarray) -> None:
        """Envs where ``mask`` is true start a new episode: drop their history."""

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """Batched observations (N, ...) -> actions (N, Da)."""


@dataclass
class Episode:
    """One finished episode; ``steps`` (observations and actions) only when recorded."""

    index: int
    seed: int
    success: bool
    ret: float
    length: int
    failure: str = ""  # why the env ended it as a failure (info["failure"]), or ''
    obs: dict[str, list] = field(default_factory=dict)
    actions: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)


class ExpertPolicy:
    """Scripted experts, one per env, as a batched :class:`Policy`."""

    def __init__(self, env: VectorEnv, seed: int = 0, action_noise: float = 0.0,
                 timing_jitter: float = 0.0):
        self.experts: list[ScriptedExpert] = [
            make_expert(env.task, env.single_action_space, seed=seed * 1000 + i,
                        action_noise=action_noise, timing_jitter=timing_jitter)
            for i in range(env.n_envs)]
        self.fresh = np.ones(env.n_envs, bool)

    def reset(self, mask: np.ndarray) -> None:
        self.fresh |= mask  # experts reset on their next observation

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        actions = []
        for i, expert in enumerate(self.experts):
            single = {k: v[i] for k, v in obs.items()}
            if self.fresh[i]:
                expert.reset(single)
                self.fresh[i] = False
            actions.append(expert.act(single))
        return np.stack(actions)  # (N, Da)


def run_episodes(env: VectorEnv, policy: Policy, n_episodes: int, seed: int = 0,
                 record: bool = False, video_episodes: int = 0,
                 progress: bool = True) -> Iterator[Episode]:
    """Run ``n_episodes`` and yield each as it finishes (not necessarily in index order)."""
    n = env.n_envs
    slots = np.arange(n)
    episode_of = np.where(slots < n_episodes, slots, -1)  # episode running in each env, -1: idle
    next_episode = min(n, n_episodes)
    obs, _ = env.reset(seed=[seed + i for i in range(n)])
    policy.reset(np.ones(n, bool))
    running = [_new_episode(i, seed) for i in episode_of]
    bar = tqdm(total=n_episodes, desc=f"{env.task} episodes", disable=not progress)
    with bar:
        while (episode_of >= 0).any():
            filming = (episode_of >= 0) & (episode_of < video_episodes)
            if filming.any():
                for i, frame in zip(np.flatnonzero(filming), _pick(env.render(), filming),
                                    strict=True):
                    running[i].frames.append(frame)
            actions = policy.act(obs)
            if record:
                _record(running, episode_of, obs, actions)
            obs, reward, terminated, truncated, info = env.step(actions)
            done = np.zeros(n, bool)
            for i in np.flatnonzero(episode_of >= 0):
                ep = running[i]
                ep.ret += float(reward[i])
                ep.length += 1
                ep.success |= bool(info["success"][i])
                ep.failure = ep.failure or str(info["failure"][i])
                done[i] = terminated[i] or truncated[i]
            restart = np.zeros(n, bool)
            for i in np.flatnonzero(done):
                yield running[i]
                bar.update(1)
                episode_of[i] = next_episode if next_episode < n_episodes else -1
                next_episode += int(next_episode < n_episodes)
                running[i] = _new_episode(episode_of[i], seed)
                restart[i] = episode_of[i] >= 0
            if restart.any():
                obs = _reset_some(env, obs, restart, episode_of, seed)
                policy.reset(restart)


def _new_episode(index: int, seed: int) -> Episode:
    return Episode(index=int(index), seed=seed + int(index), success=False, ret=0.0, length=0)


def _pick(frames, mask: np.ndarray) -> list[np.ndarray]:
    return [frames[i] for i in np.flatnonzero(mask)]


def _record(running: list[Episode], episode_of: np.ndarray, obs: dict, actions: np.ndarray):
    """Append each running episode's observation and the action taken from it."""
    for i in np.flatnonzero(episode_of >= 0):
        for key, value in obs.items():
            running[i].obs.setdefault(key, []).append(np.array(value[i]))
        running[i].actions.append(np.array(actions[i]))


def _reset_some(env: VectorEnv, obs: dict, mask: np.ndarray, episode_of: np.ndarray,
                seed: int) -> dict:
    """Reset the masked envs with their next episode's seed; merge their first observations."""
    seeds = [seed + int(e) if m else None for e, m in zip(episode_of, mask, strict=True)]
    fresh, _ = env.reset(seed=seeds, mask=mask)
    return {k: np.where(mask.reshape(-1, *[1] * (v.ndim - 1)), fresh[k], v)
            for k, v in obs.items()}
