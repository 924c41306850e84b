"""A static report of an episode store for headless machines (``robopolicy data report``).

    contact_sheet.png       one row per episode: first and last frame of every camera
    lengths.png             histogram of episode lengths
    <key>.png               every low-dim obs / action key: each dimension over the steps of an
                            episode, all episodes overlaid
    index.html              the above on one page, with a summary table
"""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np

from robopolicy.data.store import EpisodeStore

TILE_MIN = 96  # small camera frames are enlarged (nearest neighbour) to at least this height
GAP = 4  # pixels of white between tiles
MAX_DIMS = 12  # per-key plots show at most this many dimensions
MAX_EPISODES = 64  # contact sheet rows and overlaid trajectories


def _tile(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """A (H, W, C) frame enlarged by an integer factor, RGB, top-left in a white tile."""
    rgb = np.repeat(frame, 3, axis=-1) if frame.shape[-1] == 1 else frame[..., :3]
    scale = max(1, TILE_MIN // rgb.shape[0])
    rgb = rgb.repeat(scale, axis=0).repeat(scale, axis=1)
    tile = np.full((height, width, 3), 255, np.uint8)
    tile[: rgb.shape[0], : rgb.shape[1]] = rgb
    return tile


def tile_shape(store: EpisodeStore, cameras: list[str]) -> tuple[int, int]:
    """(height, width) of one contact-sheet tile: the largest enlarged camera frame."""
    sizes = []
    for key in cameras:
        h, w = store.array(key).shape[1:3]
        scale = max(1, TILE_MIN // h)
        sizes.append((h * scale, w * scale))
    return max(s[0] for s in sizes), max(s[1] for s in sizes)


def contact_sheet(store: EpisodeStore, cameras: list[str], episodes: range) -> np.ndarray:
    """(rows, cols) grid of tiles: a row per episode, (first, last) frame per camera."""
    th, tw = tile_shape(store, cameras)
    cols = 2 * len(cameras)
    sheet = np.full((GAP + len(episodes) * (th + GAP), GAP + cols * (tw + GAP), 3), 255,
                    np.uint8)
    for r, i in enumerate(episodes):
        s = store.episode_slice(i)
        for c, key in enumerate(cameras):
            arr = store.array(key)
            for j, step in enumerate((s.start, s.stop - 1)):
                y, x = GAP + r * (th + GAP), GAP + (2 * c + j) * (tw + GAP)
                sheet[y:y + th, x:x + tw] = _tile(arr[step], th, tw)
    return sheet


def _plot_key(store: EpisodeStore, key: str, episodes: range, out: Path) -> None:
    """Each dimension of ``key`` against the step within the episode, episodes overlaid."""
    import matplotlib.pyplot as plt

    values = store.load(key)
    values = values.reshape(len(values), -1).astype(np.float64)[:, :MAX_DIMS]  # (N, D)
    dims = values.shape[1]
    cols = min(dims, 4)
    rows = -(-dims // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.2 * rows), squeeze=False)
    colours = plt.cm.viridis(np.linspace(0, 1, max(len(episodes), 2)))
    for n, i in enumerate(episodes):
        s = store.episode_slice(i)
        for d in range(dims):
            axes.flat[d].plot(values[s, d], color=colours[n], lw=1, alpha=0.8)
    for d, ax in enumerate(axes.flat):
        if d >= dims:
            ax.axis("off")
            continue
        ax.set_title(f"{key}[{d}]", fontsize=9)
        ax.set_xlabel("step in episode", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"{key} ({store.roles[key]}), {len(episodes)} episodes", fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _plot_lengths(store: EpisodeStore, out: Path) -> None:
    import matplotlib.pyplot as plt

    lengths = store.episode_lengths
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(lengths, bins=min(30, max(1, len(np.unique(lengths)))), color="tab:blue")
    ax.set_xlabel("episode length (steps)")
    ax.set_ylabel("episodes")
    ax.set_title(f"{store.n_episodes} episodes, {store.n_steps} steps")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def _html(store: EpisodeStore, images: list[str]) -> str:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>"
                   for k, v in (("path", str(store.path)), ("episodes", str(store.n_episodes)),
                                ("steps", str(store.n_steps)), ("fps", str(store.fps)),
                                ("robot", str(store.info.get("robot"))),
                                ("task", str(store.info.get("task"))),
                                ("keys", ", ".join(f"{k} ({r})" for k, r in
                                                   store.roles.items()))))
    figures = "".join(f'<h2>{html.escape(name)}</h2><img src="{html.escape(name)}">'
                      for name in images)
    name = html.escape(store.path.name)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{name}</title><style>"
            "body{font-family:sans-serif;margin:2em}td{padding:2px 8px}img{max-width:100%}"
            f"</style></head><body><h1>{name}</h1><table>{rows}</table>{figures}</body></html>\n")


def report(path: str | os.PathLike, out: str | os.PathLike | None = None) -> dict:
    """Write the report of the store at ``path`` into the directory ``out`` (default:
    ``<path>-report`` beside it). Returns the files written and the contact-sheet layout."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    from PIL import Image

    path = Path(path)
    out = Path(out) if out else path.parent / f"{path.name.removesuffix('.zarr')}-report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with EpisodeStore.open(path) as store:
        episodes = range(min(store.n_episodes, MAX_EPISODES))
        cameras = store.image_keys
        layout = None
        if cameras and store.n_episodes:
            Image.fromarray(contact_sheet(store, cameras, episodes)).save(
                out / "contact_sheet.png")
            written.append("contact_sheet.png")
            layout = {"rows": len(episodes), "cols": 2 * len(cameras),
                      "tile": list(tile_shape(store, cameras)), "gap": GAP}
        if store.n_episodes:
            _plot_lengths(store, out / "lengths.png")
            written.append("lengths.png")
        plotted = [k for k in [*store.keys_with_role("action"), *store.keys_with_role("obs")]
                   if k not in cameras and np.dtype(store.array(k).dtype).kind in "biuf"]
        for key in plotted if store.n_episodes else []:
            _plot_key(store, key, episodes, out / f"{key}.png")
            written.append(f"{key}.png")
        (out / "index.html").write_text(_html(store, written))
    return {"out": str(out), "files": [*written, "index.html"], "contact_sheet": layout}
