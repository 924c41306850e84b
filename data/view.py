"""Stream an episode store to the Rerun viewer (``robopolicy data view``), or save a recording.

Entity paths, on the timelines ``step`` (global step index) and ``time`` (step / fps):

    cameras/<key>       every image key, one JPEG image per step
    obs/<key>           low-dim observations, one scalar series per dimension
    action/<key>        actions, likewise
    other/<key>         the rest (reward, done, timestamp, ...)
    episodes/index      episode index at each step: a staircase that marks the boundaries
    episodes/success    the ``success`` flag at each episode's first step (when the store has it)
    episodes/log        one text line per episode: index, length, task, metadata
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore
from robopolicy.errors import RobopolicyError, StoreError

APP_ID = "robopolicy_data_view"
JPEG_QUALITY = 90


def parse_episodes(spec: str | None, n_episodes: int) -> range:
    """``a:b`` (Python slice of episode indices, either end optional) or a single index."""
    if not spec:
        return range(n_episodes)
    try:
        parts = [int(p) if p.strip() else None for p in spec.split(":")]
    except ValueError:
        raise StoreError(f"--episodes {spec!r}: expected a:b or an index, e.g. 0:10") from None
    if len(parts) == 1:
        parts = [parts[0], parts[0] + 1 if parts[0] != -1 else None]
    if len(parts) != 2:
        raise StoreError(f"--episodes {spec!r}: expected a:b or an index, e.g. 0:10")
    episodes = range(n_episodes)[slice(*parts)]
    if not episodes:
        raise StoreError(f"--episodes {spec!r} selects no episode of the {n_episodes}")
    return episodes


def _scalar_series(rec, path: str, values: np.ndarray, steps: np.ndarray, fps: float) -> None:
    """A (T,) or (T, D) array as D scalar time series at ``path`` in one call."""
    import rerun as rr

    values = values.reshape(len(values), -1).astype(np.float64)  # (T, D); bool -> 0/1
    rec.send_columns(path, indexes=[rr.TimeColumn("step", sequence=steps),
                                    rr.TimeColumn("time", duration=steps / fps)],
                     columns=rr.Scalars.columns(scalars=values))


def _log_episode(rec, store: EpisodeStore, i: int, images: list[str], lowdim: list[str],
                 fps: float) -> None:
    import rerun as rr

    s = store.episode_slice(i)
    steps = np.arange(s.start, s.stop)
    data = store.get_episode(i)
    roles = store.roles
    for key in lowdim:
        _scalar_series(rec, f"{roles[key]}/{key}", data[key], steps, fps)
    _scalar_series(rec, "episodes/index", np.full(len(steps), i), steps, fps)
    for key in images:
        for t, step in enumerate(steps):
            rec.set_time("step", sequence=int(step))
            rec.set_time("time", duration=step / fps)
            image = rr.Image(data[key][t])
            if data[key].shape[-1] == 3:  # JPEG (RGB only): a tenth of the raw size
                image = image.compress(jpeg_quality=JPEG_QUALITY)
            rec.log(f"cameras/{key}", image)
    rec.set_time("step", sequence=s.start)
    rec.set_time("time", duration=s.start / fps)
    meta = store.episode_meta(i)
    if "success" in meta:
        rec.log("episodes/success", rr.Scalars(float(meta["success"])))
    details = ", ".join(f"{k}={v}" for k, v in meta.items())
    rec.log("episodes/log", rr.TextLog(f"episode {i}: {len(steps)} steps"
                                       + (f", {details}" if details else "")))


def _spawn_viewer(rec) -> None:
    """Start the viewer rerun-sdk installs beside our interpreter (found even when the
    virtualenv's bin/ is not on PATH) and connect ``rec`` to it."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY")
                                                  or os.environ.get("WAYLAND_DISPLAY")):
        raise RobopolicyError("no display for the Rerun viewer (DISPLAY and WAYLAND_DISPLAY are "
                              "unset); write a recording with --save FILE.rrd and open it with "
                              "`rerun FILE.rrd` where there is a screen")
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = os.pathsep.join([bindir, os.environ.get("PATH", "")])
    try:
        rec.spawn()
    except RuntimeError as exc:
        raise RobopolicyError(f"cannot start the Rerun viewer ({str(exc).splitlines()[0]}); "
                              "on a headless machine use --save FILE.rrd") from None


def view(path: str | os.PathLike, episodes: str | None = None,
         save: str | os.PathLike | None = None) -> dict:
    """Send the store (or a range of its episodes) to a Rerun viewer it spawns, or with
    ``save`` write a ``.rrd`` recording (headless). Returns what was sent."""
    import rerun as rr

    path = Path(path)
    with EpisodeStore.open(path) as store:
        selected = parse_episodes(episodes, store.n_episodes)
        fps = store.fps or 1.0
        images = store.image_keys
        lowdim = [k for k in store.keys if k not in images
                  and np.dtype(store.array(k).dtype).kind in "biuf"]
        rec = rr.RecordingStream(APP_ID)
        if save is not None:
            rec.save(str(save))
        else:
            _spawn_viewer(rec)
        for i in selected:
            _log_episode(rec, store, i, images, lowdim, fps)
        try:
            rec.flush()
        except RuntimeError as exc:  # the viewer went away (closed, or failed to start)
            raise RobopolicyError(f"could not send to the Rerun viewer: {exc}") from None
        rec.disconnect()
        steps = int(sum(store.episode_lengths[i] for i in selected))
    return {"path": str(path), "episodes": [selected.start, selected.stop], "steps": steps,
            "cameras": images, "series": lowdim, "saved": str(save) if save else None}
