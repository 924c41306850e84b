"""Convert demonstrations into a new episode store (a zarr directory, v3 by default).

- robomimic HDF5 (``data/demo_N/...``, ``mask/<name>``): :func:`convert_robomimic`
- a LeRobot v3 dataset directory (``meta/info.json``, parquet, MP4):
  :func:`robopolicy.data.lerobot.convert_lerobot`
- any store :class:`EpisodeStore` reads (diffusion-policy zarr 2 directory or ``.zarr.zip``,
  zarr 3): :func:`convert_zarr`, which re-chunks into robopolicy's layout

Output is written to a hidden temporary directory beside ``dst`` and renamed into place only
when complete, so an existing path is never overwritten and a failed or killed conversion never
leaves a half-written store under the requested name.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.store import ATTR, EpisodeStore
from robopolicy.errors import StoreError

HDF5_SUFFIXES = (".hdf5", ".h5")
COPY_BLOCK_BYTES = 64 << 20  # convert_zarr reads whole episodes, about this much at a time
ROBOMIMIC_ATTR = "robomimic"  # root attribute holding the source file's env_args
# robomimic per-demo arrays and the store keys they become (all of role "other").
ROBOMIMIC_OTHER = {"rewards": "reward", "dones": "done", "states": "state"}


@contextmanager
def _fresh_output(dst: Path) -> Iterator[Path]:
    """A temporary path to build the store in, renamed to ``dst`` on success, removed on error."""
    if dst.exists():
        raise StoreError(f"{dst}: already exists; choose a new output path (nothing was "
                         "overwritten)")
    if not dst.parent.is_dir():
        raise StoreError(f"{dst}: parent directory {dst.parent} does not exist")
    tmp = dst.parent / f".{dst.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if dst.exists():  # appeared while we were converting
            raise StoreError(f"{dst}: was created by someone else during the conversion; "
                             f"nothing was overwritten")
        os.rename(tmp, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def convert(src: str | os.PathLike, dst: str | os.PathLike, zarr_format: int = 3,
            progress: bool = True) -> Path:
    """Convert ``src`` (robomimic HDF5, LeRobot v3 directory or any episode store) to a new
    store at ``dst``; the format is recognised from the path."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise StoreError(f"{src}: no such file or directory")
    if is_hdf5(src):
        return convert_robomimic(src, dst, zarr_format, progress)
    from robopolicy.data.lerobot import convert_lerobot, is_lerobot  # pyarrow only when needed

    if is_lerobot(src):
        return convert_lerobot(src, dst, zarr_format, progress)
    return convert_zarr(src, dst, zarr_format, progress)


def is_hdf5(path: Path) -> bool:
    """HDF5 by extension, or by content for a file with another name."""
    if path.suffix.lower() in HDF5_SUFFIXES:
        return True
    if not path.is_file():
        return False
    import h5py  # only needed for files that might be HDF5

    return bool(h5py.is_hdf5(path))


# --------------------------------------------------------------------------- robomimic
def _demo_number(name: str) -> int | None:
    match = re.fullmatch(r"demo_(\d+)", name)
    return int(match.group(1)) if match else None


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _env_args(src: Path, data_group) -> dict:
    """The ``env_args`` JSON attribute of robomimic's data group ({} when absent)."""
    raw = data_group.attrs.get("env_args")
    if raw is None:
        return {}
    try:
        parsed = json.loads(_decode(raw))
    except json.JSONDecodeError as exc:
        raise StoreError(f"{src}: data.attrs['env_args'] is not valid JSON ({exc})") from None
    return parsed if isinstance(parsed, dict) else {}


def _robot_name(env_args: dict) -> str | None:
    """robosuite gives robots as a name or a list of names."""
    robots = (env_args.get("env_kwargs") or {}).get("robots")
    if robots is None:
        return None
    return ",".join(robots) if isinstance(robots, list | tuple) else str(robots)


