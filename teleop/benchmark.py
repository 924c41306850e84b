"""Control-loop timing of the recorder: the scripted operator drives Lift at 20 Hz, recording
camera images, with the background episode writer and, as the reference in the same run, with
the store's writer called inline in the loop; then the writer alone in a 20 Hz loop with a fixed
40 ms of work per tick, so its share shows apart from the simulator's rendering speed. One JSON
line per configuration: median and p99 step period and the p99's ratio to the target period.

Episodes are held past success (the arm keeps the cube up) so that they are longer than the
writer's 64-step block and its flushes fall inside the timed loop.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from robopolicy.sim.core import make_env
from robopolicy.teleop.recorder import Recorder, open_store
from robopolicy.teleop.scripted import ScriptedDevice


def loop_timing(workdir: Path, images: bool, background: bool, episodes: int, steps: int,
                rate: float = 20.0) -> dict:
    """Record ``episodes`` of ``steps`` steps each; returns the recorder's timing summary."""
    env = make_env("lift", images=images, max_episode_steps=steps)
    env.terminate_on_success = False  # episodes run their full length (see module doc)
    name = f"{'img' if images else 'lowdim'}_{'bg' if background else 'inline'}.zarr"
    try:
        with open_store(workdir / name, env, "lift", source="bench") as store:
            summary = Recorder(env, ScriptedDevice(), store, task="lift", rate=rate,
                               episodes=episodes, background=background,
                               keep_failures=True).run()
    finally:
        env.close()
    target_ms = 1000.0 / rate
    return {"bench": "teleop.loop", "task": "lift", "images": images,
            "writer": "background" if background else "inline", "rate_hz": rate,
            "steps": len_steps(summary),
            "median_ms": summary["step_period_median_ms"],
            "p99_ms": summary["step_period_p99_ms"],
            "p99_vs_target": round(summary["step_period_p99_ms"] / target_ms, 3),
            "env_step_median_ms": summary["env_step_median_ms"]}


def writer_timing(workdir: Path, background: bool, steps: int, rate: float = 20.0,
                  work_ms: float = 40.0) -> dict:
    """The writer alone: a 20 Hz loop whose tick is ``work_ms`` of busy work (standing in for
    an env step with cameras) plus one append of two 84x84 camera frames and low-dim data, so
    the writer's share of the period shows without the simulator's rendering speed."""
    import numpy as np

    from robopolicy.data.store import EpisodeStore
    from robopolicy.teleop.writer import BackgroundEpisodeWriter, InlineEpisodeWriter

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 84, 84, 3), dtype=np.uint8)
    path = workdir / f"writer_{'bg' if background else 'inline'}.zarr"
    periods, period = [], 1.0 / rate
    with EpisodeStore.create(path, fps=rate) as store:
        writer = (BackgroundEpisodeWriter if background else InlineEpisodeWriter)(store)
        writer.begin()
        deadline = last = time.perf_counter()
        for t in range(steps):
            now = time.perf_counter()
            if t:
                periods.append(now - last)
            last = now
            while time.perf_counter() - now < work_ms / 1000:  # the "env step"
                pass
            writer.append({"agentview_image": frames[0] ^ t % 256,
                           "robot0_eye_in_hand_image": frames[1] ^ t % 256,
                           "robot0_eef_pos": rng.normal(size=3).astype(np.float32),
                           "action": rng.normal(size=7).astype(np.float32)})
            deadline += period
            delay = deadline - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:  # overran: as the recorder does, no burst to catch up
                deadline = time.perf_counter()
        writer.commit()
        writer.close()
    ms = np.asarray(periods) * 1000
    return {"bench": "teleop.writer", "writer": "background" if background else "inline",
            "rate_hz": rate, "work_ms": work_ms, "steps": steps,
            "median_ms": round(float(np.median(ms)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "p99_vs_target": round(float(np.percentile(ms, 99)) / (1000 * period), 3)}


def len_steps(summary: dict) -> int:
    return sum(r["steps"] for r in summary["results"])


def run(workdir: str | None = None, quick: bool = False) -> list[dict]:
    """Print and return the loop timings (images with both writers, then low-dim)."""
    episodes, steps = (1, 80) if quick else (3, 200)
    results = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for images, background in ((True, True), (True, False), (False, True)):
            results.append(loop_timing(Path(tmp), images, background, episodes, steps))
            print(json.dumps(results[-1]), flush=True)
        for background in (True, False):
            results.append(writer_timing(Path(tmp), background, 100 if quick else 600))
            print(json.dumps(results[-1]), flush=True)
    return results
