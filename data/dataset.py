"""A torch Dataset of training windows from an episode store.

Low-dim arrays are loaded whole into memory once (a few reads of large chunks); images stay on
disk and are read through a per-process cache of whole decoded chunks. Every zarr call costs
about 0.6 ms here, so reading frame by frame would cap a worker near 1,000 frames/s; one call
per batch for all missing chunks, and slicing frames out of cached chunks, does not.

Batches come from indexing with an array of window ids (``dataset[ids]``), so one call builds a
whole batch with vectorized gathers; :func:`make_loader` wires that into a DataLoader.
"""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence

import numcodecs
import numpy as np
import torch
import zarr
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from robopolicy.data.sampler import SequenceSampler, split_episodes
from robopolicy.data.store import EpisodeStore
from robopolicy.errors import ConfigError, StoreError

# numcodecs decoders for the zarr v3 compressors a plainly encoded chunk may carry
_V3_DECODERS = {"blosc": numcodecs.Blosc, "zstd": numcodecs.Zstd, "gzip": numcodecs.GZip}


def plain_chunk_decoder(array: zarr.Array) -> Callable[[bytes], bytes] | None:
    """bytes -> raw C-order bytes for arrays encoded as (one compressor over) little-endian
    bytes, as this store and diffusion-policy stores write them; None for anything else."""
    md = array.metadata
    if md.zarr_format == 2:
        if md.filters or md.order != "C" or md.dtype.to_native_dtype().byteorder == ">":
            return None
        return md.compressor.decode if md.compressor is not None else bytes
    codecs = [c.to_dict()["name"] for c in md.codecs]
    endian = md.codecs[0].to_dict().get("configuration", {}).get("endian", "little")
    if codecs[0] != "bytes" or endian not in ("little", None) or len(codecs) > 2:
        return None
    if len(codecs) == 1:
        return bytes
    decoder = _V3_DECODERS.get(codecs[1])
    return decoder().decode if decoder else None


