"""The episode store: demonstrations in zarr, in the diffusion-policy ``ReplayBuffer`` layout.

    data/<key>          every episode concatenated on axis 0, e.g. data/action (N, Da)
    meta/episode_ends   int64 (n_episodes,), exclusive end step of each episode
    meta/<name>         per-episode metadata aligned with episode_ends (success, seed, ...)
    attrs["robopolicy"] what the layout lacks: schema version, fps, key roles, robot, task, source

Stores written by zarr 2 (directories and ``.zarr.zip``) and zarr 3 are read; directories are
written in zarr v3 by default, v2 on request.

Crash safety rests on one ordering: data arrays grow first, then per-episode metadata, and
``episode_ends`` last. An episode is committed once its end is written; anything past the last
committed end is an uncommitted tail that readers ignore and the next writer trims. zarr writes
each file atomically (temporary file + rename), so a killed writer leaves at most stray
``*.partial`` files, which the next writer removes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import collect_aiterator

from robopolicy.errors import StoreError

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)
ATTR = "robopolicy"  # the one root attribute we own; everything else in attrs is left alone
ROLES = ("obs", "action", "other")
LOCK_NAME = ".robopolicy-writer.lock"
# Chunk sizes for the access pattern: image windows read a few frames at random, so image chunks
# hold a few frames; low-dim arrays are loaded whole, so their chunks are large.
IMAGE_CHUNK_BYTES = 128 * 1024
LOWDIM_CHUNK_BYTES = 1 << 20
META_CHUNK = 4096


def default_role(key: str) -> str:
    """Role of a key whose store does not declare one (plain diffusion-policy stores)."""
    return "action" if key == "action" else "obs"


def is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Camera frames are (N, H, W, C) uint8 with 1, 3 or 4 channels."""
    return np.dtype(dtype) == np.uint8 and len(shape) == 4 and shape[-1] in (1, 3, 4)


def _chunk_len(row_bytes: int, target_bytes: int) -> int:
    """Largest power of two of rows that fits in target_bytes (at least one row)."""
    rows = max(1, target_bytes // max(1, row_bytes))
    return 1 << (rows.bit_length() - 1)


def _blosc(zarr_format: int, cname: str, clevel: int, shuffle: str):
    """The same Blosc settings spelled for a v2 (numcodecs) or v3 (zarr codec) array."""
    if zarr_format == 2:
        modes = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                 "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
        return numcodecs.Blosc(cname=cname, clevel=clevel, shuffle=modes[shuffle])
    return BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)


def _fill_value(dtype: np.dtype) -> Any:
    """Value a per-episode metadata array holds for episodes that did not give one."""
    kind = np.dtype(dtype).kind
    return {"b": False, "f": np.nan, "i": -1, "u": 0}.get(kind, "")


def episode_ends_problems(ends: np.ndarray) -> list[str]:
    """What is wrong with a committed episode_ends array (empty list when sound)."""
    if ends.ndim != 1:
        return [f"meta/episode_ends has shape {ends.shape}; it must be 1-D"]
    if np.dtype(ends.dtype).kind not in "iu":
        return [f"meta/episode_ends has dtype {ends.dtype}; it must be an integer type"]
    bad = np.flatnonzero(np.diff(np.concatenate([[0], ends])) <= 0)
    if len(bad):
        i = int(bad[0])
        before = int(ends[i - 1]) if i else 0
        return [f"meta/episode_ends is not strictly increasing: entry {i} is {int(ends[i])} "
                f"after {before}"]
    return []


def split_committed(raw_ends: np.ndarray) -> tuple[np.ndarray, bool]:
    """Split episode_ends into its committed part and whether unwritten slots trail it.

    Growing episode_ends is a resize (new slots hold the fill value 0) followed by a write; a
    crash between the two leaves trailing zeros. No committed end is ever 0, so trailing zeros
    are exactly an interrupted commit; any other disorder is corruption, reported by the caller.
    """
    ends = np.asarray(raw_ends)
    n = len(ends) if ends.ndim == 1 else 0
    while n and ends[n - 1] == 0:
        n -= 1
    if ends.ndim != 1 or n == len(ends):
        return ends, False
    return ends[:n], True


