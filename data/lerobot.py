"""LeRobot v3 datasets in and out of episode stores.

A LeRobot v3 dataset is a directory:

    meta/info.json                          codebase_version, fps, features (name -> dtype, shape)
    meta/stats.json                         per-feature statistics (min, max, mean, std, count)
    meta/tasks.parquet                      task strings (pandas index) -> task_index
    meta/episodes/chunk-*/file-*.parquet    one row per episode: length, tasks, where its rows and
                                            video spans are
    data/chunk-*/file-*.parquet             one row per frame: every non-video feature
    videos/<feature>/chunk-*/file-*.mp4     one stream per camera, episodes back to back in time

:func:`convert_lerobot` reads one into a new store; :func:`export_lerobot` writes a store as one.
Feature names map to store keys without the ``observation.`` / ``observation.images.`` /
``next.`` prefixes (``observation.images.top`` -> ``top``); the original names are kept in the
root attribute ``attrs["lerobot"]`` so an export restores them.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.convert import _fresh_output
from robopolicy.data.store import EpisodeStore, is_image
from robopolicy.errors import StoreError

SUPPORTED_VERSIONS = ("v3.0",)
ATTR = "lerobot"  # root attribute: codebase version, features and store key -> feature name
# Columns every LeRobot frame row has; they are derivable from episode_ends, so not stored.
INDEX_COLUMNS = ("frame_index", "episode_index", "index", "task_index")
EXTRA_META = "robopolicy/"  # episodes-parquet columns carrying our per-episode metadata
CHUNK_FILE = "chunk-000/file-000"  # export writes one file of each kind
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"


def is_lerobot(path: Path) -> bool:
    """A directory laid out like a LeRobot dataset (even one missing info.json, so that the
    converter, not the zarr reader, reports what is wrong with it)."""
    meta = path / "meta"
    return path.is_dir() and ((meta / "info.json").is_file() or (meta / "episodes").is_dir()
                              or (meta / "tasks.parquet").is_file())


# --------------------------------------------------------------------------- reading
def load_info(root: Path) -> dict[str, Any]:
    """meta/info.json, checked for what the converter relies on."""
    path = root / "meta" / "info.json"
    if not path.is_file():
        raise StoreError(f"{root}: missing meta/info.json (not a LeRobot v3 dataset, or an "
                         "incomplete download)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise StoreError(f"{path}: codebase_version {version!r} is not supported (only "
                         f"{', '.join(SUPPORTED_VERSIONS)}); upgrade the dataset with LeRobot's "
                         "v2.1 -> v3.0 converter first")
    for field in ("fps", "features"):
        if field not in info:
            raise StoreError(f"{path}: no '{field}' entry")
    for name, feature in info["features"].items():
        dtype = feature.get("dtype") if isinstance(feature, dict) else None
        if dtype is None or "shape" not in feature:
            raise StoreError(f"{path}: feature '{name}' needs a 'dtype' and a 'shape'")
        if not _supported(dtype):
            raise StoreError(f"{path}: feature '{name}' has dtype {dtype!r}; a store holds "
                             "numbers, booleans and camera frames only")
    return info


def _supported(dtype: str) -> bool:
    """Camera frames, numbers and booleans (not strings: a store's data arrays are numeric)."""
    if dtype in ("video", "image"):
        return True
    try:
        return np.dtype(dtype).kind in "biuf"
    except TypeError:
        return False


def store_key(name: str) -> str:
    """Store key of a LeRobot feature: ``observation.images.top`` -> ``top``,
    ``observation.state`` -> ``state``, ``next.reward`` -> ``reward``."""
    for prefix in ("observation.images.", "observation.", "next."):
        if name.startswith(prefix):
            name = name[len(prefix):]
            break
    return name.replace(".", "_")


def role_of(name: str) -> str:
    if name == "action" or name.startswith("action."):
        return "action"
    return "obs" if name.startswith("observation.") else "other"


def _read_parquets(root: Path, folder: str) -> Any:
    """All ``folder/chunk-*/file-*.parquet`` files as one pyarrow table, in file order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = sorted((root / folder).glob("chunk-*/file-*.parquet"))
    if not files:
        raise StoreError(f"{root}: no {folder}/chunk-*/file-*.parquet files")
    try:
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    except (pa.ArrowInvalid, OSError) as exc:
        raise StoreError(f"{root / folder}: cannot read parquet ({exc})") from None


def _episodes(root: Path) -> list[dict[str, Any]]:
    """meta/episodes rows (without per-episode stats), in episode order."""
    table = _read_parquets(root, "meta/episodes")
    table = table.select([c for c in table.column_names if not c.startswith("stats/")])
    rows = sorted(table.to_pylist(), key=lambda r: r["episode_index"])
    if not rows:
        raise StoreError(f"{root}: meta/episodes lists no episodes")
    return rows


def _column(root: Path, table, name: str, feature: dict, where: str) -> np.ndarray:
    """One feature of an episode's rows as a (T, *shape) numpy array."""
    import pyarrow as pa

    if name not in table.column_names:
        raise StoreError(f"{root}: feature '{name}' is in meta/info.json but has no data in "
                         f"{where}")
    col = table[name].combine_chunks()
    if col.null_count:
        raise StoreError(f"{root}: feature '{name}' has {col.null_count} empty value(s) in "
                         f"{where}")
    if feature["dtype"] == "image":  # PNG bytes in a {bytes, path} struct
        from PIL import Image

        return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                         for b in col.field("bytes").to_pylist()])
    n = len(col)
    while isinstance(col.type, pa.ListType | pa.LargeListType | pa.FixedSizeListType):
        col = col.flatten()
    values = col.to_numpy(zero_copy_only=False)
    try:
        values = values.reshape(n, *feature["shape"])
    except ValueError:
        raise StoreError(f"{root}: feature '{name}' in {where} does not have the shape "
                         f"{feature['shape']} meta/info.json gives") from None
    if role_of(name) == "other" and tuple(feature["shape"]) == (1,):
        values = values.reshape(n)  # per-step scalars (reward, done) are 1-D in a store
    return values.astype(feature["dtype"], copy=False)


