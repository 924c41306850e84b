"""Windows of ``horizon`` steps cut from episodes, and which episodes to cut them from.

A window may start ``pad_before`` steps before its episode and end ``pad_after`` steps after
it; the steps outside the episode repeat its first or last step (edge replication), so the
first observation of every episode and its final actions are all trained on.
"""

from __future__ import annotations

import numpy as np


class SequenceSampler:
    """All windows of an episode store, as (B, T) arrays of global step indices.

    ``episode_mask`` selects the episodes windows are drawn from (train/validation split,
    success filter, ...). Index ``i`` names one window; :meth:`steps` maps a batch of them to
    step indices, fully vectorized, so batches of thousands cost microseconds.
    """

    def __init__(self, episode_ends: np.ndarray, horizon: int, pad_before: int = 0,
                 pad_after: int = 0, episode_mask: np.ndarray | None = None):
        if horizon < 1 or pad_before < 0 or pad_after < 0:
            raise ValueError(f"need horizon >= 1 and pads >= 0, got horizon={horizon}, "
                             f"pad_before={pad_before}, pad_after={pad_after}")
        ends = np.asarray(episode_ends, dtype=np.int64)
        starts = np.concatenate([[0], ends[:-1]])
        if episode_mask is not None:
            episode_mask = np.asarray(episode_mask, dtype=bool)
            if episode_mask.shape != ends.shape:
                raise ValueError(f"episode_mask has shape {episode_mask.shape}, expected "
                                 f"{ends.shape} (one flag per episode)")
            starts, ends = starts[episode_mask], ends[episode_mask]
        self.horizon = horizon
        # Window starts run from start - pad_before to end - horizon + pad_after, inclusive.
        counts = np.maximum(ends - starts - horizon + pad_before + pad_after + 1, 0)
        episode = np.repeat(np.arange(len(ends)), counts)  # (M,) which episode each window is in
        first = np.repeat(np.cumsum(counts) - counts, counts)  # (M,) index of episode's 1st window
        self.window_start = starts[episode] - pad_before + (np.arange(len(episode)) - first)
        self.episode_start, self.episode_end = starts[episode], ends[episode]  # (M,) each

    def __len__(self) -> int:
        return len(self.window_start)

    def steps(self, windows: np.ndarray) -> np.ndarray:
        """Global step indices (B, T) of windows (B,), clamped to their episodes' ends."""
        windows = np.asarray(windows, dtype=np.int64)
        offsets = np.arange(self.horizon)  # (T,)
        steps = self.window_start[windows, None] + offsets  # (B, T)
        return np.clip(steps, self.episode_start[windows, None],
                       self.episode_end[windows, None] - 1)

    def steps_at(self, offset: int) -> np.ndarray:
        """The global step at ``offset`` within every window (M,), clamped like :meth:`steps`."""
        return np.clip(self.window_start + offset, self.episode_start, self.episode_end - 1)


def split_episodes(n_episodes: int, val_ratio: float, seed: int,
                   allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of episodes into train and validation masks, among ``allowed`` ones.

    At least one validation episode is kept when ``val_ratio > 0`` and two or more episodes
    are allowed; the split depends only on (n_episodes, allowed, val_ratio, seed).
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    allowed = np.ones(n_episodes, bool) if allowed is None else np.asarray(allowed, bool)
    candidates = np.flatnonzero(allowed)
    n_val = round(len(candidates) * val_ratio)
    if val_ratio > 0 and len(candidates) > 1:
        n_val = min(max(n_val, 1), len(candidates) - 1)
    val = np.zeros(n_episodes, bool)
    val[np.random.default_rng(seed).permutation(candidates)[:n_val]] = True
    return allowed & ~val, val
