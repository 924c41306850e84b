"""LeRobot v3 and robomimic in and out: the LeRobot fixtures were written by LeRobot's own
dataset writer (tests/fixtures/lerobot/make_fixtures.py); every value read back is compared
with what went in (tests/fixtures/lerobot/lerobot_content.py). Videos are lossy: decoded frames
are held to a PSNR floor, everything else must be equal."""

import json
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest

from robopolicy.cli import main
from robopolicy.data.convert import convert
from robopolicy.data.export import export
from robopolicy.data.store import EpisodeStore
from robopolicy.data.video import VideoWriter, psnr

FIXTURES = Path(__file__).parents[1] / "fixtures" / "lerobot"
sys.path.insert(0, str(FIXTURES))
from lerobot_content import DATASETS, FPS, IMAGE_DATASETS, episode, task  # noqa: E402

# LeRobot's recorder writes AV1 at crf 30; on these 32x32 and 64x48 frames it keeps >= 33 dB.
FIXTURE_PSNR_DB = 30.0
# Our exporter writes H.264 at crf 18. Measured store -> LeRobot -> store: 4:2:0 38.8-40.5 dB
# (32.7 dB for the 24x32 PNG camera, whose colour 4:2:0 halves), 4:4:4 37.0-39.2 dB.
EXPORT_PSNR_DB = {"yuv420p": 32.0, "yuv444p": 37.0}
CAMERA_KEYS = {"one_cam": ["front"], "two_cam": ["top", "wrist"], "png_cam": ["front"]}


@pytest.fixture(scope="module")
def lerobot_stores(tmp_path_factory):
    """Every fixture converted, the first through the CLI."""
    tmp = tmp_path_factory.mktemp("lerobot")
    assert main(["data", "convert", str(FIXTURES / "one_cam"), str(tmp / "one_cam.zarr")]) == 0
    for name in DATASETS:
        if name != "one_cam":
            convert(FIXTURES / name, tmp / f"{name}.zarr", progress=False)
    return {name: tmp / f"{name}.zarr" for name in DATASETS}


def assert_stores_equal(a: EpisodeStore, b: EpisodeStore, min_psnr: float | None = None):
    """Same episodes, keys, roles, dtypes and metadata; data equal (images: within min_psnr
    when given, else equal)."""
    assert a.episode_ends.tolist() == b.episode_ends.tolist()
    assert a.roles == b.roles
    assert sorted(a.meta_keys) == sorted(b.meta_keys)
    for name in a.meta_keys:
        assert a.meta(name).tolist() == b.meta(name).tolist(), name
    for key in a.keys:
        x, y = a.load(key), b.load(key)
        assert (x.dtype, x.shape) == (y.dtype, y.shape), key
        if min_psnr is not None and x.ndim == 4:
            assert psnr(x, y) >= min_psnr, (key, psnr(x, y))
        else:
            np.testing.assert_array_equal(x, y, err_msg=key)


@pytest.mark.parametrize("name", list(DATASETS))
def test_lerobot_fixture_converts_every_episode_and_feature(lerobot_stores, name):
    lengths, cameras, _, _ = DATASETS[name]
    with EpisodeStore.open(lerobot_stores[name]) as store:
        assert store.episode_lengths.tolist() == list(lengths)
        assert (store.fps, store.info["robot"], store.info["source"]) == (
            FPS, "so100", f"lerobot:{name}")
        assert store.roles == {"state": "obs", "action": "action", "reward": "other",
                               "done": "other", "timestamp": "other",
                               **{k: "obs" for k in CAMERA_KEYS[name]}}
        assert store.meta("task").tolist() == [task(i) for i in range(len(lengths))]
        assert store.meta("lerobot_episode").tolist() == list(range(len(lengths)))
        assert store.root.attrs["lerobot"]["keys"]["top" if name == "two_cam" else "front"] \
            .startswith("observation.images.")
        for i in range(len(lengths)):
            got, want = store.get_episode(i), episode(name, i)
            np.testing.assert_array_equal(got["state"], want["observation.state"])
            np.testing.assert_array_equal(got["action"], want["action"])
            np.testing.assert_array_equal(got["reward"], want["next.reward"][:, 0])
            np.testing.assert_array_equal(got["done"], want["next.done"][:, 0])
            np.testing.assert_array_equal(got["timestamp"],
                                          (np.arange(lengths[i]) / FPS).astype(np.float32))
            for key, feature in zip(CAMERA_KEYS[name], cameras, strict=True):
                assert got[key].shape == (lengths[i], *cameras[feature], 3)
                if name in IMAGE_DATASETS:  # PNG frames in the parquet: lossless
                    np.testing.assert_array_equal(got[key], want[feature])
                else:
                    assert psnr(got[key], want[feature]) >= FIXTURE_PSNR_DB, (key, i)