def _video(root: Path, info: dict, name: str, episode: dict, length: int) -> np.ndarray:
    """The camera frames of one episode, (T, H, W, 3) uint8, checked against its row count."""
    from robopolicy.data.video import read_span

    prefix = f"videos/{name}/"
    path = root / info.get("video_path", VIDEO_PATH).format(
        video_key=name, chunk_index=episode.get(prefix + "chunk_index", 0),
        file_index=episode.get(prefix + "file_index", 0))
    if not path.is_file():
        raise StoreError(f"{root}: feature '{name}' has no data: {path} does not exist")
    start = float(episode.get(prefix + "from_timestamp", 0.0))
    stop = float(episode.get(prefix + "to_timestamp", start + length / info["fps"]))
    frames = read_span(path, start, stop, info["fps"])
    if len(frames) != length:
        raise StoreError(f"{path}: episode {episode['episode_index']} has {len(frames)} video "
                         f"frames in [{start:g}, {stop:g}) s but {length} rows in the parquet "
                         "data; the video and the data disagree")
    return frames


class _DataFiles:
    """Frame rows of one episode, reading each data file once (files hold whole episodes)."""

    def __init__(self, root: Path, info: dict):
        self.root, self.info, self.path, self.table = root, info, None, None

    def rows(self, episode: dict):
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        path = self.root / self.info.get("data_path", DATA_PATH).format(
            chunk_index=episode.get("data/chunk_index", 0),
            file_index=episode.get("data/file_index", 0))
        if path != self.path:
            if not path.is_file():
                raise StoreError(f"{self.root}: episode {episode['episode_index']}'s data file "
                                 f"{path.relative_to(self.root)} does not exist")
            try:
                self.path, self.table = path, pq.read_table(path)
            except (OSError, ValueError) as exc:  # pyarrow's errors derive from these
                raise StoreError(f"{path}: cannot read parquet ({exc})") from None
        table = self.table
        rows = table.filter(pc.equal(table["episode_index"], episode["episode_index"]))
        return rows.sort_by("frame_index") if "frame_index" in rows.column_names else rows


def _episode_arrays(root: Path, info: dict, files: _DataFiles, episode: dict,
                    keys: dict[str, str]) -> dict[str, np.ndarray]:
    """Every feature of one episode under its store key."""
    rows = files.rows(episode)
    where = f"{files.path.relative_to(root)} (episode {episode['episode_index']})"
    length = rows.num_rows
    if length == 0 or length != episode.get("length", length):
        raise StoreError(f"{root}: episode {episode['episode_index']} has {length} rows in "
                         f"{files.path.relative_to(root)}, meta/episodes says "
                         f"{episode.get('length')}")
    out = {}
    for key, name in keys.items():
        feature = info["features"][name]
        if feature["dtype"] == "video":
            out[key] = _video(root, info, name, episode, length)
        else:
            out[key] = _column(root, rows, name, feature, where)
    return out


