"""`data view --save` read back with Rerun's own RRD reader, and `data report`'s images opened
and checked pixel by pixel."""

import collections
from pathlib import Path

import numpy as np
import pytest
import rerun as rr
from PIL import Image

from robopolicy.cli import main
from robopolicy.data.report import GAP
from robopolicy.data.store import EpisodeStore

LENGTHS = (5, 8, 6, 7)


def frame(i: int, t: int, hw: tuple[int, int]) -> np.ndarray:
    """A frame whose colour encodes (episode, step), so tiles can be told apart."""
    img = np.zeros((*hw, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 40 + 50 * i, 10 + 20 * t, 200
    img[: hw[0] // 2, : hw[1] // 2] = 255 - img[: hw[0] // 2, : hw[1] // 2]  # not flat
    return img


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Four episodes: two cameras of different sizes, a 3-D obs, a 2-D action, success flags."""
    path = tmp_path_factory.mktemp("view") / "demo.zarr"
    rng = np.random.default_rng(0)
    with EpisodeStore.create(path, fps=10, roles={"reward": "other"}) as s:
        for i, n in enumerate(LENGTHS):
            s.add_episode({
                "front": np.stack([frame(i, t, (24, 32)) for t in range(n)]),
                "wrist": np.stack([frame(i, t, (16, 16)) for t in range(n)]),
                "eef_pos": rng.normal(size=(n, 3)).astype(np.float32),
                "action": np.cumsum(rng.normal(size=(n, 2)), 0),
                "reward": np.linspace(0, 1, n),
            }, {"success": i % 2 == 0})
    return path


def test_view_save_writes_rrd_with_entities_and_frame_counts(store, tmp_path, capsys):
    rrd = tmp_path / "demo.rrd"
    assert main(["data", "view", str(store), "--episodes", "1:3", "--save", str(rrd)]) == 0
    assert "episodes 1:3" in capsys.readouterr().out
    rows, timelines = collections.Counter(), {}
    for chunk in rr.chunk.RrdReader(rrd).stream():
        rows[chunk.entity_path] += chunk.num_rows
        timelines[chunk.entity_path] = set(chunk.timeline_names)
    steps = LENGTHS[1] + LENGTHS[2]
    for entity in ("/cameras/front", "/cameras/wrist", "/obs/eef_pos", "/action/action",
                   "/other/reward", "/episodes/index"):
        assert rows[entity] == steps, entity
        assert {"step", "time"} <= timelines[entity], entity
    assert rows["/episodes/log"] == 2 and rows["/episodes/success"] == 2
    assert not any(e.startswith("/cameras/") and e not in ("/cameras/front", "/cameras/wrist")
                   for e in rows)


def test_view_rejects_a_bad_episode_range(store, tmp_path, capsys):
    assert main(["data", "view", str(store), "--episodes", "9:12", "--save",
                 str(tmp_path / "x.rrd")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "robopolicy data: error: --episodes '9:12' selects no episode of the 4"


def test_report_writes_contact_sheet_plots_and_html(store, tmp_path):
    out = tmp_path / "report"
    assert main(["data", "report", str(store), "--out", str(out)]) == 0
    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    # tiles: 4 rows (episodes) x 4 columns (first/last frame of 2 cameras); the 24x32 camera
    # is enlarged 4x to 96x128, the 16x16 one 6x to 96x96 inside a 96x128 tile
    th, tw = 96, 128
    assert sheet.shape == (GAP + 4 * (th + GAP), GAP + 4 * (tw + GAP), 3)
    with EpisodeStore.open(store) as s:
        for r in range(4):
            sl = s.episode_slice(r)
            for c, (key, step) in enumerate([("front", sl.start), ("front", sl.stop - 1),
                                             ("wrist", sl.start), ("wrist", sl.stop - 1)]):
                y, x = GAP + r * (th + GAP), GAP + c * (tw + GAP)
                want = s.array(key)[step]
                scale = 96 // want.shape[0]
                got = sheet[y:y + want.shape[0] * scale:scale, x:x + want.shape[1] * scale:scale]
                np.testing.assert_array_equal(got, want, err_msg=f"tile {r},{c}")
    assert (sheet[:GAP] == 255).all() and (sheet[:, :GAP] == 255).all()  # white gaps

    for name, min_size in (("lengths.png", (200, 300)), ("action.png", (150, 250)),
                           ("eef_pos.png", (150, 500))):
        img = np.asarray(Image.open(out / name).convert("RGB"))
        assert img.shape[0] >= min_size[0] and img.shape[1] >= min_size[1], name
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20, f"{name} looks blank"
        assert (img < 128).any(), f"{name} has no dark pixels (axes, text, lines)"
    page = (out / "index.html").read_text()
    for name in ("contact_sheet.png", "lengths.png", "action.png", "eef_pos.png"):
        assert f'src="{name}"' in page
    assert "reward.png" not in page  # only obs and action keys get trajectory plots


def test_view_without_a_display_says_to_save(store, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["data", "view", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--save FILE.rrd" in err