@pytest.mark.parametrize(("name", "pix_fmt"), [(name, "yuv420p") for name in DATASETS]
                         + [("png_cam", "yuv444p")])
def test_lerobot_export_round_trip(lerobot_stores, tmp_path, name, pix_fmt):
    out = tmp_path / "exported"
    assert main(["data", "export", str(lerobot_stores[name]), str(out),
                 "--format", "lerobot", "--pix-fmt", pix_fmt]) == 0
    source_info = json.loads((FIXTURES / name / "meta" / "info.json").read_text())
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert (info["fps"], info["total_episodes"], info["total_frames"], info["total_tasks"]) == (
        FPS, 3, sum(DATASETS[name][0]), 2)
    assert set(info["features"]) == set(source_info["features"])  # names restored
    for feature, entry in source_info["features"].items():
        dtype = "video" if entry["dtype"] == "image" else entry["dtype"]  # cameras go to MP4
        assert (info["features"][feature]["dtype"], info["features"][feature]["shape"]) == (
            dtype, entry["shape"]), feature
    stats = json.loads((out / "meta" / "stats.json").read_text())
    for feature in CAMERA_KEYS[name]:
        camera = f"observation.images.{feature}"
        assert np.asarray(stats[camera]["mean"]).shape == (3, 1, 1)
        assert 0 <= np.min(stats[camera]["min"]) <= np.max(stats[camera]["max"]) <= 1
    np.testing.assert_allclose(stats["action"]["max"], np.max(
        np.concatenate([episode(name, i)["action"] for i in range(3)]), 0), rtol=1e-6)
    tasks = pq.read_table(out / "meta" / "tasks.parquet").to_pydict()
    assert tasks["task"] == [task(0), task(1)] and tasks["task_index"] == [0, 1]

    back = tmp_path / "back.zarr"
    convert(out, back, progress=False)
    with EpisodeStore.open(lerobot_stores[name]) as a, EpisodeStore.open(back) as b:
        assert_stores_equal(a, b, min_psnr=EXPORT_PSNR_DB[pix_fmt])
        assert b.root.attrs["lerobot"]["keys"] == a.root.attrs["lerobot"]["keys"]


def robomimic_like_store(path: Path) -> Path:
    """A store shaped like one converted from robomimic: images, low-dim obs, reward, done,
    state, demo numbers, masks and env_args."""
    rng = np.random.default_rng(0)
    env_args = {"env_name": "Lift", "type": 1,
                "env_kwargs": {"robots": ["Panda"], "control_freq": 20}}
    roles = {"agentview_image": "obs", "eef_pos": "obs", "action": "action",
             "reward": "other", "done": "other", "state": "other"}
    with EpisodeStore.create(path, fps=20, roles=roles, robot="Panda", task="Lift",
                             source="robomimic:lift.hdf5") as store:
        store.root.attrs["robomimic"] = {"env_args": env_args}
        for n, length in ((3, 6), (7, 4), (12, 5)):
            store.add_episode({
                "agentview_image": rng.integers(0, 256, (length, 16, 16, 3), dtype=np.uint8),
                "eef_pos": rng.normal(size=(length, 3)).astype(np.float32),
                "action": rng.uniform(-1, 1, (length, 7)),
                "reward": rng.uniform(size=length),
                "done": (np.arange(length) == length - 1).astype(np.int64),
                "state": rng.normal(size=(length, 9)),
            }, {"demo": n, "mask_train": n != 12, "mask_valid": n == 12})
    return path


def test_robomimic_export_converts_back_to_an_identical_store(tmp_path):
    src = robomimic_like_store(tmp_path / "src.zarr")
    hdf5 = tmp_path / "lift.hdf5"
    assert main(["data", "export", str(src), str(hdf5), "--format", "robomimic"]) == 0
    with h5py.File(hdf5, "r") as f:
        assert sorted(f["data"]) == ["demo_12", "demo_3", "demo_7"]
        demo = f["data/demo_7"]
        assert sorted(demo) == ["actions", "dones", "obs", "rewards", "states"]
        assert sorted(demo["obs"]) == ["agentview_image", "eef_pos"]
        assert demo["obs/agentview_image"].dtype == np.uint8
        assert [m.decode() for m in f["mask/valid"][()]] == ["demo_12"]
        assert json.loads(f["data"].attrs["env_args"])["env_name"] == "Lift"
    back = convert(hdf5, tmp_path / "back.zarr", progress=False)
    with EpisodeStore.open(src) as a, EpisodeStore.open(back) as b:
        assert_stores_equal(a, b)  # images too: robomimic keeps raw uint8
        assert {k: b.info[k] for k in ("fps", "robot", "task")} == {
            k: a.info[k] for k in ("fps", "robot", "task")}
        assert b.root.attrs["robomimic"] == a.root.attrs["robomimic"]