def _episode_meta(episode: dict) -> dict[str, Any]:
    meta = {"task": "; ".join(episode.get("tasks") or []),
            "lerobot_episode": int(episode["episode_index"])}
    meta.update({k[len(EXTRA_META):]: v for k, v in episode.items()
                 if k.startswith(EXTRA_META) and v is not None})
    return meta


def _store_keys(root: Path, info: dict) -> dict[str, str]:
    """Store key -> LeRobot feature name, for every feature the store keeps."""
    keys: dict[str, str] = {}
    for name in info["features"]:
        if name in INDEX_COLUMNS:
            continue
        key = store_key(name)
        if key in keys:
            raise StoreError(f"{root}: features '{keys[key]}' and '{name}' would both become "
                             f"store key '{key}'; rename one of them")
        keys[key] = name
    return keys


def convert_lerobot(src: str | os.PathLike, dst: str | os.PathLike, zarr_format: int = 3,
                    progress: bool = True) -> Path:
    """Convert a local LeRobot v3 dataset directory into a new episode store at ``dst``.

    Every episode in order and every feature: camera videos are decoded to (T, H, W, 3) uint8,
    ``timestamp`` is kept (role other), the index columns are dropped (episode_ends has them).
    Per-episode metadata: ``task`` (the episode's task strings) and ``lerobot_episode``.
    Statistics are not copied: the store's are computed from its data.
    """
    src, dst = Path(src), Path(dst)
    info = load_info(src)
    episodes = _episodes(src)
    keys = _store_keys(src, info)
    roles = {k: role_of(name) for k, name in keys.items()}
    tasks = {t for e in episodes for t in e.get("tasks") or []}
    files = _DataFiles(src, info)
    with _fresh_output(dst) as tmp, EpisodeStore.create(
            tmp, fps=info["fps"], roles=roles, robot=info.get("robot_type"),
            task=tasks.pop() if len(tasks) == 1 else None, source=f"lerobot:{src.name}",
            zarr_format=zarr_format) as store:
        store.root.attrs[ATTR] = {"codebase_version": info["codebase_version"],
                                  "features": info["features"], "keys": keys}
        for episode in tqdm(episodes, desc=f"convert {src.name}", unit="episode",
                            disable=not progress):
            data = _episode_arrays(src, info, files, episode, keys)
            store.add_episode(data, _episode_meta(episode))
    return dst


# --------------------------------------------------------------------------- writing
def _feature_name(key: str, role: str, image: bool, n_action_keys: int) -> str:
    """LeRobot name of a store key that did not come from LeRobot (the inverse of
    :func:`store_key` for the usual keys)."""
    if role == "action":
        return "action" if n_action_keys == 1 else f"action.{key}"
    if role == "obs":
        return f"observation.images.{key}" if image else f"observation.{key}"
    return f"next.{key}" if key in ("reward", "done", "success") else key


def _export_features(store: EpisodeStore) -> dict[str, tuple[str, dict]]:
    """Store key -> (LeRobot feature name, feature entry of info.json)."""
    known = (store.root.attrs.get(ATTR) or {}).get("keys") or {}
    roles = store.roles
    n_action = len(store.keys_with_role("action"))
    out = {}
    for key in store.keys:
        if key == "timestamp":  # written from the frame index, which the videos are timed by
            continue
        arr = store.array(key)
        image = is_image(arr.shape, arr.dtype)
        name = known.get(key) or _feature_name(key, roles[key], image, n_action)
        if name in INDEX_COLUMNS:
            raise StoreError(f"{store.path}: key '{key}' would overwrite LeRobot's own "
                             f"'{name}' column; rename it")
        if image:
            if arr.shape[-1] != 3:
                raise StoreError(f"{store.path}: camera '{key}' has {arr.shape[-1]} channels; "
                                 "only RGB (3) cameras can be written as video")
            h, w = arr.shape[1:3]
            feature = {"dtype": "video", "shape": [h, w, 3],
                       "names": ["height", "width", "channels"]}
        elif arr.ndim <= 2:
            feature = {"dtype": str(arr.dtype), "shape": [arr.shape[1] if arr.ndim == 2 else 1],
                       "names": None}
        else:
            raise StoreError(f"{store.path}: key '{key}' has step shape {arr.shape[1:]}; LeRobot "
                             "export takes vectors and RGB images only")
        out[key] = (name, feature)
    return out


