"""Simulation speed: env steps/s per task (low-dim and with images), the native arm against
robosuite on the same task (interleaved, so machine load hits both alike), and vector-env
scaling (1 vs 2 subprocess workers, measured in the same run). One JSON line per result."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

from robopolicy.sim.core import make_env, task_names
from robopolicy.sim.vector import VectorEnv, step_info

# Envs per worker in the scaling benchmark: enough that a block's steps (~2.5 ms for the arm
# tasks) dwarf the ~0.4 ms round trip to its worker.
ENVS_PER_WORKER = 8


def _timed_steps(env, rng: np.random.Generator, n_steps: int) -> float:
    """Steps/s of ``n_steps`` random actions (resets excluded from the timing)."""
    elapsed = 0.0
    for _ in range(n_steps):
        action = rng.uniform(env.action_space.low, env.action_space.high)
        start = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        elapsed += time.perf_counter() - start
        if terminated or truncated:
            env.reset()
    return n_steps / elapsed


def env_steps_per_s(task: str, n_steps: int, images: bool, repeats: int = 3) -> float:
    """Median single-env steps/s with random actions (resets excluded from the timing)."""
    env = make_env(task, images=images)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    rates = [_timed_steps(env, rng, n_steps) for _ in range(repeats)]
    env.close()
    return statistics.median(rates)


def paired_speedup(task: str, reference: str, n_steps: int, blocks: int = 5) -> dict:
    """Low-dim steps/s of ``task`` and ``reference`` in alternating blocks, and the median of
    the per-block ratios: load on a shared machine slows both sides of each pair alike."""
    envs = {name: make_env(name) for name in (task, reference)}
    rng = np.random.default_rng(0)
    for env in envs.values():
        env.reset(seed=0)
        _timed_steps(env, rng, max(n_steps // 10, 1))  # warm up (caches, first contacts)
    rates = {name: [] for name in envs}
    for _ in range(blocks):
        for name, env in envs.items():
            rates[name].append(_timed_steps(env, rng, n_steps))
    for env in envs.values():
        env.close()
    ratios = [a / b for a, b in zip(rates[task], rates[reference], strict=True)]
    return {"bench": "sim.paired_speedup", "task": task, "reference": reference,
            "steps_per_s": round(statistics.median(rates[task]), 1),
            "reference_steps_per_s": round(statistics.median(rates[reference]), 1),
            "speedup": round(statistics.median(ratios), 2)}


def vector_steps_per_s(task: str, n_workers: int, envs_per_worker: int, n_steps: int,
                       chunk: tuple[int, int] | None = None) -> float:
    """Env steps/s (simulator steps summed over envs) of ``n_workers`` subprocesses, each
    stepping a block of ``envs_per_worker`` envs, with autoreset; with ``chunk=(To, Ta)``
    each call runs a chunk of Ta actions in the workers (``info["env_steps"]`` of them)."""
    n_envs = n_workers * envs_per_worker
    with VectorEnv(task, n_envs, autoreset=True, n_workers=n_workers, chunk=chunk) as env:
        env.reset(seed=0)
        space = env.single_action_space
        actions = np.random.default_rng(0).uniform(space.low, space.high,
                                                   (n_steps, n_envs, *space.shape))
        env.step(actions[0])  # warm up the workers
        done_steps, start = 0, time.perf_counter()
        for a in actions:
            _, _, terminated, truncated, info = env.step(a)
            done_steps += (int(step_info(info, "env_steps", terminated | truncated).sum())
                           if chunk else n_envs)
        return done_steps / (time.perf_counter() - start)


def chunked_speedup(task: str, n_action_steps: int, n_decisions: int, repeats: int = 3
                    ) -> dict:
    """Env steps/s of 2 workers x 8 envs stepped action by action and a chunk of
    ``n_action_steps`` at a time (one round trip per chunk), alternated ``repeats`` times."""
    rates = {"actions": [], "chunks": []}
    for _ in range(repeats):
        rates["actions"].append(vector_steps_per_s(task, 2, ENVS_PER_WORKER,
                                                   n_decisions * n_action_steps))
        rates["chunks"].append(vector_steps_per_s(task, 2, ENVS_PER_WORKER, n_decisions,
                                                  chunk=(1, n_action_steps)))
    ratios = [b / a for a, b in zip(rates["actions"], rates["chunks"], strict=True)]
    return {"bench": "sim.chunked_steps", "task": task, "n_action_steps": n_action_steps,
            "steps_per_s_by_action": round(statistics.median(rates["actions"]), 1),
            "steps_per_s_by_chunk": round(statistics.median(rates["chunks"]), 1),
            "speedup": round(statistics.median(ratios), 2)}


def vector_scaling(task: str, envs_per_worker: int, n_steps: int, repeats: int = 3) -> dict:
    """1 vs 2 workers with the same block of envs each, alternated ``repeats`` times; the
    median of the per-pair ratios."""
    rates = {1: [], 2: []}
    for _ in range(repeats):
        for n_workers in rates:
            rates[n_workers].append(vector_steps_per_s(task, n_workers, envs_per_worker,
                                                       n_steps))
    ratios = [b / a for a, b in zip(rates[1], rates[2], strict=True)]
    return {"bench": "sim.vector_scaling", "task": task, "envs_per_worker": envs_per_worker,
            "steps_per_s_1_worker": round(statistics.median(rates[1]), 1),
            "steps_per_s_2_workers": round(statistics.median(rates[2]), 1),
            "speedup_2_vs_1": round(statistics.median(ratios), 2)}


def run(workdir: str | None = None, quick: bool = False, tasks: list[str] | None = None,
        scaling_task: str = "panda_lift", compare: tuple[str, str] = ("panda_lift", "lift")
        ) -> list[dict]:
    """Print and return the simulation benchmarks (``workdir`` is unused: nothing is written)."""
    results = []
    for task in tasks or task_names():
        lowdim = env_steps_per_s(task, 200 if quick else 2000, images=False)
        image = env_steps_per_s(task, 10 if quick else 60, images=True, repeats=1)
        results.append({"bench": "sim.env_steps", "task": task,
                        "lowdim_steps_per_s": round(lowdim, 1),
                        "image_steps_per_s": round(image, 1)})
        print(json.dumps(results[-1]), flush=True)
    results.append(paired_speedup(*compare, n_steps=50 if quick else 300))
    print(json.dumps(results[-1]), flush=True)
    for envs_per_worker in (1, ENVS_PER_WORKER):
        results.append(vector_scaling(scaling_task, envs_per_worker, 20 if quick else 300,
                                      repeats=1 if quick else 3))
        print(json.dumps(results[-1]), flush=True)
    if not quick:  # the quick run checks the others are wired; this one only measures
        results.append(chunked_speedup(scaling_task, 8, 40))
        print(json.dumps(results[-1]), flush=True)
    return results