def test_robomimic_export_of_a_lerobot_store(lerobot_stores, tmp_path):
    """A LeRobot store has no place in robomimic for its timestamp; the rest comes back."""
    summary = export(lerobot_stores["two_cam"], tmp_path / "two.hdf5", "robomimic",
                     progress=False)
    assert summary["dropped"] == ["timestamp"]
    back = convert(tmp_path / "two.hdf5", tmp_path / "back.zarr", progress=False)
    with EpisodeStore.open(lerobot_stores["two_cam"]) as a, EpisodeStore.open(back) as b:
        assert a.episode_ends.tolist() == b.episode_ends.tolist()
        for key in ("state", "action", "reward", "done", "top", "wrist"):
            np.testing.assert_array_equal(a.load(key), b.load(key), err_msg=key)


# --------------------------------------------------------------------------- bad input
def broken_copy(tmp_path: Path, name: str = "one_cam") -> Path:
    root = tmp_path / f"broken_{name}"
    shutil.copytree(FIXTURES / name, root)
    return root


def edit_info(root: Path, edit) -> None:
    path = root / "meta" / "info.json"
    info = json.loads(path.read_text())
    edit(info)
    path.write_text(json.dumps(info))


def shorter_video(root: Path) -> None:
    """Re-encode the camera of one_cam with its last frame missing."""
    frames = np.concatenate([episode("one_cam", i)["observation.images.front"]
                             for i in range(3)])[:-1]
    path = root / "videos/observation.images.front/chunk-000/file-000.mp4"
    writer = VideoWriter(path, FPS, *frames.shape[1:3])
    writer.write(frames)
    writer.close()


BAD_INPUTS = {
    "missing_info": (lambda root: (root / "meta" / "info.json").unlink(),
                     r"missing meta/info\.json"),
    "old_version": (lambda root: edit_info(root, lambda i: i.update(codebase_version="v2.1")),
                    r"codebase_version 'v2\.1' is not supported"),
    "feature_without_data": (lambda root: edit_info(root, lambda i: i["features"].update(
        {"observation.velocity": {"dtype": "float32", "shape": [3], "names": None}})),
        r"feature 'observation\.velocity' is in meta/info\.json but has no data"),
    "video_too_short": (shorter_video,
                        r"episode 2 has 9 video frames .* but 10 rows in the parquet data"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_lerobot_input_is_one_line(tmp_path, capsys, case):
    breaks, message = BAD_INPUTS[case]
    root = broken_copy(tmp_path)
    breaks(root)
    dst = tmp_path / "out.zarr"
    assert main(["data", "convert", str(root), str(dst)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("robopolicy data: error: ")
    assert __import__("re").search(message, err), err
    assert not dst.exists() and not list(tmp_path.glob(".out.zarr*"))  # nothing half-written


def test_export_needs_one_action_key_for_robomimic(tmp_path, capsys):
    path = tmp_path / "s.zarr"
    with EpisodeStore.create(path, fps=10, roles={"a": "action", "b": "action"}) as store:
        store.add_episode({"a": np.zeros((2, 1)), "b": np.zeros((2, 1))})
    assert main(["data", "export", str(path), str(tmp_path / "s.hdf5"),
                 "--format", "robomimic"]) == 2
    assert "robomimic needs exactly one action key" in capsys.readouterr().err
    assert not (tmp_path / "s.hdf5").exists()


# --------------------------------------------------------------------------- training
def test_bc_trains_on_a_converted_lerobot_store(lerobot_stores, tmp_path):
    """`robopolicy train` on the two-camera store, images included, unchanged."""
    out = tmp_path / "run"
    assert main(["train", f"data={lerobot_stores['two_cam']}", f"out={out}", "family=flow",
                 "steps=4", "batch_size=8", "val_every=2", "warmup_steps=1",
                 "tensorboard=false", "model.horizon=4", "model.n_obs_steps=1",
                 "model.n_action_steps=2", "model.backbone=mlp",
                 "model.backbone_kwargs={hidden_dim: 32}",
                 "model.encoder_kwargs={image_feature_dim: 8, resnet_widths: [4, 4, 4, 4]}"]) == 0
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert sorted(config["image_keys"]) == ["top", "wrist"]
    assert config["shapes"]["top"] == [48, 64, 3] and config["shapes"]["action"] == [2]