def _masks(src: Path, f) -> dict[str, set[str]]:
    """robomimic filter masks (``mask/<name>``: demo names as bytes) as ``{meta name: demos}``."""
    if "mask" not in f:
        return {}
    masks = {}
    for name in f["mask"]:
        meta_name = "mask_" + re.sub(r"\W", "_", name)  # metadata names must be identifiers
        masks[meta_name] = {_decode(v) for v in f["mask"][name][()]}
    return masks


def _robomimic_episode(src: Path, demo_name: str, demo) -> dict[str, np.ndarray]:
    """One demo's arrays under their store keys (``next_obs`` is dropped: it is obs shifted)."""
    if "actions" not in demo:
        raise StoreError(f"{src}: data/{demo_name} has no 'actions' dataset (not robomimic?)")
    episode = {"action": demo["actions"][()]}
    for name, key in ROBOMIMIC_OTHER.items():
        if name in demo:
            episode[key] = demo[name][()]
    for key in demo.get("obs", {}):
        if key in episode:
            raise StoreError(f"{src}: data/{demo_name}/obs/{key} clashes with the store key "
                             f"made from a per-demo dataset; rename that obs key")
        episode[key] = demo["obs"][key][()]
    lengths = {k: len(v) if v.ndim else 0 for k, v in episode.items()}
    if len(set(lengths.values())) != 1 or not lengths["action"]:
        raise StoreError(f"{src}: data/{demo_name} datasets need equal, non-zero lengths; "
                         f"got {lengths}")
    return episode


def convert_robomimic(src_hdf5: str | os.PathLike, dst: str | os.PathLike, zarr_format: int = 3,
                      progress: bool = True) -> Path:
    """Convert a robomimic HDF5 file into a new episode store at ``dst``.

    Demos are kept in numeric order of N (demo_10 after demo_2). Keys: ``data/<obs key>``
    (role obs), ``data/action`` (action), ``data/reward``, ``data/done``, ``data/state``
    (other). Per-episode metadata: ``demo`` (N) and ``mask_<name>`` (bool) for each mask.
    The parsed ``env_args`` go in the separate root attribute ``attrs["robomimic"]["env_args"]``
    (the ``robopolicy`` attribute keeps its fixed schema).
    """
    import h5py

    src, dst = Path(src_hdf5), Path(dst)
    try:
        f = h5py.File(src, "r")
    except OSError as exc:
        raise StoreError(f"{src}: cannot open as HDF5 ({exc})") from None
    with f, _fresh_output(dst) as tmp:
        if not isinstance(f.get("data"), h5py.Group):
            raise StoreError(f"{src}: no 'data' group (not a robomimic file)")
        demos = sorted((n for n in f["data"] if _demo_number(n) is not None), key=_demo_number)
        if not demos:
            raise StoreError(f"{src}: no data/demo_N groups (not a robomimic file)")
        env_args = _env_args(src, f["data"])
        masks = _masks(src, f)
        first = _robomimic_episode(src, demos[0], f["data"][demos[0]])
        roles = {k: "obs" for k in first}
        roles.update({"action": "action", **{k: "other" for k in ROBOMIMIC_OTHER.values()}})
        roles = {k: roles[k] for k in first}
        fps = (env_args.get("env_kwargs") or {}).get("control_freq")
        with EpisodeStore.create(tmp, fps=fps, roles=roles, robot=_robot_name(env_args),
                                 task=env_args.get("env_name"), source=f"robomimic:{src.name}",
                                 zarr_format=zarr_format) as store:
            store.root.attrs[ROBOMIMIC_ATTR] = {"env_args": env_args}
            pending: list[tuple[str, dict[str, np.ndarray]]] = []
            for name in tqdm(demos, desc=f"convert {src.name}", unit="demo",
                             disable=not progress):
                pending.append((name, _robomimic_episode(src, name, f["data"][name])))
                if sum(_nbytes(e) for _, e in pending) >= COPY_BLOCK_BYTES or name == demos[-1]:
                    _add_demos(src, store, pending, masks)
                    pending = []
    return dst


