"""Benchmarks of serving training windows, each against the naive read in the same run.

- low-dim windows: B=256, T=16, To=2 from a 1M-step store, in-process.
- image windows: two 84x84x3 cameras, To=2, streamed from disk by 2 DataLoader workers.

The reference ("naive") reads each window with its own zarr slice per key, as a plain
``Dataset.__getitem__`` would. Each benchmark prints one JSON line with the median rate.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.dataset import EpisodeDataset, make_loader
from robopolicy.data.store import EpisodeStore

LOWDIM_KEYS = {"robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2,
               "object": 10, "action": 7}
CAMERAS = ("agentview_image", "robot0_eye_in_hand_image")


def _episode_lengths(n_steps: int, rng: np.random.Generator) -> list[int]:
    lengths = []
    while sum(lengths) < n_steps:
        lengths.append(int(rng.integers(100, 400)))
    lengths[-1] -= sum(lengths) - n_steps
    return [n for n in lengths if n > 0]


def _frames(n: int, phase: float, rng: np.random.Generator) -> np.ndarray:
    """Camera-like frames (n, 84, 84, 3): smooth shading, a moving blob and sensor noise."""
    y, x = np.mgrid[0:84, 0:84].astype(np.float32)
    t = np.arange(n, dtype=np.float32)[:, None, None]
    cx, cy = 42 + 25 * np.sin(t / 20 + phase), 42 + 25 * np.cos(t / 27 + phase)
    blob = 120 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / 60)  # (n, 84, 84)
    base = np.stack([x * 1.5, y * 1.2, (x + y) * 0.7], axis=-1)  # (84, 84, 3)
    frames = base + blob[..., None] + rng.normal(0, 3, (n, 84, 84, 3))
    return np.clip(frames, 0, 255).astype(np.uint8)


def build_store(path: Path, n_steps: int, images: bool, seed: int = 0) -> Path:
    """A store shaped like robomimic Lift (low-dim keys, optionally two cameras)."""
    rng = np.random.default_rng(seed)
    lengths = _episode_lengths(n_steps, rng)
    groups = np.array_split(lengths, max(1, n_steps // 20_000))  # ~20k steps per write
    with EpisodeStore.create(path, fps=20, robot="Panda", task="bench", source="benchmark",
                             overwrite=True) as store:
        for group in tqdm(groups, desc=f"build {path.name}", leave=False):
            n = int(group.sum())
            block = {k: rng.standard_normal((n, d)).astype(np.float32)
                     for k, d in LOWDIM_KEYS.items()}
            if images:
                block |= {cam: _frames(n, i, rng) for i, cam in enumerate(CAMERAS)}
            store.add_episodes(block, group, meta={"success": np.ones(len(group), bool)})
    return path


def _naive_windows(store: EpisodeStore, dataset: EpisodeDataset, n_windows: int,
                   rng: np.random.Generator) -> int:
    """Read windows one zarr slice per key, clamping at episode edges in numpy."""
    arrays = {k: store.array(k) for k in [*dataset.obs_keys, dataset.action_key]}
    sampler = dataset.sampler
    for w in rng.integers(0, len(dataset), n_windows):
        first, last = sampler.episode_start[w], sampler.episode_end[w]
        start = sampler.window_start[w]
        for key, arr in arrays.items():
            length = dataset.n_obs_steps if key in dataset.obs_keys else sampler.horizon
            lo, hi = max(start, first), min(start + length, last)
            block = arr[lo:hi]
            np.pad(block, [(lo - start, start + length - hi)] + [(0, 0)] * (block.ndim - 1),
                   mode="edge")
    return n_windows


def _rate(fn: Callable[[], int], repeats: int) -> float:
    """Median samples/s over repeats of fn (which returns how many samples it produced)."""
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_lowdim(workdir: Path, n_steps: int = 1_000_000, batch_size: int = 256) -> dict:
    path = build_store(workdir / "lowdim.zarr", n_steps, images=False)
    ds = EpisodeDataset(path, horizon=16, n_obs_steps=2, n_action_steps=8)
    rng = np.random.default_rng(0)

    def fast() -> int:
        for _ in range(200):
            ds[rng.integers(0, len(ds), batch_size)]
        return 200 * batch_size

    with EpisodeStore.open(path) as store:
        naive = _rate(lambda: _naive_windows(store, ds, 300, rng), repeats=3)
    rate = _rate(fast, repeats=5)
    return {"bench": "data.lowdim_windows", "samples_per_s": round(rate),
            "naive_samples_per_s": round(naive), "speedup_vs_naive": round(rate / naive, 1),
            "batch_size": batch_size, "horizon": 16, "n_obs_steps": 2, "store_steps": n_steps,
            "workers": 0}


def bench_images(workdir: Path, n_steps: int = 20_000, batch_size: int = 64,
                 workers: int = 2) -> dict:
    path = build_store(workdir / "images.zarr", n_steps, images=True)
    ds = EpisodeDataset(path, horizon=16, n_obs_steps=2, n_action_steps=8,
                        cache_bytes=64 << 20)
    loader = make_loader(ds, batch_size, shuffle=True, num_workers=workers)
    batches = (batch for _ in iter(int, 1) for batch in loader)  # endless; workers persist
    next(batches)  # start the workers outside the timed region

    def fast() -> int:
        for _ in range(50):
            next(batches)
        return 50 * batch_size

    rate = _rate(fast, repeats=5)
    with EpisodeStore.open(path) as store:
        naive = _rate(lambda: _naive_windows(store, ds, 200, np.random.default_rng(1)), 3)
    size_mb = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20
    return {"bench": "data.image_windows", "samples_per_s": round(rate),
            "naive_samples_per_s": round(naive), "speedup_vs_naive": round(rate / naive, 1),
            "batch_size": batch_size, "cameras": len(CAMERAS), "image": [84, 84, 3],
            "n_obs_steps": 2, "store_steps": n_steps, "store_mb_on_disk": round(size_mb),
            "cache_mb_per_worker": 64, "workers": workers}


def run(workdir: str | None = None, quick: bool = False) -> list[dict]:
    """Run the data benchmarks; ``quick`` shrinks the stores (for smoke tests)."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        results = [
            bench_lowdim(Path(tmp), n_steps=20_000 if quick else 1_000_000),
            bench_images(Path(tmp), n_steps=2_000 if quick else 20_000),
        ]
    for result in results:
        print(json.dumps(result), flush=True)
    return results
