"""Evaluation of a policy in a task: the one evaluator training, fine-tuning and the CLI use.

Reports the success rate with a 95% Wilson score interval (sound at 0 and 1 and for small n,
unlike the normal approximation), mean return, episode lengths, MP4 videos of the first
episodes, and writes it all as ``eval.json`` next to the videos.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np

from robopolicy.sim.rollout import Episode, Policy, run_episodes
from robopolicy.sim.vector import VectorEnv


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (95% for z = 1.96)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0 or n successes the bound is exactly 0 or 1; pin it against rounding.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> Path:
    """Frames (H, W, 3) RGB uint8 -> an MP4 file (OpenCV's MPEG-4 encoder)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    try:
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def summarize(task: str, episodes: list[Episode], seed: int, seconds: float) -> dict:
    """The evaluation summary (JSON-able) of finished episodes, in episode order."""
    successes = [e.success for e in episodes]
    low, high = wilson_interval(sum(successes), len(episodes))
    return {"task": task, "n_episodes": len(episodes), "seed": seed,
            "success_rate": float(np.mean(successes)) if episodes else 0.0,
            "success_ci95": [low, high],
            "mean_return": float(np.mean([e.ret for e in episodes])) if episodes else 0.0,
            "episode_lengths": [e.length for e in episodes],
            "successes": successes, "seconds": round(seconds, 2),
            # episodes the env ended as failures, by kind ("self_collision", ...)
            "failures": dict(Counter(e.failure.split(":")[0] for e in episodes if e.failure))}


def evaluate(policy: Policy, task: str, n_episodes: int = 50, seed: int = 0, n_envs: int = 1,
             video_episodes: int = 0, out_dir: str | Path | None = None,
             env: VectorEnv | None = None, progress: bool = True, **overrides) -> dict:
    """Run ``n_episodes`` (episode i seeded ``seed + i``) and summarize them.

    Pass ``env`` (built with ``autoreset=False``) to reuse envs across evaluations, e.g.
    during training; otherwise one is built from ``task``, ``n_envs`` and ``overrides`` and
    closed afterwards. Videos of the first ``video_episodes`` episodes and ``eval.json`` go
    to ``out_dir`` when given.
    """
    own_env = env is None
    if own_env:
        env = VectorEnv(task, n_envs, autoreset=False, subprocess=n_envs > 1, **overrides)
    start = time.perf_counter()
    try:
        episodes = sorted(run_episodes(env, policy, n_episodes, seed,
                                       video_episodes=video_episodes, progress=progress),
                          key=lambda e: e.index)
        fps = env.fps
    finally:
        if own_env:
            env.close()
    summary = summarize(task, episodes, seed, time.perf_counter() - start)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        summary["videos"] = [str(write_video(out / f"episode_{e.index:03d}.mp4", e.frames, fps))
                             for e in episodes if e.frames]
        (out / "eval.json").write_text(json.dumps(summary, indent=2))
    return summary