def _nbytes(episode: dict[str, np.ndarray]) -> int:
    return sum(v.nbytes for v in episode.values())


def _add_demos(src: Path, store: EpisodeStore, demos: list[tuple[str, dict]],
               masks: dict[str, set[str]]) -> None:
    """Append a block of demos with one write per key (not one per demo)."""
    names = [name for name, _ in demos]
    keys = demos[0][1].keys()
    for name, episode in demos:
        if episode.keys() != keys:  # concatenating would hide which demo differs
            raise StoreError(f"{src}: data/{name} has datasets {sorted(episode)}, "
                             f"data/{names[0]} has {sorted(keys)}; every demo needs the same")
    try:
        block = {k: np.concatenate([e[k] for _, e in demos]) for k in keys}
    except ValueError as exc:
        raise StoreError(f"{src}: demos {names[0]}..{names[-1]} disagree in shape ({exc})") \
            from None
    meta = {"demo": np.array([_demo_number(n) for n in names], np.int64),
            **{m: np.array([n in members for n in names]) for m, members in masks.items()}}
    lengths = [len(e["action"]) for _, e in demos]
    try:
        store.add_episodes(block, lengths, meta)
    except StoreError as exc:
        raise StoreError(f"{src}: demos {names[0]}..{names[-1]}: {exc}") from None


# --------------------------------------------------------------------------- zarr stores
def _episode_blocks(ends: np.ndarray, row_bytes: int) -> Iterator[tuple[int, int]]:
    """(first, stop) episode index ranges of whole episodes, each about COPY_BLOCK_BYTES."""
    first, start = 0, 0
    for i, end in enumerate(ends):
        if (int(end) - start) * row_bytes >= COPY_BLOCK_BYTES or i == len(ends) - 1:
            yield first, i + 1
            first, start = i + 1, int(end)


def convert_zarr(src: str | os.PathLike, dst: str | os.PathLike, zarr_format: int = 3,
                 progress: bool = True) -> Path:
    """Copy any store EpisodeStore reads into a new directory store at ``dst``.

    Every data key, episode end, per-episode metadata array and root attribute is copied; data
    is re-chunked and re-compressed into robopolicy's layout. Roles are written out in full
    (plain diffusion-policy stores get :func:`default_role`), and ``source`` is set to
    ``convert:<src name>`` when the source does not name one.
    """
    src, dst = Path(src), Path(dst)
    with EpisodeStore.open(src) as source, _fresh_output(dst) as tmp:
        info = source.info
        with EpisodeStore.create(tmp, fps=info.get("fps"), roles=source.roles,
                                 robot=info.get("robot"), task=info.get("task"),
                                 source=info.get("source") or f"convert:{src.name}",
                                 zarr_format=zarr_format) as out:
            for name, value in source.root.attrs.asdict().items():
                if name != ATTR:  # attributes robopolicy does not own are carried as they are
                    out.root.attrs[name] = value
            _copy_episodes(source, out, progress)
    return dst


def _copy_episodes(source: EpisodeStore, out: EpisodeStore, progress: bool) -> None:
    """Copy all committed episodes in blocks of whole episodes."""
    keys = source.keys
    if not keys or not source.n_episodes:
        return
    ends = source.episode_ends
    meta = {name: source.meta(name) for name in source.meta_keys}
    row_bytes = sum(int(np.prod(source.array(k).shape[1:], dtype=np.int64))
                    * source.array(k).dtype.itemsize for k in keys)
    bar = tqdm(total=source.n_episodes, desc=f"convert {source.path.name}", unit="episode",
               disable=not progress)
    with bar:
        for first, stop in _episode_blocks(ends, row_bytes):
            start = int(ends[first - 1]) if first else 0
            block = source.get_steps(start, int(ends[stop - 1]), keys)
            lengths = np.diff(ends[first:stop], prepend=start)
            out.add_episodes(block, lengths, {name: v[first:stop] for name, v in meta.items()})
            bar.update(stop - first)