class ChunkCache:
    """LRU cache of whole decoded chunks of one zarr array (axis 0 chunks).

    zarr's indexing costs ~1 ms per chunk here even for whole chunks (projection and async
    dispatch per call); fetching the chunk objects with one concurrent ``store.get`` per batch
    and decoding them with numcodecs costs ~0.2 ms. That path is used for plainly encoded
    arrays; anything else (filters, sharding, other codecs) goes through zarr's own read.
    """

    def __init__(self, array: zarr.Array, max_bytes: int):
        self.array = array
        self.chunk_len = array.chunks[0]
        self.chunk_bytes = self.chunk_len * int(np.prod(array.shape[1:])) * array.dtype.itemsize
        self.max_chunks = max(1, max_bytes // max(1, self.chunk_bytes))
        self.chunks: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decode = plain_chunk_decoder(array)

    def _read(self, chunk_ids: np.ndarray) -> dict[int, np.ndarray]:
        if self._decode is None:
            return self._read_with_zarr(chunk_ids)
        store, md = self.array.store_path.store, self.array.metadata
        trailing = (0,) * (self.array.ndim - 1)
        keys = [f"{self.array.path}/{md.encode_chunk_key((int(c), *trailing))}" for c in chunk_ids]
        prototype = zarr.core.buffer.default_buffer_prototype()

        async def fetch():
            return await asyncio.gather(*(store.get(k, prototype) for k in keys))

        shape = (self.chunk_len, *self.array.shape[1:])
        out = {}
        for c, buf in zip(chunk_ids, zarr.core.sync.sync(fetch()), strict=True):
            if buf is None:  # never written: zarr's fill value
                chunk = np.full(shape, self.array.fill_value, dtype=self.array.dtype)
            else:
                raw = self._decode(buf.to_bytes())
                chunk = np.frombuffer(raw, dtype=self.array.dtype).reshape(shape)
            out[int(c)] = chunk[: self.array.shape[0] - int(c) * self.chunk_len]
        return out

    def _read_with_zarr(self, chunk_ids: np.ndarray) -> dict[int, np.ndarray]:
        # One orthogonal selection for every missing chunk, so zarr fetches them concurrently.
        n = self.array.shape[0]
        rows = [np.arange(c * self.chunk_len, min((c + 1) * self.chunk_len, n)) for c in chunk_ids]
        block = self.array.get_orthogonal_selection((np.concatenate(rows),))
        parts = np.split(block, np.cumsum([len(r) for r in rows])[:-1])
        return {int(c): part for c, part in zip(chunk_ids, parts, strict=True)}

    def take(self, steps: np.ndarray) -> np.ndarray:
        """Rows at ``steps`` (M,) -> (M, ...), reading only chunks not yet cached."""
        chunk_ids = steps // self.chunk_len
        unique = np.unique(chunk_ids)
        missing = np.array([c for c in unique if c not in self.chunks], dtype=np.int64)
        fresh = self._read(missing) if len(missing) else {}
        out = np.empty((len(steps), *self.array.shape[1:]), dtype=self.array.dtype)
        for c in unique.tolist():
            chunk = fresh[c] if c in fresh else self.chunks[c]
            rows = chunk_ids == c
            out[rows] = chunk[steps[rows] - c * self.chunk_len]
            self.chunks[c] = chunk
            self.chunks.move_to_end(c)
        while len(self.chunks) > self.max_chunks:  # evict after use: a batch may exceed the cache
            self.chunks.popitem(last=False)
        return out


class EpisodeDataset(Dataset):
    """Windows of ``horizon`` steps: observations cut to the first ``n_obs_steps``, actions
    over the whole horizon.

    A sample is ``{"obs": {key: (To, ...)}, "action": (T, Da)}``; indexing with an array of
    ids gives the batch ``{"obs": {key: (B, To, ...)}, "action": (B, T, Da)}``. Images come as
    stored, uint8 (H, W, C), so workers ship 4x fewer bytes; encoders convert them.

    ``split`` is "train", "val" or "all"; the split is seeded and by episode. ``episode_filter``
    keeps only episodes whose flag is true, given as a per-episode metadata name (e.g.
    "success", "mask_train") or a boolean array.
    """

    def __init__(self, path: str | os.PathLike, horizon: int, n_obs_steps: int,
                 n_action_steps: int, obs_keys: Sequence[str] | None = None,
                 action_key: str | None = None, split: str = "train", val_ratio: float = 0.0,
                 seed: int = 0, episode_filter: str | np.ndarray | None = None,
                 cache_bytes: int = 256 << 20):
        check_window(horizon, n_obs_steps, n_action_steps)
        self.path, self.cache_bytes = path, cache_bytes
        self.n_obs_steps = n_obs_steps
        with EpisodeStore.open(path) as store:
            self.obs_keys = list(obs_keys or store.keys_with_role("obs"))
            self.action_key = action_key or single_action_key(store)
            for key in [*self.obs_keys, self.action_key]:
                store.array(key)  # a clear error for a missing key, now rather than in a worker
            cameras = store.image_keys  # opens every array: once, not per key
            self.image_keys = [k for k in self.obs_keys if k in cameras]
            self.lowdim = {k: store.load(k) for k in [*self.obs_keys, self.action_key]
                           if k not in self.image_keys}
            allowed = _episode_flags(store, episode_filter)
            train, val = split_episodes(store.n_episodes, val_ratio, seed, allowed)
            mask = {"train": train, "val": val, "all": allowed}.get(split)
            if mask is None:
                raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
            self.episode_mask = mask
            self.sampler = SequenceSampler(store.episode_ends, horizon,
                                           pad_before=n_obs_steps - 1,
                                           pad_after=n_action_steps - 1, episode_mask=mask)
        self._pid, self._caches, self._store = None, {}, None

    def __len__(self) -> int:
        return len(self.sampler)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # each worker opens the store itself, on first use
        state["_pid"], state["_caches"], state["_store"] = None, {}, None
        return state

    def _image_cache(self, key: str) -> ChunkCache:
        # Reopen per process: a forked zip handle would share one file offset between workers.
        if self._pid != os.getpid():
            store = EpisodeStore.open(self.path)
            per_key = self.cache_bytes // max(1, len(self.image_keys))
            self._caches = {k: ChunkCache(store.array(k), per_key) for k in self.image_keys}
            self._store, self._pid = store, os.getpid()
        return self._caches[key]

    def _take(self, key: str, steps: np.ndarray) -> torch.Tensor:
        """Values of ``key`` at ``steps`` (B, T) -> tensor (B, T, ...)."""
        if key in self.lowdim:
            values = self.lowdim[key][steps]  # (B, T, ...)
        else:
            flat = self._image_cache(key).take(steps.reshape(-1))  # (B * T, H, W, C)
            values = flat.reshape(*steps.shape, *flat.shape[1:])  # (B, T, H, W, C)
        return torch.from_numpy(values)

    def __getitem__(self, index) -> dict:
        ids = np.atleast_1d(np.asarray(index, dtype=np.int64))  # (B,)
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)})")
        steps = self.sampler.steps(ids)  # (B, T)
        obs_steps = steps[:, : self.n_obs_steps]  # (B, To)
        batch = {"obs": {k: self._take(k, obs_steps) for k in self.obs_keys},
                 "action": self._take(self.action_key, steps)}
        if np.ndim(index) == 0:  # a single window: drop the batch axis
            batch = {"obs": {k: v[0] for k, v in batch["obs"].items()},
                     "action": batch["action"][0]}
        return batch

    def window_weights(self, flag_key: str, weight: float) -> np.ndarray:
        """Sampling weight per window (M,): ``weight`` where the per-step flag ``flag_key``
        (e.g. "intervention") is set at the window's current step (its last observed one),
        1 elsewhere. Used to up-weight human corrections (HG-DAgger-style retraining)."""
        with EpisodeStore.open(self.path) as store:
            flags = store.load(flag_key)  # (N,) every step of the store
        if flags.ndim != 1 or flags.dtype != bool:
            raise StoreError(f"{self.path}: data/{flag_key} must be a boolean flag per step, got "
                             f"{flags.dtype} {flags.shape}")
        current = self.sampler.steps_at(self.n_obs_steps - 1)  # (M,)
        return np.where(flags[current], float(weight), 1.0)