def open_members(path: Path, group: zarr.Group) -> tuple[dict[str, Any], dict[str, str]]:
    """The children of ``group`` zarr can open (name -> array or group), and one problem line
    (naming the store, the key and zarr's reason, e.g. an unknown dtype) for each child it
    cannot open. Children are opened one at a time: zarr's own listing opens them together,
    raises the first failure and leaves the others' unretrieved, which asyncio reports as
    tracebacks at exit."""
    if group.metadata.consolidated_metadata is not None:  # parsed, so checked, on opening
        return dict(group.members()), {}
    skip = ("zarr.json",) if group.metadata.zarr_format == 3 else (".zattrs", ".zgroup",
                                                                    ".zarray", ".zmetadata")
    names = sorted(n for n in collect_aiterator(group.store.list_dir(group.path))
                   if n not in skip)
    members, problems = {}, {}
    for name in names:
        try:
            members[name] = group[name]
        except KeyError:  # not a zarr node: a stray file, e.g. the '*.partial' a killed writer
            continue
        except Exception as exc:  # noqa: BLE001 (zarr raises ValueError, TypeError, ... here)
            where = "/".join(p for p in (group.path, name) if p)
            problems[name] = (f"{path}: {where} cannot be read: {str(exc).splitlines()[0]} "
                              "(corrupt metadata, or written by a newer zarr)")
    return members, problems


class _WriterLock:
    """An exclusive advisory lock (flock) on a file inside the store, held while writing.

    The kernel drops it when the process dies, so a crashed writer never blocks the next one.
    """

    def __init__(self, store_path: Path):
        self.path = store_path / LOCK_NAME
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise StoreError(
                    f"{store_path}: already open for writing by another process (pid {holder}); "
                    "close that writer first (readers are fine)") from None
            # The file may have been unlinked by a writer closing between our open and flock.
            if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.unlink(self.path)  # unlink while holding the lock, so no one locks a dead inode
            os.close(self.fd)
            self.fd = None


def _open_group(path: Path, writable: bool) -> tuple[zarr.Group, Any]:
    """Open the root group of a directory or zip store; returns (group, zip store or None)."""
    if not path.exists():
        raise StoreError(f"{path}: no such store")
    zip_store = None
    try:
        if path.is_file():
            if writable:
                raise StoreError(f"{path}: zip stores are read-only; convert it to a directory "
                                 f"with `robopolicy data convert {path} OUT.zarr`")
            zip_store = zarr.storage.ZipStore(path, mode="r")
            return zarr.open_group(zip_store, mode="r"), zip_store
        return zarr.open_group(str(path), mode="r+" if writable else "r"), None
    except StoreError:
        raise
    except Exception as exc:  # zarr raises many types for a non-store; the user needs one line
        if zip_store is not None:
            with contextlib.suppress(AttributeError):  # ZipStore.close fails if it never opened
                zip_store.close()
        raise StoreError(f"{path}: not a readable zarr store ({type(exc).__name__}: {exc})"
                         ) from None


