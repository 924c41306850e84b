"""Export an episode store to other formats: LeRobot v3 (:mod:`robopolicy.data.lerobot`) and
robomimic HDF5 (:func:`export_robomimic`).

Like conversion, an export is built under a hidden temporary name beside ``dst`` and renamed
into place when complete; an existing path is never overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from robopolicy.data.convert import ROBOMIMIC_ATTR, ROBOMIMIC_OTHER, _fresh_output
from robopolicy.data.store import EpisodeStore, is_image
from robopolicy.errors import StoreError

FORMATS = ("lerobot", "robomimic")
# store key -> robomimic per-demo dataset (the inverse of the converter's mapping)
ROBOMIMIC_DATASETS = {key: name for name, key in ROBOMIMIC_OTHER.items()}


def export(src: str | os.PathLike, dst: str | os.PathLike, fmt: str, fps: float | None = None,
           pix_fmt: str = "yuv420p", progress: bool = True) -> dict:
    """Write the store ``src`` as a ``fmt`` dataset at ``dst``; returns a summary dict
    (``path``, ``format``, ``episodes``, ``steps``, ``dropped`` keys the format has no place
    for). ``fps`` and ``pix_fmt`` (the cameras' chroma layout) apply to LeRobot only."""
    if fmt not in FORMATS:
        raise StoreError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "lerobot":
        from robopolicy.data.lerobot import export_lerobot

        path = export_lerobot(src, dst, fps=fps, pix_fmt=pix_fmt, progress=progress)
        dropped = []
    else:
        path, dropped = export_robomimic(src, dst, progress=progress)
    with EpisodeStore.open(src) as store:
        return {"path": str(path), "format": fmt, "episodes": store.n_episodes,
                "steps": store.n_steps, "dropped": dropped}


def _env_args(store: EpisodeStore) -> dict:
    """robomimic's env_args: the ones a robomimic source carried, else what the store knows."""
    carried = (store.root.attrs.get(ROBOMIMIC_ATTR) or {}).get("env_args")
    if carried:
        return carried
    kwargs = {k: v for k, v in (("robots", store.info.get("robot")),
                                ("control_freq", store.fps)) if v is not None}
    return {"env_name": store.info.get("task") or "", "type": 1, "env_kwargs": kwargs}


def _demo_names(store: EpisodeStore) -> list[str]:
    """demo_<N> per episode: the numbers a robomimic source had, else 0, 1, ..."""
    if "demo" in store.meta_keys:
        numbers = store.meta("demo").tolist()
        if len(set(numbers)) == len(numbers) and min(numbers) >= 0:
            return [f"demo_{n}" for n in numbers]
    return [f"demo_{i}" for i in range(store.n_episodes)]


def export_robomimic(src: str | os.PathLike, dst: str | os.PathLike,
                     progress: bool = True) -> tuple[Path, list[str]]:
    """Write the store ``src`` as a robomimic-layout HDF5 file ``dst``.

    ``data/demo_N/actions`` (the action key), ``obs/<key>`` (every obs key, images as raw
    uint8), ``rewards`` / ``dones`` / ``states`` from the keys reward / done / state (rewards 0
    and dones 1 at the last step when the store has none, as robomimic requires both),
    ``mask/<name>`` from boolean ``mask_<name>`` metadata, other metadata as demo attributes,
    and ``env_args`` on ``data``. :func:`~robopolicy.data.convert.convert_robomimic` turns the
    file back into the same store. Returns the path and the keys of role "other" that
    robomimic has no place for (not written).
    """
    import h5py

    src, dst = Path(src), Path(dst)
    with EpisodeStore.open(src) as store, _fresh_output(dst) as tmp:
        actions = store.keys_with_role("action")
        if len(actions) != 1:
            raise StoreError(f"{src}: robomimic needs exactly one action key, the store has "
                             f"{actions or 'none'}")
        obs = store.keys_with_role("obs")
        other = store.keys_with_role("other")
        extras = {k: ROBOMIMIC_DATASETS[k] for k in other if k in ROBOMIMIC_DATASETS}
        dropped = [k for k in other if k not in extras]
        masks = {m: store.meta(m) for m in store.meta_keys
                 if m.startswith("mask_") and store.meta(m).dtype == bool}
        names = _demo_names(store)
        with h5py.File(tmp, "w") as f:
            data = f.create_group("data")
            data.attrs["env_args"] = json.dumps(_env_args(store))
            data.attrs["total"] = store.n_steps
            for i in tqdm(range(store.n_episodes), desc=f"export {src.name}", unit="demo",
                          disable=not progress):
                _write_demo(store, i, data.create_group(names[i]), actions[0], obs, extras,
                            masks)
            for mask, flags in masks.items():
                members = [n.encode() for n, flag in zip(names, flags, strict=True) if flag]
                f.create_dataset(f"mask/{mask.removeprefix('mask_')}",
                                 data=np.array(members, dtype="S"))
    return dst, dropped


def _write_demo(store: EpisodeStore, i: int, demo, action_key: str, obs: list[str],
                extras: dict[str, str], masks: dict) -> None:
    """One episode as a robomimic demo group (``extras``: store key -> per-demo dataset)."""
    episode = store.get_episode(i)
    n = len(episode[action_key])
    demo.attrs["num_samples"] = n
    demo.create_dataset("actions", data=episode[action_key])
    for key, name in extras.items():
        demo.create_dataset(name, data=episode[key])
    if "rewards" not in demo:
        demo.create_dataset("rewards", data=np.zeros(n))
    if "dones" not in demo:
        demo.create_dataset("dones", data=(np.arange(n) == n - 1).astype(np.int64))
    for key in obs:
        # images stay raw uint8 (robomimic's own layout), chunked per frame, gzip'd
        image = is_image(episode[key].shape, episode[key].dtype)
        demo.create_dataset(f"obs/{key}", data=episode[key],
                            **({"chunks": (1, *episode[key].shape[1:]), "compression": "gzip"}
                               if image else {}))
    for name, value in store.episode_meta(i).items():
        if name != "demo" and name not in masks:
            demo.attrs[name] = value