class StepBatchSampler(Sampler):
    """Endless batches of window ids in which the batch of step ``s`` depends only on
    (seed, rank, s): a resumed run draws exactly the batches an uninterrupted one would, and
    data-parallel ranks draw different ones. Ids are drawn with replacement, uniformly or
    in proportion to ``weights`` (M,)."""

    def __init__(self, n_windows: int, batch_size: int, seed: int = 0, rank: int = 0,
                 start_step: int = 0, weights: np.ndarray | None = None):
        if n_windows < 1:
            raise ValueError("no windows to sample from")
        self.n_windows, self.batch_size, self.seed, self.rank = n_windows, batch_size, seed, rank
        self.start_step = start_step
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        if self.weights is not None and self.weights.shape != (n_windows,):
            raise ValueError(f"weights have shape {tuple(self.weights.shape)}, expected "
                             f"({n_windows},)")

    def batch(self, step: int) -> np.ndarray:
        entropy = np.random.SeedSequence([self.seed, self.rank, step]).generate_state(2)
        g = torch.Generator().manual_seed(int(entropy[0]) << 32 | int(entropy[1]))
        if self.weights is None:
            ids = torch.randint(self.n_windows, (self.batch_size,), generator=g)  # (B,)
        else:
            ids = torch.multinomial(self.weights, self.batch_size, replacement=True, generator=g)
        return ids.numpy()

    def __iter__(self) -> Iterator[np.ndarray]:
        step = self.start_step
        while True:
            step += 1
            yield self.batch(step)


def check_window(horizon: int, n_obs_steps: int, n_action_steps: int) -> None:
    """The one rule for a window's lengths: 1 <= To <= T, and the Ta executed actions, which
    start at the last observed step, fit in the chunk: 1 <= Ta <= T - To + 1."""
    if not 1 <= n_obs_steps <= horizon:
        raise ConfigError(f"n_obs_steps={n_obs_steps} must be in [1, horizon={horizon}]")
    if not 1 <= n_action_steps <= horizon - n_obs_steps + 1:
        raise ConfigError(f"n_action_steps={n_action_steps} must be in [1, horizon - "
                          f"n_obs_steps + 1 = {horizon - n_obs_steps + 1}]")


def single_action_key(store: EpisodeStore) -> str:
    keys = store.keys_with_role("action")
    if len(keys) != 1:
        raise StoreError(f"{store.path}: expected one data key with role 'action', found "
                         f"{keys or 'none'}; pass action_key=")
    return keys[0]


def _episode_flags(store: EpisodeStore, episode_filter: str | np.ndarray | None) -> np.ndarray:
    """Which episodes may be sampled: all, those with a true metadata flag, or a given mask."""
    if episode_filter is None:
        return np.ones(store.n_episodes, bool)
    flags = store.meta(episode_filter) if isinstance(episode_filter, str) else episode_filter
    flags = np.asarray(flags)
    if flags.shape != (store.n_episodes,) or flags.dtype != bool:
        raise StoreError(f"{store.path}: episode filter {episode_filter!r} must be a boolean "
                         f"flag per episode ({store.n_episodes}), got {flags.dtype} {flags.shape}")
    return flags


def make_loader(dataset: EpisodeDataset, batch_size: int, shuffle: bool = True,
                num_workers: int = 0, seed: int = 0, drop_last: bool = True,
                batches: Sampler | None = None) -> DataLoader:
    """A DataLoader that builds each batch with one ``dataset[ids]`` call: epochs in seeded
    random (or sequential) order, or the id arrays of ``batches`` (a :class:`StepBatchSampler`;
    then ``batch_size``, ``shuffle``, ``seed`` and ``drop_last`` are its business)."""
    if batches is None:
        order = (RandomSampler(dataset, generator=torch.Generator().manual_seed(seed)) if shuffle
                 else SequentialSampler(dataset))
        batches = BatchSampler(order, batch_size, drop_last)
    # Its own generator: a DataLoader iterator otherwise draws its worker seed from torch's
    # global random stream, which would shift a resumed run's training noise.
    return DataLoader(dataset, sampler=batches, generator=torch.Generator().manual_seed(seed),
                      batch_size=None, num_workers=num_workers,
                      persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available())
