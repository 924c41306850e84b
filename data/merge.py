"""Merge several episode stores into one new store, e.g. scripted demos plus human corrections
for HG-DAgger retraining (the trainer reads one store).

Sources must agree on task and control rate (None matches anything) and hold the same obs and
action keys with the same per-step shapes and dtypes. Keys of role "other" that only some
sources have are filled for the episodes of the others: ``timestamp`` with step / fps (what
teleop records: 0.0 at an episode's first step), ``intervention`` with False (no human was in
control of a scripted demo), anything else with zeros. Per-episode metadata is the union of
the sources' names (episodes without a name get the store's fill value), plus ``merged_from``,
the source path of each episode.

The merged store is built in a hidden temporary directory beside ``out``, validated, and renamed
into place only when complete: a failed or killed merge never leaves a half-written ``out``,
and the sources are only ever read.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.convert import COPY_BLOCK_BYTES
from robopolicy.data.store import ATTR, EpisodeStore
from robopolicy.data.validate import validate_store
from robopolicy.errors import StoreError

ORIGIN_META = "merged_from"  # per-episode metadata naming the store an episode came from
# (role, per-step shape, dtype) of a data key, as every source holding it must have it
KeySpec = tuple[str, tuple[int, ...], np.dtype]


def merge_stores(sources: Sequence[str | os.PathLike], out: str | os.PathLike,
                 overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Merge the episode stores ``sources``, in order, into a new store at ``out``.

    Returns a summary: ``out``, per-source ``sources`` ({path, episodes, steps}),
    ``n_episodes``, ``n_steps``, the merged ``keys`` and ``filled`` ({source: [keys filled]}).
    ``overwrite`` replaces an existing episode store at ``out`` once the merge has succeeded.
    """
    paths, out = [Path(s) for s in sources], Path(out)
    _check_out(out, paths, overwrite)
    with contextlib.ExitStack() as stack:
        stores = [stack.enter_context(EpisodeStore.open(p)) for p in paths]
        task, fps = _common_attr(stores, "task"), _common_attr(stores, "fps")
        layout = _merged_layout(stores)
        filled = {str(s.path): [k for k in layout if k not in s.keys]
                  for s in stores if s.n_episodes}
        filled = {src: keys for src, keys in filled.items() if keys}
        if fps is None and any("timestamp" in keys for keys in filled.values()):
            raise StoreError(f"{next(iter(filled))}: lacks 'timestamp' and no source gives an "
                             "fps to compute it from; set fps in the sources' attributes")
        meta_dtypes = _merged_meta_dtypes(stores)
        tmp = stack.enter_context(_fresh_output(out, overwrite))
        first = stores[0]
        with EpisodeStore.create(tmp, fps=fps, roles={k: s[0] for k, s in layout.items()},
                                 robot=first.info.get("robot"), task=task,
                                 source="merge:" + ",".join(p.name for p in paths)) as merged:
            merged.root.attrs.update(_shared_foreign_attrs(stores))
            with tqdm(total=sum(s.n_episodes for s in stores), desc=f"merge into {out.name}",
                      unit="episode", disable=not progress) as bar:
                for store in stores:
                    _copy_source(store, merged, layout, meta_dtypes, fps, bar)
        problems = validate_store(tmp)
        if problems:  # a safety net: never rename a store that validate would reject
            raise StoreError(f"{out}: the merged store failed validation, nothing was written: "
                             f"{problems[0].removeprefix(f'{tmp}: ')}")
        per_source = [{"path": str(s.path), "episodes": s.n_episodes, "steps": s.n_steps}
                      for s in stores]
    return {"out": str(out), "sources": per_source,
            "n_episodes": sum(s["episodes"] for s in per_source),
            "n_steps": sum(s["steps"] for s in per_source), "keys": sorted(layout),
            "filled": filled}


# --------------------------------------------------------------------------- checks
def _check_out(out: Path, sources: list[Path], overwrite: bool) -> None:
    """Refuse an output that would lose data: a source, or an existing path not to replace."""
    if not sources:
        raise StoreError(f"{out}: no source stores given; name at least one SRC")
    if out.resolve() in {p.resolve() for p in sources}:
        raise StoreError(f"{out}: is also one of the sources; write the merge to a new path")
    if not out.parent.is_dir():
        raise StoreError(f"{out}: parent directory {out.parent} does not exist")
    if not out.exists():
        return
    if not overwrite:
        raise StoreError(f"{out}: already exists; choose a new output path or pass "
                         "--overwrite (overwrite=True) to replace it")
    try:  # --overwrite replaces a store, never some other directory given by mistake
        EpisodeStore.open(out).close()
    except StoreError as exc:
        raise StoreError(f"{out}: exists and is not an episode store ({exc}); refusing to "
                         "overwrite it") from None


def _common_attr(stores: list[EpisodeStore], name: str) -> Any:
    """The one value of root attribute ``name`` the sources agree on (None matches anything)."""
    value, owner = None, None
    for store in stores:
        mine = store.info.get(name)
        if mine is None:
            continue
        if value is not None and mine != value:
            raise StoreError(f"{store.path}: {name} is {mine!r} but {owner} has {value!r}; "
                             f"merge only stores of one {name}")
        if value is None:
            value, owner = mine, store.path
    return value


