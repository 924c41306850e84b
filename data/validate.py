"""Check an episode store on disk and say, one line each, what is wrong with it.

:func:`validate_store` never raises for a malformed store: it reads the raw zarr group itself
(rather than through :class:`EpisodeStore`, which stops at the first problem) so that one run
lists every problem it can find, each naming the path and key at fault and, where there is
one, the fix.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from numbers import Real
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from robopolicy.data.store import (
    ATTR,
    ROLES,
    SUPPORTED_SCHEMA_VERSIONS,
    episode_ends_problems,
    open_members,
    split_committed,
)

SCAN_BLOCK_BYTES = 32 << 20  # NaN/Inf scan reads whole chunks, about this much at a time


@contextmanager
def open_raw(path: Path) -> Iterator[zarr.Group]:
    """The root group of a directory or zip store, read-only; closes a zip store on exit."""
    if path.is_file():
        zip_store = zarr.storage.ZipStore(path, mode="r")
        try:
            yield zarr.open_group(zip_store, mode="r")
        finally:
            zip_store.close()
    else:
        yield zarr.open_group(str(path), mode="r")


def _members(path: Path, group: zarr.Group,
             problems: list[str]) -> tuple[dict[str, object], set[str]]:
    """The children of ``group`` zarr can open and the names of those it cannot, each of which
    gets a line in ``problems``."""
    members, unreadable = open_members(path, group)
    problems += unreadable.values()
    return members, set(unreadable)


def validate_store(path: str | os.PathLike, progress: bool = False) -> list[str]:
    """Every problem found in the store at ``path``, one line each (empty when sound)."""
    path = Path(path)
    if not path.exists():
        return [f"{path}: no such file or directory"]
    if path.is_file() and not zipfile.is_zipfile(path):
        return [f"{path}: not a zarr store (a file that is not a zip archive; stores are "
                "directories or .zarr.zip files)"]
    try:
        with open_raw(path) as root:
            return _check_root(path, root, progress)
    except Exception as exc:  # zarr raises many types for a non-store; the user needs one line
        return [f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})"]


def _check_root(path: Path, root: zarr.Group, progress: bool) -> list[str]:
    """All checks on an opened root group."""
    problems: list[str] = []
    members, unreadable = _members(path, root, problems)
    groups = {}
    for name in ("data", "meta"):
        if isinstance(members.get(name), zarr.Group):
            groups[name] = _members(path, members[name], problems)
        elif name not in unreadable:  # an unreadable one is reported already
            problems.append(f"{path}: missing group '{name}' (not an episode store in the "
                            "diffusion-policy layout: data/<key> arrays and meta/episode_ends)")
    data_members, bad_data = groups.get("data", ({}, set()))
    data = {k: v for k, v in data_members.items() if isinstance(v, zarr.Array)}
    problems += [f"{path}: data/{k} is a group; data/ must hold only arrays"
                 for k, v in data_members.items() if not isinstance(v, zarr.Array)]
    problems += _check_attrs(path, root, data if "data" in groups else None, bad_data)
    if "meta" not in groups:
        return problems
    meta, bad_meta = groups["meta"]
    if not isinstance(meta.get("episode_ends"), zarr.Array):
        if "episode_ends" not in bad_meta:
            problems.append(f"{path}: missing meta/episode_ends (the per-episode end steps)")
        return problems
    ends, ends_problems = _check_ends(path, meta["episode_ends"])
    problems += ends_problems
    if ends is None:  # without sound episode ends, lengths cannot be judged
        problems += _check_finite(path, data, None, progress)
        return problems
    n_steps = int(ends[-1]) if len(ends) else 0
    problems += _check_data_lengths(path, data, n_steps)
    problems += _check_meta_lengths(path, meta, len(ends))
    problems += _check_finite(path, data, ends, progress)
    return problems


def _check_ends(path: Path, array: zarr.Array) -> tuple[np.ndarray | None, list[str]]:
    """Committed episode ends (None when unusable) and the problems with them."""
    raw = array[...]
    if raw.ndim != 1 or np.dtype(raw.dtype).kind not in "iu":
        return None, [f"{path}: {p}" for p in episode_ends_problems(raw)]
    ends, interrupted = split_committed(raw)
    problems = [f"{path}: {p}" for p in episode_ends_problems(ends)]
    if problems:
        return None, problems
    if interrupted:
        problems.append(f"{path}: meta/episode_ends has an unwritten last slot (value "
                        f"{int(raw[-1])}) left by an interrupted commit; run "
                        f"`robopolicy data repair {path}` to trim it")
    return ends.astype(np.int64), problems


def _check_data_lengths(path: Path, data: dict[str, zarr.Array], n_steps: int) -> list[str]:
    """Each data array must cover exactly the committed steps."""
    problems = []
    for key, arr in sorted(data.items()):
        if arr.ndim == 0:
            problems.append(f"{path}: data/{key} is a scalar; data arrays need a time axis")
        elif arr.shape[0] > n_steps:
            problems.append(f"{path}: data/{key} has {arr.shape[0]} steps, "
                            f"{arr.shape[0] - n_steps} past the last episode end {n_steps} "
                            "(uncommitted tail of an interrupted write); run "
                            f"`robopolicy data repair {path}` to trim it")
        elif arr.shape[0] < n_steps:
            problems.append(f"{path}: data/{key} has {arr.shape[0]} steps but "
                            f"meta/episode_ends ends at {n_steps} (truncated array; the "
                            "missing steps cannot be recovered, re-record or re-convert them)")
    return problems


def _check_meta_lengths(path: Path, meta: dict[str, object], n_episodes: int) -> list[str]:
    """Per-episode metadata must have one entry per committed episode."""
    problems = []
    for name, arr in sorted(meta.items()):
        if name == "episode_ends":
            continue
        if not isinstance(arr, zarr.Array):
            problems.append(f"{path}: meta/{name} is a group; meta/ must hold only arrays")
        elif arr.ndim == 0 or arr.shape[0] < n_episodes:
            length = arr.shape[0] if arr.ndim else "no"
            problems.append(f"{path}: meta/{name} has {length} entries for {n_episodes} "
                            "episodes (per-episode metadata must have one per episode)")
        elif arr.shape[0] > n_episodes:
            # A commit writes metadata before episode_ends, so extra entries are its tail.
            problems.append(f"{path}: meta/{name} has {arr.shape[0]} entries for {n_episodes} "
                            "episodes (uncommitted tail of an interrupted write); run "
                            f"`robopolicy data repair {path}` to trim it")
    return problems


def _check_finite(path: Path, data: dict[str, zarr.Array], ends: np.ndarray | None,
                  progress: bool) -> list[str]:
    """NaN/Inf in float data, scanned a few chunks at a time; reports the first bad step."""
    problems = []
    for key, arr in sorted(data.items()):
        if arr.ndim == 0 or np.dtype(arr.dtype).kind not in "fc":
            continue
        # Readers ignore an uncommitted tail, so only committed steps count when they are known.
        n = arr.shape[0] if ends is None else min(arr.shape[0], int(ends[-1]) if len(ends) else 0)
        step = _first_nonfinite(arr, n, progress)
        if step is not None:
            where = ""
            if ends is not None:
                episode = int(np.searchsorted(ends, step, side="right"))
                start = int(ends[episode - 1]) if episode else 0
                where = f" (episode {episode}, its step {step - start})"
            problems.append(f"{path}: data/{key} has NaN or Inf at step {step}{where}; fix or "
                            "drop that episode before training")
    return problems


def _first_nonfinite(arr: zarr.Array, n: int, progress: bool) -> int | None:
    """Index of the first step in [0, n) holding a NaN or Inf, or None."""
    row_bytes = max(1, int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize)
    chunk = arr.chunks[0]
    block = chunk * max(1, SCAN_BLOCK_BYTES // (row_bytes * chunk))
    for start in tqdm(range(0, n, block), desc=f"scan {arr.basename}", disable=not progress):
        values = arr[start:min(start + block, n)]
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            return start + int(np.argmax(bad))
    return None


def _check_attrs(path: Path, root: zarr.Group, data: dict[str, zarr.Array] | None,
                 unreadable: set[str]) -> list[str]:
    """The robopolicy root attribute: schema version, fps and key roles (``unreadable``: data
    keys that exist but zarr cannot open, reported already)."""
    info = root.attrs.get(ATTR)
    if info is None:  # a plain diffusion-policy store: nothing declared, defaults apply
        return []
    if not isinstance(info, dict):
        return [f"{path}: attrs['{ATTR}'] is a {type(info).__name__}; it must be a mapping"]
    problems = []
    version = info.get("schema_version")
    if version is not None and version not in SUPPORTED_SCHEMA_VERSIONS:
        problems.append(f"{path}: attrs['{ATTR}']['schema_version'] is {version!r}, which this "
                        f"robopolicy does not know (supported: {SUPPORTED_SCHEMA_VERSIONS}); "
                        "upgrade robopolicy")
    fps = info.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, Real) or fps <= 0):
        problems.append(f"{path}: attrs['{ATTR}']['fps'] is {fps!r}; it must be a positive "
                        "number or null")
    roles = info.get("roles") or {}
    if not isinstance(roles, dict):
        return [*problems, f"{path}: attrs['{ATTR}']['roles'] is a {type(roles).__name__}; it "
                           "must map data keys to roles"]
    for key, role in sorted(roles.items()):
        if role not in ROLES:
            problems.append(f"{path}: attrs['{ATTR}']['roles'] gives data/{key} the role "
                            f"{role!r}; expected one of {', '.join(ROLES)}")
        # A new store may declare roles before its first episode creates the arrays.
        if data and key not in data and key not in unreadable:
            problems.append(f"{path}: attrs['{ATTR}']['roles'] names data/{key}, which does not "
                            f"exist (keys: {', '.join(sorted(data))})")
    return problems