def _arrow_column(values: np.ndarray):
    """(T,) -> a plain column, (T, D) -> a fixed-size list column (what LeRobot writes)."""
    import pyarrow as pa

    if values.ndim == 1:
        return pa.array(values)
    flat = pa.array(np.ascontiguousarray(values).reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


class _Stats:
    """Running min / max / mean / std / count of a feature over all frames (stats.json)."""

    def __init__(self, image: bool):
        self.image, self.n, self.parts = image, 0, []

    def add(self, values: np.ndarray) -> None:
        x = values.astype(np.float64)
        if self.image:  # per channel, in [0, 1] as LeRobot's loader expects
            x = x.reshape(-1, x.shape[-1]) / 255.0  # (T*H*W, 3)
        elif x.ndim == 1:
            x = x[:, None]  # (T, 1)
        self.parts.append((x.min(0), x.max(0), x.sum(0), (x**2).sum(0), len(x)))
        self.n += len(values)

    def result(self) -> dict[str, list]:
        mins, maxs, sums, sqs, counts = zip(*self.parts, strict=True)
        total = sum(counts)
        mean = np.sum(sums, 0) / total
        std = np.sqrt(np.maximum(np.sum(sqs, 0) / total - mean**2, 0))
        out = {"min": np.min(mins, 0), "max": np.max(maxs, 0), "mean": mean, "std": std}
        if self.image:  # shape (3, 1, 1): broadcastable over a (C, H, W) frame
            out = {k: v.reshape(-1, 1, 1) for k, v in out.items()}
        return {**{k: v.tolist() for k, v in out.items()}, "count": [self.n]}


def _tasks_table(tasks: list[str]):
    """meta/tasks.parquet: LeRobot reads it with pandas, the task strings as the index."""
    import pyarrow as pa

    table = pa.table({"task_index": pa.array(range(len(tasks)), pa.int64()),
                      "task": pa.array(tasks, pa.string())})
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
         "numpy_type": "int64", "metadata": None},
        {"name": "task", "field_name": "task", "pandas_type": "unicode",
         "numpy_type": "object", "metadata": None}]}
    return table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)})


def _episode_task(store: EpisodeStore, index: int) -> str:
    if "task" in store.meta_keys:
        return str(store.meta("task")[index]) or "unspecified"
    return store.info.get("task") or "unspecified"


def export_lerobot(src: str | os.PathLike, dst: str | os.PathLike, fps: float | None = None,
                   pix_fmt: str = "yuv420p", progress: bool = True) -> Path:
    """Write the store at ``src`` as a new LeRobot v3 dataset directory ``dst``.

    One data parquet file, one MP4 per camera (H.264 in ``pix_fmt``, yuv420p or yuv444p: see
    robopolicy.data.video), the episodes table, tasks and statistics. ``timestamp`` is written
    as frame_index / fps, the time the video frames are stamped with. Per-episode metadata
    other than ``task`` travels in ``robopolicy/<name>`` columns of the episodes table.
    """
    import pyarrow.parquet as pq

    from robopolicy.data.video import PIX_FMTS, VideoWriter

    src, dst = Path(src), Path(dst)
    if pix_fmt not in PIX_FMTS:
        raise StoreError(f"pix_fmt {pix_fmt!r} is not one of {', '.join(PIX_FMTS)}")
    with EpisodeStore.open(src) as store, _fresh_output(dst) as tmp:
        fps = fps or store.fps
        if not fps:
            raise StoreError(f"{src}: the store records no fps; pass --fps")
        fps = int(fps) if float(fps).is_integer() else float(fps)  # LeRobot's fps is an int
        if not store.n_episodes:
            raise StoreError(f"{src}: no episodes to export")
        features = _export_features(store)
        cameras = {k for k, (_, f) in features.items() if f["dtype"] == "video"}
        tasks = list(dict.fromkeys(_episode_task(store, i) for i in range(store.n_episodes)))
        videos = {k: VideoWriter(tmp / VIDEO_PATH.format(video_key=features[k][0], chunk_index=0,
                                                         file_index=0), fps,
                                 *features[k][1]["shape"][:2], pix_fmt) for k in cameras}
        stats = {k: _Stats(k in cameras) for k in [*features, "timestamp"]}
        (tmp / "data" / "chunk-000").mkdir(parents=True)
        writer, episodes = None, []
        for i in tqdm(range(store.n_episodes), desc=f"export {src.name}", unit="episode",
                      disable=not progress):
            data = store.get_episode(i, list(features))
            table, row = _episode_rows(store, i, data, features, fps, tasks)
            writer = writer or pq.ParquetWriter(tmp / f"data/{CHUNK_FILE}.parquet", table.schema)
            writer.write_table(table)
            for k in cameras:
                start = videos[k].n_frames / fps
                videos[k].write(data[k])
                row.update(_video_columns(features[k][0], start, videos[k].n_frames / fps))
            for k in features:
                stats[k].add(data[k])
            stats["timestamp"].add(table["timestamp"].to_numpy())
            episodes.append(row)
        writer.close()
        for video in videos.values():
            video.close()
        _write_meta(tmp, store, features, stats, episodes, tasks, fps)
    return dst


