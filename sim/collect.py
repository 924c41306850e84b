"""Demonstration collection with a task's scripted expert, into the episode store."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.errors import StoreError
from robopolicy.sim.evaluate import summarize
from robopolicy.sim.rollout import Episode, ExpertPolicy, run_episodes
from robopolicy.sim.vector import VectorEnv


def _episode_arrays(episode: Episode) -> dict[str, np.ndarray]:
    """Per-step observations and actions of a recorded episode, as (T, ...) arrays."""
    data = {k: np.stack(v) for k, v in episode.obs.items()}
    data["action"] = np.stack(episode.actions).astype(np.float32)  # (T, Da)
    return data


def collect(task: str, n_episodes: int, out: str | os.PathLike, images: bool = False,
            seed: int = 0, n_envs: int = 1, action_noise: float = 0.0,
            timing_jitter: float = 0.0, keep_failures: bool = False, zarr_format: int = 3,
            overwrite: bool = False, progress: bool = True, **overrides) -> dict:
    """Run the expert for ``n_episodes`` (episode i seeded ``seed + i``) and store them.

    Only successful episodes are kept unless ``keep_failures``; each stored episode records
    its success, seed, source and duration. Episodes are written in seed order whatever order
    the envs finish them in. Returns the expert's evaluation summary plus what was stored.
    """
    source = f"scripted_expert:{task}"
    start = time.perf_counter()
    if Path(out).exists() and not overwrite:  # before minutes of simulation, not after
        raise StoreError(f"{out}: already exists; choose a new path or pass overwrite=True "
                         "(--overwrite)")
    with VectorEnv(task, n_envs, autoreset=False, subprocess=n_envs > 1, images=images,
                   **overrides) as env:
        policy = ExpertPolicy(env, seed, action_noise, timing_jitter)
        roles = {key: "obs" for key in env.single_observation_space.spaces} | {"action": "action"}
        finished: dict[int, Episode] = {}
        next_index = 0  # episodes are stored in index order; later ones wait in `finished`
        with EpisodeStore.create(Path(out), fps=env.fps, roles=roles, robot=env.robot,
                                 task=task, source=source, zarr_format=zarr_format,
                                 overwrite=overwrite) as store:
            for episode in run_episodes(env, policy, n_episodes, seed, record=True,
                                        progress=progress):
                finished[episode.index] = episode
                next_index = _store_ready(store, finished, next_index, keep_failures, source,
                                          env.fps)
            summary = summarize(task, [finished[i] for i in sorted(finished)], seed,
                                time.perf_counter() - start)
            summary |= {"stored_episodes": store.n_episodes, "stored_steps": store.n_steps,
                        "out": str(out), "action_noise": action_noise,
                        "timing_jitter": timing_jitter, "images": images}
    return summary


def _store_ready(store: EpisodeStore, finished: dict[int, Episode], index: int,
                 keep_failures: bool, source: str, fps: float) -> int:
    """Store finished episodes from ``index`` on while there is no gap; returns the next."""
    while index in finished:
        episode = finished[index]
        if episode.success or keep_failures:
            store.add_episode(_episode_arrays(episode),
                              meta={"success": episode.success, "seed": episode.seed,
                                    "source": source, "duration_s": episode.length / fps})
        episode.obs, episode.actions = {}, []  # keep the summary numbers, free the steps
        index += 1
    return index