def _merged_layout(stores: list[EpisodeStore]) -> dict[str, KeySpec]:
    """Role, step shape and dtype of every data key of the non-empty sources.

    A key held by several sources must agree in all three; obs and action keys must be held by
    every source (they cannot be made up), "other" keys may be missing and are filled.
    """
    layout: dict[str, KeySpec] = {}
    owner: dict[str, Path] = {}
    stores = [s for s in stores if s.n_episodes]  # an empty store has no arrays yet
    for store in stores:
        roles = store.roles
        for key in store.keys:
            arr = store.array(key)
            spec = (roles[key], tuple(arr.shape[1:]), np.dtype(arr.dtype))
            if key not in layout:
                layout[key], owner[key] = spec, store.path
            elif spec != layout[key]:
                role, shape, dtype = layout[key]
                raise StoreError(
                    f"{store.path}: data/{key} is {spec[0]} with step shape {spec[1]} and dtype "
                    f"{spec[2]}, but {owner[key]} has {role} {shape} {dtype}; every source "
                    "needs the same")
    for store in stores:
        for key, (role, _, _) in layout.items():
            if role != "other" and key not in store.keys:
                raise StoreError(f"{store.path}: lacks {role} key '{key}' that {owner[key]} has; "
                                 "every source needs the same obs and action keys")
    return layout


def _merged_meta_dtypes(stores: list[EpisodeStore]) -> dict[str, Any]:
    """One dtype per metadata name: text if any source stores text, else numpy's promotion
    (so seeds stored as int in one source and float in another both fit)."""
    seen: dict[str, list[np.dtype]] = {ORIGIN_META: [np.dtype(str)]}
    for store in stores:
        for name in store.meta_keys:
            seen.setdefault(name, []).append(np.dtype(store.root["meta"][name].dtype))
    return {name: str if any(d.kind in "UOT" for d in dtypes) else np.result_type(*dtypes)
            for name, dtypes in seen.items()}


def _shared_foreign_attrs(stores: list[EpisodeStore]) -> dict[str, Any]:
    """Root attributes robopolicy does not own (e.g. robomimic's env_args) that every source
    has with the same value; one source's value would mislabel the others' episodes."""
    first = {k: v for k, v in stores[0].root.attrs.asdict().items() if k != ATTR}
    return {k: v for k, v in first.items()
            if all(s.root.attrs.asdict().get(k, object()) == v for s in stores[1:])}


# --------------------------------------------------------------------------- copying
def _copy_source(store: EpisodeStore, merged: EpisodeStore, layout: dict[str, KeySpec],
                 meta_dtypes: dict[str, Any], fps: float | None, bar: tqdm) -> None:
    """Append every episode of ``store``, a block of whole episodes at a time (bounded memory,
    yet one write per key per block rather than per episode)."""
    n = store.n_episodes
    if not n:
        return
    missing = [k for k in layout if k not in store.keys]
    meta = {name: store.meta(name) for name in store.meta_keys}
    meta.setdefault(ORIGIN_META, np.full(n, str(store.path)))  # a merged source keeps its own
    meta = {name: _as_meta(v, meta_dtypes[name]) for name, v in meta.items()}
    ends = store.episode_ends
    for first, stop in _episode_blocks(store):
        start = int(ends[first - 1]) if first else 0
        block = store.get_steps(start, int(ends[stop - 1]))
        lengths = np.diff(ends[first:stop], prepend=start)
        for key in missing:
            block[key] = _fill(key, layout[key], lengths, fps)
        try:
            merged.add_episodes(block, lengths, {k: v[first:stop] for k, v in meta.items()})
        except StoreError as exc:  # name the source episodes, not the temporary output
            raise StoreError(f"{store.path}: episodes {first}..{stop - 1}: "
                             f"{str(exc).removeprefix(f'{merged.path}: ')}") from None
        bar.update(stop - first)


def _as_meta(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Metadata values in the merged dtype; zarr 3 reads text as StringDType, which numpy
    does not cast to fixed-width str directly, so text goes through Python objects."""
    if dtype is str:
        return np.asarray(values, dtype=object).astype(str)
    return np.asarray(values).astype(dtype)


def _episode_blocks(store: EpisodeStore) -> Iterator[tuple[int, int]]:
    """(first, stop) episode index ranges, each about COPY_BLOCK_BYTES or one whole episode."""
    row_bytes = sum(int(np.prod(store.array(k).shape[1:], dtype=np.int64))
                    * store.array(k).dtype.itemsize for k in store.keys)
    first, start = 0, 0
    ends = store.episode_ends
    for i, end in enumerate(ends):
        if (int(end) - start) * row_bytes >= COPY_BLOCK_BYTES or i == len(ends) - 1:
            yield first, i + 1
            first, start = i + 1, int(end)


def _fill(key: str, spec: KeySpec, lengths: np.ndarray, fps: float | None) -> np.ndarray:
    """Values of a key the source lacks, for a block of episodes of ``lengths`` steps."""
    _, shape, dtype = spec
    n = int(lengths.sum())
    if key == "timestamp":  # seconds since each episode's first step, as teleop records it
        steps = np.concatenate([np.arange(m) for m in lengths])  # (n,)
        seconds = (steps / fps).reshape(n, *(1,) * len(shape))  # (n, 1, ...)
        return np.broadcast_to(seconds, (n, *shape)).astype(dtype)
    return np.zeros((n, *shape), dtype)  # intervention: False, a scripted step had no human


# --------------------------------------------------------------------------- output
@contextmanager
def _fresh_output(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary path to build the store in, moved to ``out`` on success, removed on error."""
    tmp = out.parent / f".{out.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        _move_into_place(tmp, out, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is first moved aside, then deleted, so
    there is always a whole store under ``out`` or none."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not overwrite:  # appeared while we were merging
        raise StoreError(f"{out}: was created by someone else during the merge; nothing was "
                         "overwritten")
    old = out.parent / f".{out.name}.replaced-{os.getpid()}"
    os.rename(out, old)
    os.rename(tmp, out)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink()