class EpisodeStore:
    """A demonstration store on disk. Use :meth:`create` or :meth:`open`; close when done.

    Readers see only committed episodes. A writer (``mode="a"``) holds an exclusive lock, trims
    any uncommitted tail a crash left behind, and appends episodes with :meth:`add_episode` or
    step by step through :meth:`episode_writer`.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self._lock = _WriterLock(self.path) if mode == "a" and self.path.is_dir() else None
        try:
            self.root, self._zip = _open_group(self.path, writable=mode == "a")
            self._load_layout()
            if self._lock is not None:
                for partial in self.path.rglob("*.partial"):  # only a killed writer leaves them
                    partial.unlink(missing_ok=True)
                self._trim_uncommitted()
        except BaseException:
            self.close()
            raise

    # ----------------------------------------------------------------- opening and creating
    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> EpisodeStore:
        """Open an existing store: ``mode="r"`` to read, ``"a"`` to append episodes."""
        return cls(path, mode)

    @classmethod
    def create(cls, path: str | os.PathLike, *, fps: float | None = None,
               roles: Mapping[str, str] | None = None, robot: str | None = None,
               task: str | None = None, source: str | None = None, zarr_format: int = 3,
               overwrite: bool = False) -> EpisodeStore:
        """Create an empty store and open it for writing.

        ``roles`` maps data keys to "obs", "action" or "other"; keys left out get
        :func:`default_role` when their first episode arrives.
        """
        path = Path(path)
        if path.exists() and not overwrite:
            raise StoreError(f"{path}: already exists; open it with mode='a' to append, or pass "
                             "overwrite=True to replace it")
        if zarr_format not in (2, 3):
            raise StoreError(f"{path}: zarr_format must be 2 or 3, got {zarr_format}")
        for key, role in (roles or {}).items():
            if role not in ROLES:
                raise StoreError(f"{path}: role of '{key}' is {role!r}; expected one of {ROLES}")
        root = zarr.open_group(str(path), mode="w", zarr_format=zarr_format)
        root.require_group("data")
        meta = root.require_group("meta")
        meta.create_array("episode_ends", shape=(0,), chunks=(META_CHUNK,), dtype="int64",
                          compressors=None, fill_value=0)
        root.attrs[ATTR] = {"schema_version": SCHEMA_VERSION, "fps": fps,
                            "roles": dict(roles or {}), "robot": robot, "task": task,
                            "source": source}
        return cls(path, mode="a")

    def close(self) -> None:
        if getattr(self, "_zip", None) is not None:
            self._zip.close()
            self._zip = None
        if getattr(self, "_lock", None) is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict:
        # DataLoader workers reopen the store themselves; zarr handles are not shared.
        if self.mode != "r":
            raise TypeError(f"{self.path}: a store open for writing cannot be pickled")
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], "r")

    def __repr__(self) -> str:
        return (f"EpisodeStore('{self.path}', mode='{self.mode}', episodes={self.n_episodes}, "
                f"steps={self.n_steps}, keys={self.keys})")

    # ----------------------------------------------------------------- layout
    def _load_layout(self) -> None:
        groups = self._members(self.root)
        for group in ("data", "meta"):
            if not isinstance(groups.get(group), zarr.Group):
                raise StoreError(f"{self.path}: missing group '{group}' (not an episode store)")
        self._data, self._meta = groups["data"], groups["meta"]
        # Opening every array now makes an unreadable one fail here, in one line naming it,
        # rather than in whichever reader touches it first.
        self._list(self._data)
        if "episode_ends" not in self._list(self._meta):
            raise StoreError(f"{self.path}: missing meta/episode_ends (not an episode store)")
        self.info = dict(self.root.attrs.get(ATTR) or {})
        version = self.info.get("schema_version")
        if version is not None and version not in SUPPORTED_SCHEMA_VERSIONS:
            raise StoreError(f"{self.path}: schema version {version} is not supported (this "
                             f"robopolicy reads {SUPPORTED_SCHEMA_VERSIONS}); upgrade robopolicy")
        self.zarr_format = self.root.metadata.zarr_format
        self._ends, self.interrupted_commit = split_committed(self._meta["episode_ends"][:])
        problems = episode_ends_problems(self._ends)
        if problems:
            raise StoreError(f"{self.path}: {problems[0]}")
        self._ends = self._ends.astype(np.int64)
        end = self.n_steps
        for key in self.keys:
            if self._data[key].shape[0] < end:
                raise StoreError(f"{self.path}: data/{key} has {self._data[key].shape[0]} steps "
                                 f"but episode_ends ends at {end} (truncated array)")

    def _members(self, group: zarr.Group) -> dict[str, Any]:
        members, problems = open_members(self.path, group)
        if problems:
            raise StoreError(next(iter(problems.values())))
        return members

    def _list(self, group: zarr.Group) -> list[str]:
        """Names of the arrays in ``group``; a StoreError naming the first unreadable one."""
        return sorted(k for k, v in self._members(group).items() if isinstance(v, zarr.Array))

    # ----------------------------------------------------------------- reading
    @property
    def keys(self) -> list[str]:
        """Names of the data arrays."""
        return self._list(self._data)

    @property
    def image_keys(self) -> list[str]:
        """Names of the data arrays that hold camera frames (:func:`is_image`)."""
        arrays = {k: self.array(k) for k in self.keys}  # each opened once
        return [k for k, a in arrays.items() if is_image(a.shape, a.dtype)]

    @property
    def meta_keys(self) -> list[str]:
        """Names of the per-episode metadata arrays (episode_ends excluded)."""
        return [k for k in self._list(self._meta) if k != "episode_ends"]

    @property
    def episode_ends(self) -> np.ndarray:
        return self._ends.copy()

    @property
    def n_episodes(self) -> int:
        return len(self._ends)

    @property
    def n_steps(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    @property
    def episode_lengths(self) -> np.ndarray:
        return np.diff(np.concatenate([[0], self._ends]))

    @property
    def fps(self) -> float | None:
        return self.info.get("fps")

    @property
    def roles(self) -> dict[str, str]:
        declared = self.info.get("roles") or {}
        return {k: declared.get(k, default_role(k)) for k in self.keys}

    def keys_with_role(self, role: str) -> list[str]:
        return [k for k, r in self.roles.items() if r == role]

    def array(self, key: str) -> zarr.Array:
        """The zarr array behind a data key (its length may exceed n_steps after a crash)."""
        if key not in self._data:
            raise StoreError(f"{self.path}: no data key '{key}' (keys: {', '.join(self.keys)})")
        return self._data[key]

    def episode_slice(self, index: int) -> slice:
        n = self.n_episodes
        if not -n <= index < n:
            raise StoreError(f"{self.path}: episode {index} out of range ({n} episodes)")
        index %= n
        start = int(self._ends[index - 1]) if index else 0
        return slice(start, int(self._ends[index]))

    def get_steps(self, start: int, stop: int, keys: Iterable[str] | None = None) -> dict:
        """Steps [start, stop) of the committed data, as numpy arrays."""
        stop = min(stop, self.n_steps)
        return {k: self.array(k)[start:stop] for k in (keys or self.keys)}

    def get_episode(self, index: int, keys: Iterable[str] | None = None) -> dict:
        s = self.episode_slice(index)
        return self.get_steps(s.start, s.stop, keys)

    def load(self, key: str) -> np.ndarray:
        """A whole data array (committed steps) in memory: one read of large chunks."""
        return self.array(key)[: self.n_steps]

    def meta(self, name: str) -> np.ndarray:
        """A per-episode metadata array, one entry per committed episode."""
        if name == "episode_ends":
            return self.episode_ends
        if name not in self._meta:
            raise StoreError(f"{self.path}: no episode metadata '{name}' "
                             f"(have: {', '.join(self.meta_keys) or 'none'})")
        return self._meta[name][: self.n_episodes]

    def episode_meta(self, index: int) -> dict[str, Any]:
        self.episode_slice(index)  # range check with a clear message
        index %= self.n_episodes
        return {k: self._meta[k][index].item() for k in self.meta_keys}

    # ----------------------------------------------------------------- writing
    def _require_writer(self) -> None:
        if self._lock is None:
            raise StoreError(f"{self.path}: opened read-only; open with mode='a' to write")

    def _check_block(self, data: Mapping[str, Any], first_step: int = 0) -> dict[str, np.ndarray]:
        """Validate a block of steps against the store; returns arrays cast to stored dtypes."""
        if not data:
            raise StoreError(f"{self.path}: an episode needs at least one data key")
        existing = set(self.keys)
        if existing and set(data) != existing:
            missing, extra = sorted(existing - set(data)), sorted(set(data) - existing)
            raise StoreError(f"{self.path}: episode keys differ from the store's "
                             f"(missing: {missing or 'none'}, unexpected: {extra or 'none'})")
        arrays = {k: np.asarray(v) for k, v in data.items()}
        lengths = {k: len(v) if v.ndim else 0 for k, v in arrays.items()}
        if len(set(lengths.values())) != 1 or 0 in lengths.values():
            raise StoreError(f"{self.path}: episode arrays need equal, non-zero lengths; "
                             f"got {lengths}")
        out = {}
        for key, value in arrays.items():
            if key in existing:
                stored = self._data[key]
                if value.shape[1:] != stored.shape[1:]:
                    raise StoreError(f"{self.path}: '{key}' has step shape {value.shape[1:]}, "
                                     f"the store has {stored.shape[1:]}")
                if not np.can_cast(value.dtype, stored.dtype, "same_kind"):
                    raise StoreError(f"{self.path}: '{key}' has dtype {value.dtype}, the store "
                                     f"has {stored.dtype}")
                value = value.astype(stored.dtype, copy=False)
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                step = first_step + int(np.argwhere(~np.isfinite(value))[0][0])
                raise StoreError(f"{self.path}: '{key}' has NaN or Inf at step {step} of the "
                                 "episode")
            out[key] = value
        return out

    def _create_data_array(self, key: str, value: np.ndarray) -> None:
        row_bytes = int(np.prod(value.shape[1:], dtype=np.int64)) * value.dtype.itemsize
        if is_image(value.shape, value.dtype):
            chunk, codec = _chunk_len(row_bytes, IMAGE_CHUNK_BYTES), ("lz4", 5, "noshuffle")
        else:
            chunk, codec = _chunk_len(row_bytes, LOWDIM_CHUNK_BYTES), ("zstd", 3, "bitshuffle")
        self._data.create_array(key, shape=(0, *value.shape[1:]), dtype=value.dtype,
                                chunks=(chunk, *value.shape[1:]),
                                compressors=_blosc(self.zarr_format, *codec))
        roles = dict(self.info.get("roles") or {})
        if key not in roles and ATTR in self.root.attrs:
            roles[key] = default_role(key)
            self.info["roles"] = roles
            self.root.attrs[ATTR] = self.info

    def _write_block(self, start: int, block: dict[str, np.ndarray]) -> int:
        """Write steps at ``start`` past the committed end (not yet part of any episode)."""
        n = len(next(iter(block.values())))
        for key, value in block.items():
            if key not in self._data:
                self._create_data_array(key, value)
            arr = self._data[key]
            arr.resize((start + n, *arr.shape[1:]))
            arr[start:start + n] = value
        return start + n

    def _check_meta(self, meta: Mapping[str, Any] | None, m: int) -> dict[str, np.ndarray]:
        """Per-episode metadata (name -> one value per each of ``m`` episodes), checked and
        converted to the stored dtypes before anything is written."""
        given = {}
        for name, values in (meta or {}).items():
            if name == "episode_ends" or not name.isidentifier():
                raise StoreError(f"{self.path}: bad episode metadata name {name!r}")
            values = np.asarray(values)
            if values.shape != (m,):
                raise StoreError(f"{self.path}: metadata '{name}' needs one scalar per episode "
                                 f"({m}); got values of shape {values.shape}")
            dtype = np.dtype(self._meta[name].dtype if name in self._meta else values.dtype)
            if dtype.kind in "UOT":  # text: anything can be written as its string
                given[name] = values.astype(str)
                continue
            if values.dtype.kind in "UOT" or not np.can_cast(values.dtype, dtype, "same_kind"):
                raise StoreError(f"{self.path}: metadata '{name}' of dtype {values.dtype} does "
                                 f"not fit the store's {dtype}")
            given[name] = values.astype(dtype)
        return given

    def _commit(self, ends: np.ndarray, given: Mapping[str, np.ndarray]) -> range:
        """Make written steps episodes ending at ``ends``: metadata first, episode_ends last.

        ``given`` is metadata already checked by :meth:`_check_meta`.
        """
        n, m = self.n_episodes, len(ends)
        for name, values in given.items():
            if name not in self._meta:
                dtype = str if values.dtype.kind in "UO" else values.dtype
                self._meta.create_array(name, shape=(n,), chunks=(META_CHUNK,), dtype=dtype,
                                        fill_value=_fill_value(dtype))
        for name in self.meta_keys:
            arr = self._meta[name]
            arr.resize((n + m,))
            fill = [_fill_value(arr.dtype)] * m
            arr[n:] = np.asarray(given.get(name, fill), dtype=arr.dtype)
        episode_ends = self._meta["episode_ends"]
        episode_ends.resize((n + m,))
        episode_ends[n:] = ends  # the commit point
        self._ends = np.concatenate([self._ends, np.asarray(ends, np.int64)])
        return range(n, n + m)

    def add_episode(self, data: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> int:
        """Append one whole episode (dict of equal-length arrays); returns its index."""
        n = len(np.asarray(next(iter(data.values())))) if data else 0
        meta = {k: [v] for k, v in (meta or {}).items()}
        return self.add_episodes(data, [n], meta)[0]

    def add_episodes(self, data: Mapping[str, Any], lengths: Any,
                     meta: Mapping[str, Any] | None = None) -> range:
        """Append several episodes stored back to back in ``data`` (one write per key, one
        commit); ``meta`` maps names to one value per episode. Returns their indices."""
        self._require_writer()
        block = self._check_block(data)
        lengths = np.asarray(lengths, dtype=np.int64)
        n = len(next(iter(block.values())))
        if lengths.ndim != 1 or (lengths <= 0).any() or lengths.sum() != n:
            raise StoreError(f"{self.path}: episode lengths {lengths.tolist()} must be positive "
                             f"and sum to the {n} steps given")
        given = self._check_meta(meta, len(lengths))
        start = self.n_steps
        self._write_block(start, block)
        return self._commit(start + np.cumsum(lengths), given)

    def episode_writer(self, flush_every: int = 64) -> EpisodeWriter:
        """A writer that takes an episode step by step (for recorders); commit or discard it."""
        self._require_writer()
        return EpisodeWriter(self, flush_every)

    def drop_last_episode(self) -> None:
        """Remove the last episode: uncommit it first, then trim its data."""
        self._require_writer()
        if not self.n_episodes:
            raise StoreError(f"{self.path}: no episode to drop")
        self._meta["episode_ends"].resize((self.n_episodes - 1,))
        self._ends = self._ends[:-1]
        self._trim_uncommitted()

    def _overlong(self) -> list[tuple[str, zarr.Array, int]]:
        """(name, array, committed length) of every array that runs past the last commit.

        Data arrays hold one row per committed step; meta arrays, episode_ends included (an
        interrupted commit), one per committed episode.
        """
        found = []
        for group, length in ((self._data, self.n_steps), (self._meta, self.n_episodes)):
            for key in self._list(group):
                if group[key].shape[0] > length:
                    found.append((f"{group.basename}/{key}", group[key], length))
        return found

    def uncommitted(self) -> list[str]:
        """What lies past the last committed episode (what a writer trims), one phrase each."""
        return [f"{name} from {arr.shape[0]} to {length} rows"
                for name, arr, length in self._overlong()]

    def _trim_uncommitted(self) -> None:
        """Cut everything past the last committed episode (left by a crash or a discard)."""
        for _, arr, length in self._overlong():
            arr.resize((length, *arr.shape[1:]))
        self.interrupted_commit = False


class EpisodeWriter:
    """Takes one episode step by step and writes it in blocks as it goes.

    Steps already flushed sit past the committed end: a crash leaves them as an uncommitted tail
    and every earlier episode intact. ``commit`` makes them an episode; ``discard`` trims them.
    Used as a context manager it discards on an exception and otherwise requires an explicit
    commit or discard.
    """

    def __init__(self, store: EpisodeStore, flush_every: int):
        self.store = store
        self.flush_every = max(1, flush_every)
        self.start = self.written = store.n_steps
        self._pending: dict[str, list] = {}
        self.closed = False

    def __len__(self) -> int:
        return self.written - self.start + len(next(iter(self._pending.values()), []))

    def append(self, step: Mapping[str, Any]) -> None:
        """Add one step: a dict of arrays without the leading time axis."""
        if self.closed:
            raise StoreError(f"{self.store.path}: this episode was already committed or discarded")
        if self._pending and set(step) != set(self._pending):
            raise StoreError(f"{self.store.path}: step {len(self)} has keys {sorted(step)}, "
                             f"earlier steps had {sorted(self._pending)}")
        for key, value in step.items():
            self._pending.setdefault(key, []).append(np.asarray(value))
        if len(next(iter(self._pending.values()))) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Write pending steps to the store (still uncommitted)."""
        if not self._pending or not next(iter(self._pending.values())):
            return
        try:
            block = {k: np.stack(v) for k, v in self._pending.items()}
        except ValueError as exc:
            raise StoreError(f"{self.store.path}: steps disagree in shape ({exc})") from None
        block = self.store._check_block(block, first_step=self.written - self.start)
        self.written = self.store._write_block(self.written, block)
        self._pending = {k: [] for k in self._pending}

    def commit(self, meta: Mapping[str, Any] | None = None) -> int:
        """Write the rest and commit the episode; returns its index."""
        given = self.store._check_meta({k: [v] for k, v in (meta or {}).items()}, 1)
        self.flush()
        if self.written == self.start:
            raise StoreError(f"{self.store.path}: cannot commit an empty episode")
        self.closed = True
        return self.store._commit(np.array([self.written]), given)[0]

    def discard(self) -> None:
        """Drop this episode; saved episodes are untouched."""
        self.closed = True
        self._pending = {}
        self.store._trim_uncommitted()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if not self.closed:
            self.discard()
            if exc_type is None:
                raise StoreError(f"{self.store.path}: episode writer closed without commit(); "
                                 "its steps were discarded")