def _episode_rows(store: EpisodeStore, i: int, data: dict, features: dict, fps: float,
                  tasks: list[str]):
    """The frame rows of episode ``i`` (a pyarrow table) and its meta/episodes row."""
    import pyarrow as pa

    s = store.episode_slice(i)
    n = s.stop - s.start
    columns = {features[k][0]: _arrow_column(v) for k, v in data.items()
               if features[k][1]["dtype"] != "video"}
    task_index = tasks.index(_episode_task(store, i))
    columns.update({"timestamp": pa.array(np.arange(n) / fps, pa.float32()),
                    "frame_index": pa.array(np.arange(n), pa.int64()),
                    "episode_index": pa.array(np.full(n, i), pa.int64()),
                    "index": pa.array(np.arange(s.start, s.stop), pa.int64()),
                    "task_index": pa.array(np.full(n, task_index), pa.int64())})
    row = {"episode_index": i, "tasks": [tasks[task_index]], "length": n,
           "data/chunk_index": 0, "data/file_index": 0,
           "dataset_from_index": s.start, "dataset_to_index": s.stop,
           "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
    row.update({EXTRA_META + name: value for name, value in store.episode_meta(i).items()
                if name not in ("task", "lerobot_episode")})
    return pa.table(columns), row


def _video_columns(name: str, start: float, stop: float) -> dict[str, Any]:
    prefix = f"videos/{name}/"
    return {prefix + "chunk_index": 0, prefix + "file_index": 0,
            prefix + "from_timestamp": start, prefix + "to_timestamp": stop}


def _write_meta(tmp: Path, store: EpisodeStore, features: dict, stats: dict,
                episodes: list[dict], tasks: list[str], fps: float) -> None:
    """info.json, stats.json, tasks.parquet and the episodes table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robopolicy.data.video import CODEC, PIX_FMT, codec_info

    info_features = {}
    for name, feature in features.values():
        if feature["dtype"] == "video":
            video = codec_info(tmp / VIDEO_PATH.format(video_key=name, chunk_index=0,
                                                       file_index=0))
            h, w, c = feature["shape"]
            feature = {**feature, "info": {
                "video.height": h, "video.width": w, "video.codec": video["codec"],
                "video.pix_fmt": video["pix_fmt"] or PIX_FMT, "video.is_depth_map": False,
                "video.fps": fps, "video.channels": c, "has_audio": False,
                "video.encoder": CODEC}}
        info_features[name] = feature
    info_features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
    for name in INDEX_COLUMNS:
        info_features[name] = {"dtype": "int64", "shape": [1], "names": None}
    info = {"codebase_version": SUPPORTED_VERSIONS[-1], "robot_type": store.info.get("robot"),
            "total_episodes": store.n_episodes, "total_frames": store.n_steps,
            "total_tasks": len(tasks), "chunks_size": 1000, "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200, "fps": fps,
            "splits": {"train": f"0:{store.n_episodes}"}, "data_path": DATA_PATH,
            "video_path": VIDEO_PATH if any(f["dtype"] == "video" for _, f in
                                            features.values()) else None,
            "features": info_features}
    meta = tmp / "meta"
    (meta / "episodes" / "chunk-000").mkdir(parents=True)
    (meta / "info.json").write_text(json.dumps(info, indent=4))
    names = {k: features[k][0] if k in features else k for k in stats}
    (meta / "stats.json").write_text(json.dumps(
        {names[k]: s.result() for k, s in stats.items()}, indent=4))
    pq.write_table(_tasks_table(tasks), meta / "tasks.parquet")
    pq.write_table(pa.Table.from_pylist(episodes), meta / f"episodes/{CHUNK_FILE}.parquet")
