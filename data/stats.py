"""Per-key statistics of a store in one pass over its chunks.

For each feature (the trailing dims of a key; per channel for images) the result holds ``min``,
``max``, ``mean``, ``std`` and the robust quantiles ``q01`` / ``q99``. Moments are exact. The
quantiles come from a strided subsample collected in the same pass (every row when the key has
at most ``QUANTILE_ROWS`` rows), so they are exact for small stores and close for large ones.
"""

from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.store import EpisodeStore, is_image

STAT_NAMES = ("min", "max", "mean", "std", "q01", "q99")
QUANTILE_ROWS = 100_000
IMAGE_QUANTILE_FRAMES = 64  # each frame already gives H * W values per channel


def _rows(block: np.ndarray, image: bool) -> np.ndarray:
    """Flatten a block to (rows, features): per channel for images, per trailing dims else."""
    if image:
        return block.reshape(-1, block.shape[-1])  # (N * H * W, C)
    return block.reshape(len(block), -1)  # (N, D)


def key_stats(store: EpisodeStore, key: str, progress: bool = False) -> dict[str, np.ndarray]:
    """Statistics of one data key over the committed steps."""
    arr = store.array(key)
    n = store.n_steps
    image = is_image(arr.shape, arr.dtype)
    feature_shape = arr.shape[-1:] if image else arr.shape[1:]
    stride = max(1, -(-n // (IMAGE_QUANTILE_FRAMES if image else QUANTILE_ROWS)))
    block_len = arr.chunks[0] * max(1, 4096 // arr.chunks[0]) if image else arr.chunks[0]
    count, total, total_sq = 0, 0.0, 0.0
    lo, hi, sample = None, None, []
    for start in tqdm(range(0, n, block_len), desc=f"stats {key}", disable=not progress):
        block = arr[start:min(start + block_len, n)]
        rows = _rows(block.astype(np.float64), image)
        count += len(rows)
        total = total + rows.sum(axis=0)
        total_sq = total_sq + np.square(rows).sum(axis=0)
        lo = rows.min(axis=0) if lo is None else np.minimum(lo, rows.min(axis=0))
        hi = rows.max(axis=0) if hi is None else np.maximum(hi, rows.max(axis=0))
        picked = block[(-start) % stride::stride]  # global step index divisible by stride
        sample.append(_rows(picked.astype(np.float64), image))
    if count == 0:
        raise ValueError(f"{store.path}: no steps to compute statistics of '{key}'")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
    q01, q99 = np.quantile(np.concatenate(sample), [0.01, 0.99], axis=0)
    stats = {"min": lo, "max": hi, "mean": mean, "std": std, "q01": q01, "q99": q99}
    return {k: v.reshape(feature_shape).astype(np.float32) for k, v in stats.items()}


def compute_stats(store: EpisodeStore, keys: list[str] | None = None,
                  progress: bool = False) -> dict[str, dict[str, np.ndarray]]:
    """Statistics of several keys (all data keys by default): ``{key: {stat: array}}``."""
    return {k: key_stats(store, k, progress) for k in (keys or store.keys)}
